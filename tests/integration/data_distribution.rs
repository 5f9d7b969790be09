//! The data distributor spreads a hot key range, online: writers hammer a
//! hundred keys of team 1's shard while team 2 idles. The controller's
//! distributor splits the shard by its writes (its bytes are tiny, so a
//! split by bytes alone never would) and moves pieces to team 2 under the
//! writes. Afterwards every replica of every piece holds exactly what the
//! acknowledged commits wrote, and the controller's status says what the
//! distributor did. A team taken out with `teamlog scale` under the writes
//! hands every shard over and goes out of the cluster (the TLogs keep no
//! stream of it, status counts its servers as excluded), and let back in
//! takes a share of the hot range again.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::moves::MoveError;
use client::Client;
use cluster::{ClusterFile, DistributionSettings};
use coordinator::client::CoordinatorClient;
use proto::rpc::{ErrorCode, GetKeyLocationRequest, Message};
use proto::shard_map::ShardMap;
use proto::transport::RpcClient;
use proto::{Mutation, StorageTeamId, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::{ClusterSpec, LocalCluster};

use crate::data_move::held_in;

const DEADLINE: Duration = Duration::from_secs(120);
/// The hot keys: `k000` to `k099`, all in team 1's shard (before "m").
const HOT_BEGIN: &[u8] = b"k";
const HOT_END: &[u8] = b"l";
const HOT_KEYS: u64 = 100;
const WRITERS: u64 = 4;

/// Two teams: team 1 holds the keys before "m", team 2 the rest. Limits
/// low enough that a few hundred writes a second to one shard are hot.
fn spec() -> ClusterSpec {
    ClusterSpec {
        coordinators: 1,
        workers: 3,
        tlogs: 2,
        replication: 2,
        proxies: 1,
        teams: 2,
        shard_begins: vec!["m".into()],
        storage_args: crate::small_window_storage_args(),
        distribution: Some(DistributionSettings {
            max_shard_writes_per_sec: 60,
            min_imbalance_writes_per_sec: 30,
            ..DistributionSettings::default()
        }),
        ..ClusterSpec::default()
    }
}

/// `spec` with three coordinators, so that the controller's can die, and
/// moves slow enough to be caught copying: a page of 10,000 pairs takes
/// a few seconds at 128 KiB a second.
fn slow_moves_spec() -> ClusterSpec {
    let fast = spec();
    ClusterSpec {
        coordinators: 3,
        distribution: fast.distribution.map(|d| DistributionSettings {
            move_bytes_per_sec: 128 << 10,
            ..d
        }),
        ..fast
    }
}

/// Keys under each hot key (`k000/0000`, ...), set before the writers
/// start, so that a piece of the hot range takes a few pages to copy.
const PRELOADED_PER_HOT_KEY: u64 = 1_000;

/// Each hot key's newest acknowledged version and the values written at
/// it (commits batched into one version apply in an order no client
/// sees), and the keys a commit of unknown outcome may have changed.
#[derive(Default)]
struct Model {
    values: BTreeMap<Bytes, (Version, Vec<Bytes>)>,
    uncertain: BTreeSet<Bytes>,
}

/// A writer setting random hot keys, one per commit, until `stop`.
fn start_writer(
    client: Arc<Client>,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    writer: u64,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(writer));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = Bytes::from(format!("k{:03}", rng.random_range(0..HOT_KEYS)));
            let value = Bytes::from(format!("{writer}-{n}"));
            let set = Mutation::SetValue {
                key: key.clone(),
                value: value.clone(),
            };
            let committed = client.commit(vec![set]).await;
            let mut model = model.lock().unwrap();
            match committed {
                Ok(version) => {
                    let newest = model.values.entry(key).or_insert((version, Vec::new()));
                    if newest.0 < version {
                        *newest = (version, Vec::new());
                    }
                    if newest.0 == version {
                        newest.1.push(value);
                    }
                }
                Err(_) => {
                    model.uncertain.insert(key);
                }
            }
            n += 1;
        }
    })
}

