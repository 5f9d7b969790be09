//! A key range moves to another team and back while writers set, append
//! to and clear its keys, with one destination server killed with SIGKILL
//! while it copies, and on the way back one source server: after each move both servers of the new team
//! hold exactly what the acknowledged commits wrote, the old team's
//! servers refuse the range, and clients read it where it now lives. A
//! move whose driver dies mid-copy (a source server killed then too) is
//! taken over by asking again, and one cancelled from another client
//! while its driver runs leaves the range where it was, its driver
//! stopping on the changed map. With the commit path recruited, a move
//! survives the loss of the proxy's worker mid-copy, and the moved range
//! stays where it moved through a later recovery: the new proxies route
//! by the shard map the recovery carried over, which the controller's
//! checkpoints keep current; and a move whose driver dies is finished by
//! the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::moves::{MoveError, MoveOutcome, ServerProgress};
use client::Client;
use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;
use proto::rpc::{ErrorCode, GetRangeRequest, Message, RoleKind};
use proto::system_keys::METADATA_TEAM;
use proto::transport::{RpcClient, RpcError};
use proto::{Mutation, StorageTeamId, Version};
use testkit::{ClusterSpec, LocalCluster};

use crate::recovery::{newer_generation, worker_hosting};
use crate::storage_rebuild::{address, server_status};

const DEADLINE: Duration = Duration::from_secs(120);
/// The moving range: the part of team 1's shard from "c".
const BEGIN: &[u8] = b"c";
const END: &[u8] = b"h";
/// One key every writer's commit appends its number to.
const LOG_KEY: &str = "d-log";
const PRELOADED: usize = 12_000;

fn set(key: String, value: String) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from(value),
    }
}

/// Team 1 (servers 100, 101) holds the keys before "h", team 2 (200,
/// 201) those before "p". Copies read at most 400 kB a second, so a
/// copy of the preloaded keys takes a few pages and pauses.
fn spec() -> ClusterSpec {
    let mut storage_args = crate::small_window_storage_args();
    storage_args.extend(["--move-rate", "400000"].map(String::from));
    ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        storage_args,
        ..ClusterSpec::default()
    }
}

/// `spec` with the commit path recruited on five workers: three TLogs at
/// replication 2 and one proxy, so that losing any one worker recovers.
fn recruited_spec() -> ClusterSpec {
    ClusterSpec {
        coordinators: 1,
        workers: 5,
        tlogs: 3,
        replication: 2,
        proxies: 1,
        ..spec()
    }
}

/// What the writers did: acknowledged writes in order, and the keys an
/// unacknowledged commit may or may not have changed.
#[derive(Clone, Default)]
struct Model {
    values: BTreeMap<String, String>,
    appended: Vec<u64>,
    uncertain: BTreeSet<String>,
}

/// One writer, numbering its commits from `from`: each sets a new key,
/// appends its number to `LOG_KEY`, and every fifth clears a preloaded
/// key, all in the moving range. Ends with the next number.
fn start_writer(
    client: Arc<Client>,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    from: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = from;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("e{n:05}");
            let mut commit = vec![
                set(key.clone(), format!("during-{n}")),
                Mutation::AppendIfFits {
                    key: Bytes::from_static(LOG_KEY.as_bytes()),
                    suffix: Bytes::from(format!("{n};")),
                },
            ];
            let cleared = (n % 5 == 0).then(|| format!("c{:05}", (n * 37) % PRELOADED as u64));
            if let Some(cleared) = &cleared {
                commit.push(Mutation::ClearRange {
                    begin: Bytes::from(cleared.clone()),
                    end: proto::key_after(cleared.as_bytes()),
                });
            }
            let acknowledged = client.commit(commit).await.is_ok();
            let mut model = model.lock().unwrap();
            if acknowledged {
                model.values.insert(key, format!("during-{n}"));
                model.appended.push(n);
                if let Some(cleared) = cleared {
                    model.values.remove(&cleared);
                }
            } else {
                model.uncertain.insert(key);
                model.uncertain.insert(LOG_KEY.to_owned());
                model.uncertain.extend(cleared);
            }
            n += 1;
        }
        n
    })
}

/// A writer that pauses for checks: paused, the model it returns is what
/// was committed.
struct Writing {
    client: Arc<Client>,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    running: Option<tokio::task::JoinHandle<u64>>,
    next: u64,
}

