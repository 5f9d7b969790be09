//! A storage server whose data directory is lost, after its team's log
//! was popped past what it held, rebuilds from its teammate while commits
//! go on: killed while it copies (its teammate frozen meanwhile), then
//! left to finish, it ends up holding exactly what its teammate holds at
//! the same version, including what was overwritten and cleared while it
//! was gone, and its status says while it rebuilds. With the commit path
//! recruited, a server lost before a recovery and back after it copies,
//! reads on in the new generation, and lets the old one retire.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::Client;
use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;
use proto::rpc::RoleKind;
use proto::rpc::{GetRangeRequest, Message, StorageStatusReply};
use proto::system_keys::USER_KEYS_END;
use proto::transport::RpcClient;
use proto::{Mutation, Version};
use testkit::{signal, ClusterSpec, LocalCluster, Signal};

use crate::nemesis::Writers;

const DEADLINE: Duration = Duration::from_secs(120);
const REBUILT: u64 = 100;
const TEAMMATE: u64 = 101;
/// After every other key of team 1, so the copy's last page holds it.
const APPENDED_KEY: &[u8] = b"d-appended";

fn set(key: String, value: String) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from(value),
    }
}

/// Team 1 (servers 100 and 101) holds the keys before "h".
fn spec() -> ClusterSpec {
    ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        storage_args: crate::small_window_storage_args(),
        ..ClusterSpec::default()
    }
}

/// Writes keys `{prefix}{n:05}` = `{value}-{n}` for n below `count`,
/// `per_commit` to a commit; returns the last commit's version.
async fn write_numbered(
    client: &Client,
    prefix: &str,
    value: &str,
    count: usize,
    per_commit: usize,
) -> Result<Version> {
    let mut last = Version::ZERO;
    for first in (0..count).step_by(per_commit) {
        let writes = (first..(first + per_commit).min(count))
            .map(|n| set(format!("{prefix}{n:05}"), format!("{value}-{n}")))
            .collect();
        last = client.commit(writes).await?;
    }
    Ok(last)
}

/// The keys before `end` held by `server` at `version`, read straight
/// from it, page by page (asked again while it has not applied the
/// version yet).
pub(crate) async fn held_before(
    cluster: &ClusterFile,
    server: u64,
    end: &'static [u8],
    version: Version,
) -> Result<Vec<(Bytes, Bytes)>> {
    held_between(cluster, server, b"", end, version).await
}

/// The keys in `[begin, end)` held by `server` at `version`, as
/// [`held_before`] reads them.
async fn held_between(
    cluster: &ClusterFile,
    server: u64,
    begin: &'static [u8],
    end: &'static [u8],
    version: Version,
) -> Result<Vec<(Bytes, Bytes)>> {
    let addr = address(cluster, server)?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut pairs: Vec<(Bytes, Bytes)> = Vec::new();
    loop {
        let client = RpcClient::connect(addr, cluster.client_config()?).await?;
        let request = GetRangeRequest {
            begin: pairs
                .last()
                .map_or_else(|| Bytes::from_static(begin), |(k, _)| proto::key_after(k)),
            end: Bytes::from_static(end),
            limit: 10_000,
            reverse: false,
            version,
            copy: false,
        };
        match client.call(Message::GetRange(request)).await {
            Ok(Message::GetRangeReply(reply)) => {
                pairs.extend(reply.pairs);
                if !reply.more {
                    return Ok(pairs);
                }
            }
            Ok(other) => bail!("unexpected {}", other.name()),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context(format!("reading from {server}")),
        }
    }
}

/// The version the TLogs holding team 1 say its servers popped, the
/// lowest over them.
async fn team_one_popped(local: &LocalCluster) -> Result<u64> {
    let (_, json) = crate::status::status_json(&local.cluster_path).await?;
    let tlogs = json["tlogs"].as_array().context("a list of TLogs")?;
    let popped = tlogs
        .iter()
        .flat_map(|t| t["status"]["teams"].as_array().cloned().unwrap_or_default())
        .filter(|team| team["team"] == 1)
        .filter_map(|team| team["popped"].as_u64())
        .min();
    Ok(popped.unwrap_or(0))
}