/// Sets the preloaded keys, a thousand a commit, into the model.
async fn preload(client: &Client, model: &Mutex<Model>) -> Result<()> {
    let keys: Vec<Bytes> = (0..HOT_KEYS)
        .flat_map(|hot| (0..PRELOADED_PER_HOT_KEY).map(move |i| format!("k{hot:03}/{i:04}")))
        .map(Bytes::from)
        .collect();
    for chunk in keys.chunks(1_000) {
        let value = Bytes::from_static(b"preloaded");
        let sets = chunk.iter().map(|key| Mutation::SetValue {
            key: key.clone(),
            value: value.clone(),
        });
        let version = client.commit(sets.collect()).await?;
        let mut model = model.lock().unwrap();
        for key in chunk {
            model
                .values
                .insert(key.clone(), (version, vec![value.clone()]));
        }
    }
    Ok(())
}

/// The shard map the controller last recorded, if it recorded one.
async fn recorded_map(cluster: &ClusterFile) -> Result<Option<ShardMap>> {
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let (state, _) = coordinators.read_core_state().await?;
    Ok(state.shard_map.map(|snapshot| snapshot.map()).transpose()?)
}

/// The teams the live shard map places `key` on at `version`, as a proxy
/// of the current generation knows it; `None` when no proxy is sure of
/// every change up to `version` yet.
async fn live_teams_at(
    cluster: &ClusterFile,
    key: &Bytes,
    version: Version,
) -> Result<Option<Vec<StorageTeamId>>> {
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let (state, _) = coordinators.read_core_state().await?;
    let proxies = state
        .current()
        .and_then(|g| g.commit_path.as_ref())
        .map(|path| path.proxies.clone())
        .unwrap_or_default();
    let request = GetKeyLocationRequest {
        key: key.clone(),
        version,
    };
    for proxy in proxies {
        let client = RpcClient::connect(proxy, cluster.client_config()?).await?;
        if let Message::GetKeyLocationReply(reply) = client
            .call(Message::GetKeyLocation(request.clone()))
            .await?
        {
            if reply.as_of.next() >= version {
                return Ok(Some(reply.teams.into_iter().map(|(t, _)| t).collect()));
            }
        }
    }
    Ok(None)
}

/// The settled shards over the hot keys in the recorded shard map, with
/// their teams; none while one of them moves.
async fn hot_shards(cluster: &ClusterFile) -> Result<Option<Vec<(Bytes, Bytes, StorageTeamId)>>> {
    let Some(map) = recorded_map(cluster).await? else {
        return Ok(None);
    };
    let mut shards = Vec::new();
    for (begin, end, assignment) in map.split(HOT_BEGIN, HOT_END) {
        match (assignment.src.as_slice(), assignment.dest.as_slice()) {
            ([team], []) => shards.push((begin, end, *team)),
            _ => return Ok(None),
        }
    }
    Ok(Some(shards))
}

/// The controller's data-distribution lines (on the first coordinator).
async fn distribution_lines(cluster: &ClusterFile) -> Result<Vec<String>> {
    distribution_lines_of(cluster, cluster.coordinators[0].id).await
}

/// The data-distribution lines of the controller coordinator `id` hosts
/// (none when it hosts none).
async fn distribution_lines_of(cluster: &ClusterFile, id: u64) -> Result<Vec<String>> {
    let address = cluster.coordinator(id)?.address;
    let client = RpcClient::connect(address, cluster.client_config()?).await?;
    match client.call(Message::Status).await? {
        Message::CoordinatorStatus(status) => {
            Ok(status.recovery.map(|r| r.distribution).unwrap_or_default())
        }
        other => bail!("a coordinator answered {}", other.name()),
    }
}