impl Writing {
    fn start(client: &Arc<Client>, model: &Arc<Mutex<Model>>) -> Writing {
        let mut writing = Writing {
            client: client.clone(),
            model: model.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            running: None,
            next: 0,
        };
        writing.resume();
        writing
    }

    fn resume(&mut self) {
        self.stop.store(false, Ordering::Relaxed);
        let (client, model, stop) = (self.client.clone(), self.model.clone(), self.stop.clone());
        self.running = Some(start_writer(client, model, stop, self.next));
    }

    async fn pause(&mut self) -> Result<Model> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(running) = self.running.take() {
            self.next = running.await?;
        }
        Ok(self.model.lock().unwrap().clone())
    }
}

/// A cluster as `spec` says, with the preloaded keys, `c00000` on, in the
/// moving range, and a writer at work.
async fn preloaded_under_writes(
    dir: &Path,
    spec: &ClusterSpec,
) -> Result<(LocalCluster, Arc<Client>, Writing)> {
    let local = LocalCluster::start(crate::exe(), dir, spec).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let model = Arc::new(Mutex::new(Model::default()));
    for first in (0..PRELOADED).step_by(500) {
        let writes: Vec<(String, String)> = (first..first + 500)
            .map(|n| (format!("c{n:05}"), format!("preloaded-{n}")))
            .collect();
        let mutations = writes.iter().map(|(k, v)| set(k.clone(), v.clone()));
        client.commit(mutations.collect()).await?;
        model.lock().unwrap().values.extend(writes);
    }
    let writing = Writing::start(&client, &model);
    Ok((local, client, writing))
}