/// Server `id`'s status, asked of it straight.
/// What storage server `id` says of itself.
pub(crate) async fn server_status(cluster: &ClusterFile, id: u64) -> Result<StorageStatusReply> {
    let addr = address(cluster, id)?;
    let client = RpcClient::connect(addr, cluster.client_config()?).await?;
    match client.call(Message::Status).await? {
        Message::StorageStatus(status) => Ok(status),
        other => bail!("unexpected {}", other.name()),
    }
}

/// Where storage server `id` listens, by the cluster file.
pub(crate) fn address(cluster: &ClusterFile, id: u64) -> Result<std::net::SocketAddr> {
    let entry = cluster.storage_servers.iter().find(|s| s.id == id);
    Ok(entry.context("a known server")?.address)
}

/// Kills server `id` with SIGKILL and deletes its data directory.
async fn lose_with_its_data(
    local: &mut LocalCluster,
    dir: &std::path::Path,
    id: u64,
) -> Result<()> {
    let server = local.storage.get_mut(&id).and_then(Option::take);
    server.context("a running server")?.kill9().await?;
    Ok(std::fs::remove_dir_all(dir.join(format!("storage-{id}")))?)
}

fn pid(local: &LocalCluster, id: u64) -> Result<u32> {
    let server = local.storage.get(&id).and_then(Option::as_ref);
    server.and_then(|s| s.pid()).context("a running server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_data_rebuilds_from_its_teammate_while_commits_go_on() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    write_numbered(&client, "a", "before", 300, 30).await?;
    // More pairs than one range read returns: the copy takes pages.
    let last = write_numbered(&client, "c", "many", 12_000, 500).await?;
    // The log keeps nothing of team 1 up to what both servers made durable.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while team_one_popped(&local).await? < last.0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "team 1 was not popped past {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Server 100 and its data are gone; team 1 changes meanwhile.
    lose_with_its_data(&mut local, dir.path(), REBUILT).await?;
    let overwrites = (100..150)
        .map(|n| set(format!("a{n:05}"), format!("while-down-{n}")))
        .collect();
    client.commit(overwrites).await?;
    client
        .commit(vec![Mutation::ClearRange {
            begin: Bytes::from_static(b"a00000"),
            end: Bytes::from_static(b"a00050"),
        }])
        .await?;

    // Commits go on throughout the rebuild. Each also appends its number
    // to one key that the copy's last pages hold: applied again by the
    // log's redo over a page that has it, a number would show twice.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let appended = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn({
        let (client, stop, acknowledged, appended) = (
            client.clone(),
            stop.clone(),
            acknowledged.clone(),
            appended.clone(),
        );
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("b{n:05}"), format!("during-{n}"));
                let append = Mutation::AppendIfFits {
                    key: Bytes::from_static(APPENDED_KEY),
                    suffix: Bytes::from(format!("{n};")),
                };
                if client
                    .commit(vec![set(key.clone(), value.clone()), append])
                    .await
                    .is_ok()
                {
                    acknowledged.lock().unwrap().insert(key, value);
                    appended.lock().unwrap().push(n);
                }
                n += 1;
            }
        }
    });

    // Back with an empty directory while its teammate is frozen: it says
    // it rebuilds, and is killed while it copies.
    signal(pid(&local, TEAMMATE)?, Signal::STOP)?;
    let copying = local.start_storage(REBUILT).await?;
    loop {
        let status = server_status(&cluster, REBUILT).await?;
        if let Some(what) = status.rebuilding {
            ensure!(what == "starting" || what.contains("team-1"), "{what}");
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "server {REBUILT} never said it rebuilds: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    copying.kill9().await?;
    signal(pid(&local, TEAMMATE)?, Signal::CONT)?;

    // Back again: the copy starts over and finishes.
    let server = local.start_storage(REBUILT).await?;
    local.storage.insert(REBUILT, Some(server));
    let restarted = client.read_version().await?;
    loop {
        let status = server_status(&cluster, REBUILT).await?;
        ensure!(
            status.stopped.is_none(),
            "server {REBUILT} stopped: {status:?}"
        );
        if status.rebuilding.is_none() && status.applied_version >= restarted {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "server {REBUILT} did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    let version = client.read_version().await?;
    let rebuilt = held_before(&cluster, REBUILT, b"h", version).await?;
    let teammate = held_before(&cluster, TEAMMATE, b"h", version).await?;
    ensure!(
        rebuilt == teammate,
        "server {REBUILT} holds {} pairs, server {TEAMMATE} {}",
        rebuilt.len(),
        teammate.len()
    );
    let mut expected: BTreeMap<String, String> = (50..300)
        .map(|n| (format!("a{n:05}"), format!("before-{n}")))
        .collect();
    for n in 100..150 {
        expected.insert(format!("a{n:05}"), format!("while-down-{n}"));
    }
    expected.extend((0..12_000).map(|n| (format!("c{n:05}"), format!("many-{n}"))));
    expected.extend(acknowledged.lock().unwrap().clone());
    let held: BTreeMap<String, String> = rebuilt
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    // Every acknowledged write is there; a write whose outcome was unknown
    // may be too, nothing else.
    for (key, value) in &expected {
        ensure!(
            held.get(key) == Some(value),
            "{key}: {:?}, expected {value}",
            held.get(key)
        );
    }
    for key in held.keys() {
        ensure!(
            expected.contains_key(key) || key.starts_with('b') || key.as_bytes() == APPENDED_KEY,
            "{key} was never written"
        );
    }
    // The writer's numbers, each once and in order, every acknowledged one
    // among them.
    let numbers: Vec<u64> = held
        .get(std::str::from_utf8(APPENDED_KEY)?)
        .map(|value| value.split_terminator(';').map(str::parse).collect())
        .transpose()?
        .unwrap_or_default();
    ensure!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "{} applied twice or out of order: {numbers:?}",
        String::from_utf8_lossy(APPENDED_KEY)
    );
    let missing: Vec<u64> = appended
        .lock()
        .unwrap()
        .iter()
        .filter(|n| numbers.binary_search(n).is_err())
        .copied()
        .collect();
    ensure!(missing.is_empty(), "acknowledged appends lost: {missing:?}");
    Ok(local.stop().await?)
}

/// Waits until server `id` has finished rebuilding and applied `version`.
pub(crate) async fn wait_rebuilt(cluster: &ClusterFile, id: u64, version: Version) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = server_status(cluster, id).await;
        if let Ok(status) = &status {
            ensure!(status.stopped.is_none(), "server {id} stopped: {status:?}");
            if status.rebuilding.is_none() && status.applied_version >= version {
                return Ok(());
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "server {id} did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The epochs of the live generations.
async fn generations(local: &LocalCluster) -> Result<Vec<u64>> {
    let coordinators = CoordinatorClient::new(
        &local.cluster.coordinator_addresses(),
        local.cluster.client_config()?,
    )?;
    let state = coordinators.read_core_state().await?.0;
    Ok(state.generations.iter().map(|g| g.epoch).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_rebuilt_after_a_recovery_reads_on_in_the_new_generation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 3,
        workers: 4,
        tlogs: 2,
        proxies: 1,
        replication: 2,
        teams: 1,
        servers_per_team: 2,
        storage_args: vec!["--window-versions".into(), "200000".into()],
        ..ClusterSpec::default()
    };
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let writers = Writers::start(&client, 2);
    writers.wait_for_progress("at the start").await?;
    // Both servers made something durable and popped it.
    let written = client.read_version().await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for id in [REBUILT, TEAMMATE] {
        while server_status(&cluster, id).await?.durable_version < written {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{id} made nothing durable"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The server and its data are lost; then a TLog's worker, so a new
    // generation begins while the server is away.
    lose_with_its_data(&mut local, dir.path(), REBUILT).await?;
    let epoch = local.wait_recovered(DEADLINE).await?;
    let i = local
        .worker_hosting(RoleKind::TLog, epoch)
        .await?
        .context("a worker hosting a TLog")?;
    local.workers[i].take().context("live")?.kill9().await?;
    local.workers[i] = Some(local.start_worker(i).await?);
    while local.wait_recovered(DEADLINE).await? == epoch {
        ensure!(tokio::time::Instant::now() < deadline, "no new generation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writers.wait_for_progress("in the new generation").await?;
    ensure!(
        generations(&local).await?.len() > 1,
        "the generation the lost server needs was retired without it"
    );

    // Back with an empty directory: it copies from its teammate, reads on
    // in the new generation, and the old one retires.
    let server = local.start_storage(REBUILT).await?;
    local.storage.insert(REBUILT, Some(server));
    let restarted = client.read_version().await?;
    wait_rebuilt(&cluster, REBUILT, restarted).await?;
    while generations(&local).await?.len() > 1 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "old generations stay: {:?}",
            generations(&local).await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holds_what_its_teammate_holds(
        &cluster,
        &client,
        writers,
        (REBUILT, TEAMMATE),
        USER_KEYS_END,
    )
    .await?;
    Ok(local.stop().await?)
}

/// Stops `writers`; then `server` holds, at a version after their last
/// write, exactly what `teammate` holds before `end`, and that is what
/// the writers wrote.
pub(crate) async fn holds_what_its_teammate_holds(
    cluster: &ClusterFile,
    client: &Client,
    writers: Writers,
    (server, teammate): (u64, u64),
    end: &'static [u8],
) -> Result<()> {
    let finished = writers.finish().await?;
    let version = client.read_version().await?;
    let held = held_before(cluster, server, end, version).await?;
    let by_teammate = held_before(cluster, teammate, end, version).await?;
    ensure!(
        held == by_teammate,
        "server {server} holds {} pairs, server {teammate} {}",
        held.len(),
        by_teammate.len()
    );
    finished.check(held)
}

/// Waits until `server` has made `version` durable.
async fn wait_durable(cluster: &ClusterFile, server: u64, version: Version) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = server_status(cluster, server).await;
        if status.as_ref().is_ok_and(|s| s.durable_version >= version) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{server} did not make {version} durable: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A range moved onto team 1 after the cluster file was written is held by
/// a server of team 1 rebuilt afterwards: the copy goes by the shard map at
/// its own first version, not the cluster file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_rebuilt_after_a_move_copies_the_ranges_its_team_holds_now() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = crate::two_teams_split_at("m");
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let client = Client::new(&cluster)?;
    write_numbered(&client, "a", "first", 200, 20).await?;
    write_numbered(&client, "q", "first", 200, 20).await?;
    let moved = client
        .move_range(
            Bytes::from_static(b"q"),
            Bytes::from_static(b"r"),
            proto::StorageTeamId(1),
            DEADLINE,
            |_| {},
        )
        .await;
    ensure!(moved.is_ok(), "the move to team 1: {moved:?}");
    let written = write_numbered(&client, "q", "second", 100, 20).await?;
    for id in [REBUILT, TEAMMATE] {
        wait_durable(&cluster, id, written).await?;
    }

    lose_with_its_data(&mut local, dir.path(), REBUILT).await?;
    write_numbered(&client, "q", "third", 50, 10).await?;
    let server = local.start_storage(REBUILT).await?;
    local.storage.insert(REBUILT, Some(server));
    let restarted = client.read_version().await?;
    wait_rebuilt(&cluster, REBUILT, restarted).await?;
    let version = client.read_version().await?;
    for (begin, end) in [(&b""[..], &b"m"[..]), (b"q", b"r")] {
        let rebuilt = held_between(&cluster, REBUILT, begin, end, version).await?;
        let teammate = held_between(&cluster, TEAMMATE, begin, end, version).await?;
        ensure!(
            rebuilt == teammate && !rebuilt.is_empty(),
            "[{begin:?}, {end:?}): server {REBUILT} holds {} pairs, server {TEAMMATE} {}",
            rebuilt.len(),
            teammate.len()
        );
    }
    Ok(local.stop().await?)
}