/// Waits until the controller coordinator `id` hosts says a line that
/// starts with `prefix`; returns what it says.
async fn wait_until_said(
    cluster: &ClusterFile,
    id: u64,
    prefix: &str,
    since: tokio::time::Instant,
) -> Result<Vec<String>> {
    loop {
        let said = distribution_lines_of(cluster, id).await?;
        if said.iter().any(|l| l.starts_with(prefix)) {
            return Ok(said);
        }
        ensure!(
            since.elapsed() < DEADLINE,
            "the controller never said {prefix:?}: {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_range_is_split_by_its_writes_spread_over_two_teams_and_merged_once_cold(
) -> Result<()> {
    let seed = testkit::seed_from_env();
    let dir = tempfile::tempdir()?;
    let (local, client, writers) = under_writes(dir.path(), &spec(), false, seed).await?;
    let cluster = local.cluster.clone();

    let started = tokio::time::Instant::now();
    let spread = settled_over_two_teams(&cluster, started).await?;
    println!(
        "spread over {} shards after {:?}: {spread:?}",
        spread.len(),
        started.elapsed()
    );
    // The controller's status catches up within a checkpoint or two.
    let first = cluster.coordinators[0].id;
    let said = wait_until_said(&cluster, first, "last move: moving [", started).await?;
    println!("the distributor says {said:?}");

    let model = writers.stop().await?;
    ensure!(
        model.values.len() as u64 > HOT_KEYS / 2,
        "few writes went through"
    );
    check_replicas(&cluster, &client, &model, started).await?;

    // Cooled down, neighbouring shards of one team merge: those the split
    // left side by side, and a cold shard cut in two by hand.
    let cut = Bytes::from_static(b"x");
    ensure!(
        client.split_shard(cut.clone()).await?.is_some(),
        "team 2's shard was split at x already"
    );
    let since = tokio::time::Instant::now();
    let merged = merged_back(&cluster, &cut, since).await?;
    println!(
        "merged back to {} shards after {:?}",
        merged.entries().count(),
        since.elapsed()
    );
    check_replicas(&cluster, &client, &model, since).await?;
    Ok(local.stop().await?)
}

/// Waits until the recorded shard map has no boundary at `cut`, and no
/// two neighbouring settled shards on the same team; returns that map.
async fn merged_back(
    cluster: &ClusterFile,
    cut: &[u8],
    since: tokio::time::Instant,
) -> Result<ShardMap> {
    loop {
        if let Some(map) = recorded_map(cluster).await? {
            let settled: Vec<Option<StorageTeamId>> = map
                .entries()
                .map(|(_, a)| match (a.src.as_slice(), a.dest.as_slice()) {
                    ([team], []) => Some(*team),
                    _ => None,
                })
                .collect();
            let side_by_side = settled
                .windows(2)
                .any(|pair| pair[0].is_some() && pair[0] == pair[1]);
            if !side_by_side && map.entries().all(|(begin, _)| begin.as_ref() != cut) {
                return Ok(map);
            }
        }
        ensure!(
            since.elapsed() < DEADLINE,
            "neighbouring shards of one team were never merged: {:?}; the distributor said {:?}",
            recorded_map(cluster).await?,
            distribution_lines(cluster).await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the hot keys lie in settled shards on two teams or more;
/// returns those shards.
async fn settled_over_two_teams(
    cluster: &ClusterFile,
    since: tokio::time::Instant,
) -> Result<Vec<(Bytes, Bytes, StorageTeamId)>> {
    loop {
        if let Some(shards) = hot_shards(cluster).await? {
            let teams: BTreeSet<StorageTeamId> = shards.iter().map(|s| s.2).collect();
            if teams.len() >= 2 {
                return Ok(shards);
            }
        }
        ensure!(
            since.elapsed() < DEADLINE,
            "the hot range never settled over two teams: {:?}; the distributor said {:?}",
            hot_shards(cluster).await?,
            distribution_lines(cluster).await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writers at work on the hot keys, and the model of what they did.
struct Writers {
    handles: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    model: Arc<Mutex<Model>>,
}

impl Writers {
    /// Writers numbered `ids`, going on from `model`.
    fn start(client: &Arc<Client>, model: Model, ids: Range<u64>, seed: u64) -> Writers {
        let (model, stop) = (
            Arc::new(Mutex::new(model)),
            Arc::new(AtomicBool::new(false)),
        );
        let handles = ids
            .map(|w| start_writer(client.clone(), model.clone(), stop.clone(), w, seed))
            .collect();
        Writers {
            handles,
            stop,
            model,
        }
    }

    /// Stops the writers and returns what they did.
    async fn stop(self) -> Result<Model> {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.handles {
            writer.await?;
        }
        Ok(Arc::into_inner(self.model)
            .context("writers done")?
            .into_inner()
            .unwrap())
    }
}

/// A recovered cluster as `spec` says, with the preloaded keys when
/// `preloaded`, and `WRITERS` writers at work.
async fn under_writes(
    dir: &Path,
    spec: &ClusterSpec,
    preloaded: bool,
    seed: u64,
) -> Result<(LocalCluster, Arc<Client>, Writers)> {
    let local = LocalCluster::start(crate::exe(), dir, spec).await?;
    local.wait_recovered(DEADLINE).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let model = Mutex::new(Model::default());
    if preloaded {
        preload(&client, &model).await?;
    }
    let writers = Writers::start(&client, model.into_inner().unwrap(), 0..WRITERS, seed);
    Ok((local, client, writers))
}

/// Waits until every replica holds the model. The distributor may still
/// be moving pieces: the check reads the map and then every replica at a
/// later version, and starts over when a server no longer holds its piece.
async fn check_replicas(
    cluster: &ClusterFile,
    client: &Client,
    model: &Model,
    since: tokio::time::Instant,
) -> Result<()> {
    while !every_replica_holds_the_model(cluster, client, model).await? {
        ensure!(
            since.elapsed() < DEADLINE,
            "no version at which the map held still and every read went through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_while_its_distributor_moves_leaves_no_stuck_move_and_loses_nothing(
) -> Result<()> {
    let seed = testkit::seed_from_env();
    let dir = tempfile::tempdir()?;
    let (mut local, client, writers) =
        under_writes(dir.path(), &slow_moves_spec(), true, seed).await?;
    let cluster = local.cluster.clone();

    // Kill -9 the controller's coordinator as soon as its distributor
    // says a move is under way.
    let started = tokio::time::Instant::now();
    let (killed, moving) = loop {
        if let Some(id) = local.controller().await? {
            let said = distribution_lines_of(&cluster, id).await?;
            if let Some(line) = said.iter().find(|l| l.contains("(under way for")) {
                break (id, line.clone());
            }
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "the distributor never moved a shard: {:?}",
            distribution_lines(&cluster).await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let coordinator = local.coordinators.get_mut(&killed).and_then(Option::take);
    coordinator
        .context("the controller's coordinator")?
        .kill9()
        .await?;
    println!("killed coordinator {killed} while {moving}");

    // The next controller takes the orphaned move over (or back): the
    // hot range settles on teams alone, over both of them.
    let killed_at = tokio::time::Instant::now();
    let spread = settled_over_two_teams(&cluster, killed_at).await?;
    let controller = local.controller().await?;
    ensure!(
        controller.is_some_and(|c| c != killed),
        "no live coordinator hosts the controller: {controller:?}"
    );
    // Only the new controller's keeper can have finished the orphan (its
    // distributor plans no move while a shard is moving), and it says so.
    let controller = controller.context("the controller")?;
    let takeover = "last takeover: taking over the move of [";
    let said = wait_until_said(&cluster, controller, takeover, killed_at).await?;
    println!("the new controller says {said:?}");
    println!(
        "settled over {} shards {:?} after the kill: {spread:?}",
        spread.len(),
        killed_at.elapsed()
    );

    let model = writers.stop().await?;
    check_replicas(&cluster, &client, &model, killed_at).await?;
    local
        .coordinators
        .insert(killed, Some(local.start_coordinator(killed).await?));
    Ok(local.stop().await?)
}

/// Runs `teamlog scale` with `args`; its exit success and what it printed.
async fn scale(cluster: &Path, args: &[&str]) -> Result<(bool, String)> {
    let output = tokio::process::Command::new(crate::exe())
        .arg("scale")
        .arg("--cluster")
        .arg(cluster)
        .args(args)
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_taken_out_under_writes_hands_over_every_shard_and_let_back_in_takes_a_share(
) -> Result<()> {
    let seed = testkit::seed_from_env();
    let dir = tempfile::tempdir()?;
    let (local, client, writers) = under_writes(dir.path(), &spec(), true, seed).await?;
    let (cluster, path) = (local.cluster.clone(), local.cluster_path.clone());

    // Half a team cannot leave, nor every team.
    let (ok, said) = scale(&path, &["--remove-servers", "100"]).await?;
    ensure!(!ok && said.contains("team 1 with [101]"), "{said}");
    let (ok, said) = scale(&path, &["--remove-servers", "100,101,200,201"]).await?;
    ensure!(!ok && said.contains("no team would stay"), "{said}");

    // Team 1, which holds the hot keys and the preloaded ones, leaves
    // under the writes; the command returns once it holds nothing.
    let started = tokio::time::Instant::now();
    let (ok, said) =
        tokio::time::timeout(DEADLINE, scale(&path, &["--remove-servers", "100,101"])).await??;
    ensure!(
        ok && said.contains("hold no shard") && said.contains("out of the cluster"),
        "{said}"
    );
    // Its servers are out: the current generation's TLogs keep no stream
    // of team 1, and status counts them healthy as excluded.
    let (healthy, json) = crate::status::status_json(&path).await?;
    let tlog_teams: Vec<u64> = json["tlogs"]
        .as_array()
        .context("a list of TLogs")?
        .iter()
        .flat_map(|t| t["status"]["teams"].as_array().cloned().unwrap_or_default())
        .filter_map(|team| team["team"].as_u64())
        .collect();
    ensure!(
        !tlog_teams.is_empty() && !tlog_teams.contains(&1),
        "the TLogs keep teams {tlog_teams:?}"
    );
    let excluded: Vec<u64> = json["storage_servers"]
        .as_array()
        .context("a list of storage servers")?
        .iter()
        .filter(|s| s["excluded"] == true)
        .filter_map(|s| s["id"].as_u64())
        .collect();
    ensure!(
        healthy && excluded == [100, 101],
        "status after team 1 left: excluded {excluded:?}, unhealthy {:?}",
        crate::status::unhealthy_processes(&json)
    );
    println!("team 1 left after {:?}: {said}", started.elapsed());
    let map = recorded_map(&cluster).await?.context("a recorded map")?;
    let held: Vec<_> = map
        .entries()
        .filter(|(_, a)| a.teams().any(|t| t == StorageTeamId(1)))
        .collect();
    ensure!(held.is_empty(), "team 1 still holds {held:?}");
    let first = cluster.coordinators[0].id;
    wait_until_said(&cluster, first, "team-1 has left", started).await?;
    // Nor may a range move onto it by hand meanwhile.
    let onto = tokio::process::Command::new(crate::exe())
        .args(["move", "--range", "a..b", "--to-team", "1", "--cluster"])
        .arg(&path)
        .output()
        .await?;
    let said = String::from_utf8_lossy(&onto.stderr);
    ensure!(
        !onto.status.success() && said.contains("team 1 is leaving"),
        "a move onto the leaving team was not refused: {said}"
    );
    // Nor by a mover that does not ask whether it is leaving: none of its
    // servers would copy the range, and the flip would leave it nowhere.
    let unheld = client
        .move_range(
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            StorageTeamId(1),
            DEADLINE,
            |_| {},
        )
        .await;
    ensure!(
        matches!(unheld, Err(MoveError::TeamLeftOut(StorageTeamId(1)))),
        "a move onto a team whose servers are all left out was not refused: {unheld:?}"
    );
    let model = writers.stop().await?;
    check_replicas(&cluster, &client, &model, started).await?;

    // Let back in, team 1 takes a share of the hot range again, under
    // new writers.
    let writers = Writers::start(&client, model, WRITERS..2 * WRITERS, seed);
    let (ok, said) = scale(&path, &["--add-servers", "101,100"]).await?;
    ensure!(ok, "{said}");
    let back = tokio::time::Instant::now();
    let spread = settled_over_two_teams(&cluster, back).await?;
    println!("spread again after {:?}: {spread:?}", back.elapsed());
    let model = writers.stop().await?;
    check_replicas(&cluster, &client, &model, back).await?;
    Ok(local.stop().await?)
}

/// Whether every server of each hot piece's team, as the recorded map
/// places it, holds what the model says at a version after the last
/// acknowledged write, and every other server refuses it; `false` when
/// the map changed under the reads or they outlasted the window of
/// versions.
async fn every_replica_holds_the_model(
    cluster: &ClusterFile,
    client: &Client,
    model: &Model,
) -> Result<bool> {
    let Some(shards) = hot_shards(cluster).await? else {
        return Ok(false);
    };
    let version = client.read_version().await?;
    let teams = cluster.topology().teams;
    for (begin, end, team) in shards {
        let want: BTreeMap<&Bytes, &Vec<Bytes>> = model
            .values
            .iter()
            .filter(|(k, _)| begin <= **k && **k < end)
            .map(|(k, (_, v))| (k, v))
            .collect();
        // A server of another team refuses the piece: its own map must
        // end its shards where the cluster's does.
        let others = teams.iter().filter(|(t, _)| **t != team);
        for (other, server) in others.flat_map(|(t, servers)| servers.iter().map(move |s| (*t, s)))
        {
            let range = (begin.clone(), end.clone());
            match held_in(cluster, server.0, range, version).await? {
                Err(ErrorCode::WrongShardServer) => {}
                Err(ErrorCode::TransactionTooOld) => return Ok(false),
                // The recorded map lags the live one by up to a checkpoint:
                // a move may have given the piece to this server's team
                // before the read version.
                _ if live_teams_at(cluster, &begin, version)
                    .await?
                    .is_none_or(|teams| teams.contains(&other)) =>
                {
                    return Ok(false)
                }
                answered => bail!(
                    "server {server}, not of team {team}, answered for [{begin:?}, {end:?}): {:?}",
                    answered.map(|pairs| pairs.len())
                ),
            }
        }
        for server in teams.get(&team).context("the team")? {
            let range = (begin.clone(), end.clone());
            let pairs = match held_in(cluster, server.0, range, version).await? {
                Ok(pairs) => pairs,
                // The map changed under the reads, or the read of a large
                // piece outlasted the servers' window of versions: again,
                // at a new version.
                Err(ErrorCode::WrongShardServer | ErrorCode::TransactionTooOld) => {
                    return Ok(false)
                }
                Err(code) => bail!("server {server} refused: {code}"),
            };
            let held: BTreeMap<&Bytes, &Bytes> = pairs.iter().map(|(k, v)| (k, v)).collect();
            let differ: Vec<String> = differences(&held, &want, &model.uncertain)
                .iter()
                .map(|k| {
                    let at = model.values.get(k).map(|(v, _)| *v);
                    format!(
                        "{k:?}: holds {:?}, wrote {:?} at {at:?}",
                        held.get(k),
                        want.get(k)
                    )
                })
                .collect();
            ensure!(
                differ.is_empty(),
                "server {server} of team {team} differs from the model in [{begin:?}, {end:?}) at version {version}: {differ:?}"
            );
        }
    }
    Ok(true)
}

/// The keys where a server's pairs and the model differ, but for those a
/// commit of unknown outcome wrote.
fn differences(
    held: &BTreeMap<&Bytes, &Bytes>,
    want: &BTreeMap<&Bytes, &Vec<Bytes>>,
    uncertain: &BTreeSet<Bytes>,
) -> Vec<Bytes> {
    let keys: BTreeSet<&&Bytes> = held.keys().chain(want.keys()).collect();
    let matches = |k: &Bytes| match (held.get(k), want.get(k)) {
        (Some(value), Some(written)) => written.contains(value),
        (None, None) => true,
        _ => false,
    };
    keys.into_iter()
        .filter(|k| !uncertain.contains(**k) && !matches(k))
        .map(|k| (*k).clone())
        .collect()
}