/// Waits until `server` says it is copying a range, while `moving` runs.
async fn wait_until_copying<T>(
    cluster: &ClusterFile,
    server: u64,
    moving: &tokio::task::JoinHandle<T>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = server_status(cluster, server).await?;
        if let Some(copying) = status.adding.iter().find(|a| !a.ready) {
            // A copy under way got a page, or began, moments ago.
            ensure!(copying.idle_ms < 30_000, "{copying:?}");
            return Ok(());
        }
        ensure!(
            !moving.is_finished() && tokio::time::Instant::now() < deadline,
            "server {server} was never seen copying: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server copies once the start is durable on the TLogs, which may be
/// before it is acknowledged and read versions include it: a commit
/// sequenced now comes after it, and reads after its answer see the start.
async fn after_the_start(client: &Client) -> Result<()> {
    client
        .commit(vec![set("z-after-start".to_owned(), String::new())])
        .await?;
    Ok(())
}

/// Starts a move of the range to `to` and kills its driver once `server`
/// copies, leaving the range moving with no one to finish it.
async fn orphan_a_move(
    client: &Arc<Client>,
    cluster: &ClusterFile,
    to: u64,
    server: u64,
) -> Result<()> {
    let moving = spawn_move(client, to);
    wait_until_copying(cluster, server, &moving).await?;
    moving.abort();
    after_the_start(client).await
}

/// A move of the range to `to`, driven from a task of its own.
fn spawn_move(
    client: &Arc<Client>,
    to: u64,
) -> tokio::task::JoinHandle<Result<MoveOutcome, MoveError>> {
    let client = client.clone();
    tokio::spawn(async move {
        let range = (Bytes::from_static(BEGIN), Bytes::from_static(END));
        client
            .move_range(range.0, range.1, StorageTeamId(to), DEADLINE, |_| {})
            .await
    })
}

/// `[BEGIN, END)` at `version` read straight from `server`, page by page;
/// the error code when the server refuses it.
async fn held(
    cluster: &ClusterFile,
    server: u64,
    version: Version,
) -> Result<Result<Vec<(Bytes, Bytes)>, ErrorCode>> {
    let range = (Bytes::from_static(BEGIN), Bytes::from_static(END));
    held_in(cluster, server, range, version).await
}

/// `[begin, end)` at `version` read straight from `server`, page by page;
/// the error code when the server refuses it.
pub(crate) async fn held_in(
    cluster: &ClusterFile,
    server: u64,
    (begin, end): (Bytes, Bytes),
    version: Version,
) -> Result<Result<Vec<(Bytes, Bytes)>, ErrorCode>> {
    let addr = address(cluster, server)?;
    let client = RpcClient::connect(addr, cluster.client_config()?).await?;
    let mut pairs: Vec<(Bytes, Bytes)> = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request = GetRangeRequest {
            begin: pairs
                .last()
                .map_or(begin.clone(), |(k, _)| proto::key_after(k)),
            end: end.clone(),
            limit: 10_000,
            reverse: false,
            version,
            copy: false,
        };
        match client.call(Message::GetRange(request)).await {
            Ok(Message::GetRangeReply(reply)) => {
                pairs.extend(reply.pairs);
                if !reply.more {
                    return Ok(Ok(pairs));
                }
            }
            Ok(other) => bail!("unexpected {}", other.name()),
            Err(RpcError::Remote {
                code: ErrorCode::FutureVersion,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(RpcError::Remote { code, .. }) => return Ok(Err(code)),
            Err(e) => return Err(e).context(format!("reading from {server}")),
        }
    }
}

/// Checks what `pairs` hold against the preloaded keys and the model.
fn check_against_model(pairs: &[(Bytes, Bytes)], model: &Model) -> Result<()> {
    let held: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| {
            let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            (text(k), text(v))
        })
        .collect();
    for (key, value) in &model.values {
        if !model.uncertain.contains(key) {
            ensure!(
                held.get(key) == Some(value),
                "{key}: {:?}, expected {value}",
                held.get(key)
            );
        }
    }
    for key in held.keys() {
        ensure!(
            model.values.contains_key(key) || model.uncertain.contains(key) || key == LOG_KEY,
            "{key} is held but was never written or was cleared"
        );
    }
    let numbers: Vec<u64> = held
        .get(LOG_KEY)
        .map(|value| value.split_terminator(';').map(str::parse).collect())
        .transpose()?
        .unwrap_or_default();
    ensure!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "{LOG_KEY} holds a number twice or out of order: {numbers:?}"
    );
    let missing: Vec<&u64> = model
        .appended
        .iter()
        .filter(|n| numbers.binary_search(n).is_err())
        .collect();
    ensure!(missing.is_empty(), "acknowledged appends lost: {missing:?}");
    Ok(())
}

/// With the writer paused, so that its model is what was committed: both
/// servers of the team the range moved to hold the same pairs, as the
/// model says, and clients read the same through the proxies; the other
/// team's servers refuse the range. The team answers for the range from
/// the version after the flip on.
async fn check_moved(
    cluster: &ClusterFile,
    client: &Client,
    writing: &mut Writing,
    flipped: Version,
    holders: [u64; 2],
    former: [u64; 2],
) -> Result<()> {
    let model = &writing.pause().await?;
    ensure!(model.appended.len() > 1, "the writer made no progress");
    let version = client.read_version().await?.max(flipped.next());
    let mut replicas = Vec::new();
    for server in holders {
        let pairs = match held(cluster, server, version).await? {
            Ok(pairs) => pairs,
            Err(code) => {
                let status = server_status(cluster, server).await?;
                bail!("server {server} refused the range at {version}: {code}; {status:?}");
            }
        };
        check_against_model(&pairs, model).with_context(|| format!("server {server}"))?;
        replicas.push(pairs);
    }
    ensure!(
        replicas[0] == replicas[1],
        "servers {holders:?} hold different pairs"
    );
    for server in former {
        let answer = held(cluster, server, version).await?;
        ensure!(
            answer == Err(ErrorCode::WrongShardServer),
            "server {server}, which gave the range away, answered {:?}",
            answer.map(|p| p.len())
        );
    }
    let (read, more) = client
        .get_range(BEGIN, END, usize::MAX, false, version)
        .await?;
    ensure!(!more && read == replicas[0], "clients read other pairs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_and_back_under_writes_with_a_destination_then_a_source_killed_mid_copy(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut local, client, mut writing) = preloaded_under_writes(dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();

    // To team 2, with server 200 killed once it is copying, and back.
    let moving = spawn_move(&client, 2);
    wait_until_copying(&cluster, 200, &moving).await?;
    kill9_and_restart(&mut local, 200).await?;
    let outcome = moving.await??;
    let flipped = outcome.flipped.context("the range moved")?;
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [200, 201],
        [100, 101],
    )
    .await?;

    writing.resume();

    // Back to team 1, with server 200, the source team 1's servers copy
    // from first, killed once server 100 copies: they copy on from 201,
    // and 200, back, gives the range up at the flip like 201.
    let moving_back = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut heard = Vec::new();
            let outcome = client
                .move_range(
                    Bytes::from_static(BEGIN),
                    Bytes::from_static(END),
                    StorageTeamId(1),
                    DEADLINE,
                    |servers| heard.extend_from_slice(servers),
                )
                .await;
            outcome.map(|outcome| (outcome, heard))
        })
    };
    wait_until_copying(&cluster, 100, &moving_back).await?;
    kill9_and_restart(&mut local, 200).await?;
    let (back, heard) = moving_back.await??;
    check_estimates(&heard, &back.servers)?;
    let flipped = back.flipped.context("the range moved back")?;
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [100, 101],
        [200, 201],
    )
    .await?;
    Ok(local.stop().await?)
}

/// Kills storage server `id` with SIGKILL and starts it again.
async fn kill9_and_restart(local: &mut LocalCluster, id: u64) -> Result<()> {
    let server = local.storage.get_mut(&id).and_then(Option::take);
    server
        .with_context(|| format!("server {id} running"))?
        .kill9()
        .await?;
    let server = local.start_storage(id).await?;
    local.storage.insert(id, Some(server));
    Ok(())
}

/// While they copied, the destination's servers said how much was left,
/// from the sources' byte samples, near what they went on to copy.
fn check_estimates(heard: &[ServerProgress], done: &[ServerProgress]) -> Result<()> {
    for server in done {
        // The stored size the sample estimates.
        let stored =
            |p: &ServerProgress| p.bytes_copied + proto::rpc::STORED_PAIR_OVERHEAD * p.pairs_copied;
        let copied = stored(server);
        // What was left, with what had been copied then: the whole range.
        let estimate = heard
            .iter()
            .filter(|p| p.server == server.server && !p.ready)
            .find_map(|p| Some(p.size_left? + stored(p)))
            .with_context(|| format!("{} never estimated what was left", server.server))?;
        ensure!(
            copied / 2 <= estimate && estimate <= copied * 2,
            "{} estimated the range at {estimate} stored bytes and copied {copied}",
            server.server
        );
        ensure!(
            heard
                .iter()
                .any(|p| p.server == server.server && !p.ready && p.size_per_sec > 0),
            "{} never said how fast it copied",
            server.server
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_driver_died_is_taken_over_and_one_cancelled_stays_put() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut local, client, mut writing) = preloaded_under_writes(dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();

    // The driver dies while server 200 copies, and source server 101 is
    // killed then too: the range is left moving to team 2.
    orphan_a_move(&client, &cluster, 2, 200).await?;
    let source = local.storage.get_mut(&101).and_then(Option::take);
    source.context("server 101 running")?.kill9().await?;
    let range = || (Bytes::from_static(BEGIN), Bytes::from_static(END));
    let elsewhere = client
        .move_range(range().0, range().1, StorageTeamId(1), DEADLINE, |_| {})
        .await;
    ensure!(
        matches!(&elsewhere, Err(MoveError::AlreadyMoving { to, .. }) if to == &[StorageTeamId(2)]),
        "a move elsewhere was not refused while the range moves to team 2: {elsewhere:?}"
    );
    // Asked again, twice at once (an operator and the distributor, say),
    // the move to team 2 is taken over by both drivers: one flips the
    // map, and the other, finding it flipped, ends there rather than
    // starting the move again from team 1, which no longer holds it.
    let (first, second) = (spawn_move(&client, 2), spawn_move(&client, 2));
    let mut flipped = Version(0);
    for driver in [first, second] {
        let outcome = driver.await??;
        flipped = flipped.max(outcome.flipped.context("the range moved")?);
    }
    local
        .storage
        .insert(101, Some(local.start_storage(101).await?));
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [200, 201],
        [100, 101],
    )
    .await?;

    // A move back cancelled from another client while its driver runs:
    // the driver finds the map changed under it and stops, team 2 keeps
    // the range and team 1's servers drop what they copied.
    writing.resume();
    let moving = spawn_move(&client, 1);
    wait_until_copying(&cluster, 100, &moving).await?;
    after_the_start(&client).await?;
    let canceller = Client::new(&cluster)?;
    let cancelled = canceller.cancel_moves(range().0, range().1).await?;
    ensure!(cancelled == 1, "{cancelled} shards were taken back, not 1");
    let driver = moving.await?;
    ensure!(
        matches!(driver, Err(MoveError::Superseded(_))),
        "the driver of the cancelled move ended with {driver:?}"
    );
    let taken_back = client.read_version().await?;
    check_moved(
        &cluster,
        &client,
        &mut writing,
        taken_back,
        [200, 201],
        [100, 101],
    )
    .await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for server in [100, 101] {
        loop {
            let status = server_status(&cluster, server).await?;
            if status.adding.is_empty() {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "server {server} still adds a range after the cancel: {:?}",
                status.adding
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(local.stop().await?)
}

/// Kills the worker hosting the current generation's proxy and waits for
/// the next generation; returns its epoch.
async fn lose_the_proxy(local: &mut LocalCluster) -> Result<u64> {
    let epoch = local.wait_recovered(DEADLINE).await?;
    let i = worker_hosting(local, RoleKind::Proxy, epoch).await?;
    local.workers[i].take().context("live")?.kill9().await?;
    newer_generation(local, epoch).await
}

/// Waits until the controller's status (on the only coordinator) has
/// `line` among its generations' lines.
async fn wait_for_status_line(cluster: &ClusterFile, line: &str) -> Result<()> {
    let address = cluster.coordinators[0].address;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let client = RpcClient::connect(address, cluster.client_config()?).await?;
        let lines = match client.call(Message::Status).await? {
            Message::CoordinatorStatus(status) => {
                status.recovery.map(|r| r.generations).unwrap_or_default()
            }
            other => bail!("a coordinator answered {}", other.name()),
        };
        if lines.iter().any(|l| l == line) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the controller's status never said {line:?}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the writer has `more` acknowledged commits than now.
async fn wait_for_writes(writing: &Writing, more: usize) -> Result<()> {
    let from = writing.model.lock().unwrap().appended.len();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while writing.model.lock().unwrap().appended.len() < from + more {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the writer made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the core state's shard map is checkpointed past the
/// current generation's begin with `[BEGIN, END)` on `team`, and the
/// metadata team is popped up to it on the generation's TLogs.
async fn wait_for_checkpoint(local: &LocalCluster, team: u64) -> Result<()> {
    let coordinators = CoordinatorClient::new(
        &local.cluster.coordinator_addresses(),
        local.cluster.client_config()?,
    )?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (state, _) = coordinators.read_core_state().await?;
        let current = state.current().context("a current generation")?;
        let snapshot = state.shard_map.as_ref().context("a shard map")?;
        let map = snapshot.map()?;
        let on_team = map
            .split(BEGIN, END)
            .iter()
            .all(|(_, _, a)| a.src == [StorageTeamId(team)] && a.dest.is_empty());
        let mut popped = true;
        for addr in &current.tlogs {
            let client = RpcClient::connect(*addr, local.cluster.client_config()?).await?;
            let status = client.status().await?;
            let metadata = status.teams.iter().find(|t| t.team == METADATA_TEAM);
            popped &= metadata.is_none_or(|t| t.popped > snapshot.version);
        }
        if on_team && popped && snapshot.version > current.begin_version {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint with the range on team {team}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_the_loss_of_the_proxy_and_a_recovery_and_an_orphan_is_finished(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut local, client, mut writing) =
        preloaded_under_writes(dir.path(), &recruited_spec()).await?;
    let cluster = local.cluster.clone();

    // The proxy's worker dies while server 200 copies: the mover's
    // commits go on in the next generation, which routes the range to
    // both teams until the flip.
    let moving = spawn_move(&client, 2);
    wait_until_copying(&cluster, 200, &moving).await?;
    let epoch = lose_the_proxy(&mut local).await?;
    let outcome = moving.await??;
    let flipped = outcome.flipped.context("the range moved")?;
    println!("moved in generation {epoch}, flipped at {flipped}");
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [200, 201],
        [100, 101],
    )
    .await?;

    // Checkpointed, then recovered again: the next generation's proxy
    // still sends the range's writes to team 2, and reads find it there.
    writing.resume();
    wait_for_writes(&writing, 5).await?;
    wait_for_checkpoint(&local, 2).await?;
    let epoch = lose_the_proxy(&mut local).await?;
    wait_for_writes(&writing, 20).await?;
    println!("writes go on in generation {epoch}");
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [200, 201],
        [100, 101],
    )
    .await?;

    // A move back whose driver dies mid-copy: the controller sees its
    // start no longer committed again and drives it to the flip.
    writing.resume();
    orphan_a_move(&client, &cluster, 1, 100).await?;
    wait_for_status_line(&cluster, "moving [c, h) from teams [2] to [1]").await?;
    wait_for_checkpoint(&local, 1).await?;
    let flipped = client.read_version().await?;
    check_moved(
        &cluster,
        &client,
        &mut writing,
        flipped,
        [100, 101],
        [200, 201],
    )
    .await?;
    Ok(local.stop().await?)
}
