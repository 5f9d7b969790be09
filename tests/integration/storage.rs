//! Storage servers end to end, with real processes: every commit readable at
//! its version on every server of its team, older versions inside the window
//! readable as they were, clear ranges right across flushes and restarts;
//! kill -9 under a write load; a live team change.
//!
//! `TEAMLOG_SEED` reproduces a run (the seed is printed); `TEAMLOG_KILLS`
//! sets the number of kills (default 20).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Result};
use bytes::Bytes;
use client::{Client, ClientError};
use cluster::ClusterFile;
use proto::rpc::{ErrorCode, GetRangeRequest, Message};
use proto::transport::{RpcClient, RpcError};
use proto::{Mutation, Version};
use rand::{Rng, SeedableRng};
use testkit::{kills_from_env, seed_from_env};
use testkit::{ClusterSpec, LocalCluster};

/// Shards: ["", "h") team 1, ["h", "p") team 2, ["p", \xff) team 3.
const BOUNDS: [&[u8]; 4] = [b"", b"h", b"p", b"\xff"];

type Model = BTreeMap<Bytes, Bytes>;

fn spec() -> ClusterSpec {
    ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        // A small window, so versions are flushed all through the test.
        storage_args: ["--window-versions", "200000", "--window-bytes", "16384"]
            .map(String::from)
            .to_vec(),
        ..ClusterSpec::default()
    }
}

fn apply(model: &mut Model, mutation: &Mutation) {
    match mutation {
        Mutation::SetValue { key, value } => {
            model.insert(key.clone(), value.clone());
        }
        Mutation::ClearRange { begin, end } => {
            let doomed: Vec<Bytes> = model
                .range(begin.clone()..end.clone())
                .map(|(k, _)| k.clone())
                .collect();
            for key in doomed {
                model.remove(&key);
            }
        }
        Mutation::AppendIfFits { key, suffix } => {
            if let Some(value) = proto::append_if_fits(model.get(key).map(|v| &v[..]), suffix) {
                model.insert(key.clone(), value);
            }
        }
    }
}

/// One to three random sets, appends and clears of keys
/// `{letter}{prefix}{digit}`.
/// With a prefix (one per concurrent writer), a clear stays inside one
/// letter, so it touches only its writer's keys: commits of several
/// writers that share a version (one batch) then commute, and the model
/// need not know their order in the batch. Without one, a clear may span
/// shards.
fn random_mutations(rng: &mut impl Rng, prefix: &str, n: u64) -> Vec<Mutation> {
    let letter = |rng: &mut dyn rand::RngCore| (b'a' + rng.random_range(0..26u8)) as char;
    let key = |letter: char, rng: &mut dyn rand::RngCore| {
        Bytes::from(format!("{letter}{prefix}{}", rng.random_range(0..8)))
    };
    (0..rng.random_range(1..4))
        .map(|_| {
            let choice = rng.random_range(0..20);
            if choice < 12 {
                let l = letter(rng);
                Mutation::SetValue {
                    key: key(l, rng),
                    value: Bytes::from(format!("v{n}")),
                }
            } else if choice < 15 {
                let l = letter(rng);
                Mutation::AppendIfFits {
                    key: key(l, rng),
                    suffix: Bytes::from(format!("+{n}")),
                }
            } else {
                let first = letter(rng);
                let second = if prefix.is_empty() {
                    letter(rng)
                } else {
                    first
                };
                let (a, b) = (key(first, rng), key(second, rng));
                Mutation::ClearRange {
                    begin: a.clone().min(b.clone()),
                    end: a.max(b),
                }
            }
        })
        .collect()
}

/// What `server` holds in shard `shard` at `version`, read straight from it.
async fn server_range(
    cluster: &ClusterFile,
    server: u64,
    shard: usize,
    version: Version,
) -> Result<Vec<(Bytes, Bytes)>> {
    let addr = cluster
        .storage_servers
        .iter()
        .find(|s| s.id == server)
        .expect("known")
        .address;
    let client = RpcClient::connect(addr, cluster.client_config()?).await?;
    let request = GetRangeRequest {
        begin: Bytes::from_static(BOUNDS[shard]),
        end: Bytes::from_static(BOUNDS[shard + 1]),
        limit: 10_000,
        reverse: false,
        version,
        copy: false,
    };
    match client.call(Message::GetRange(request)).await? {
        Message::GetRangeReply(reply) => Ok(reply.pairs),
        other => anyhow::bail!("unexpected {}", other.name()),
    }
}

fn model_range(model: &Model, shard: usize) -> Vec<(Bytes, Bytes)> {
    model
        .range(Bytes::from_static(BOUNDS[shard])..Bytes::from_static(BOUNDS[shard + 1]))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every server of every team holds exactly the model at `version`.
async fn check_all_servers(cluster: &ClusterFile, model: &Model, version: Version) -> Result<()> {
    for (shard, team) in cluster.teams.iter().enumerate() {
        for server in &team.servers {
            let got = server_range(cluster, *server, shard, version).await?;
            ensure!(
                got == model_range(model, shard),
                "server {server}, shard {shard} at {version}: {got:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_every_version_match_the_model_across_flushes_and_restarts() -> Result<()> {
    reads_match_the_model(spec()).await
}

/// Without broadcasting, a server's teams get nothing at versions that do
/// not touch them; its cursor advances on the TLogs' `end` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_match_the_model_without_version_broadcasting() -> Result<()> {
    reads_match_the_model(ClusterSpec {
        broadcast: false,
        ..spec()
    })
    .await
}

async fn reads_match_the_model(spec: ClusterSpec) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_from_env());
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let mut local = LocalCluster::start(exe, dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let client = Client::new(&cluster)?;
    let mut model = Model::new();
    let mut history: Vec<(Version, Model)> = Vec::new();
    for n in 0..120u64 {
        if n == 60 {
            // A clean restart of one server of each of two teams.
            for id in [100, 201] {
                local
                    .storage
                    .remove(&id)
                    .flatten()
                    .expect("running")
                    .stop()
                    .await?;
                local
                    .storage
                    .insert(id, Some(local.start_storage(id).await?));
            }
        }
        let mutations = random_mutations(&mut rng, "", n);
        let version = client.commit(mutations.clone()).await?;
        for m in &mutations {
            apply(&mut model, m);
        }
        history.push((version, model.clone()));
        // Each commit is readable at its version on every server of its team.
        if n % 20 == 19 {
            check_all_servers(&cluster, &model, version).await?;
        }
    }
    let (last, _) = *history.last().expect("commits");
    check_all_servers(&cluster, &model, last).await?;
    // Older versions: as they were while still in the window, too old after.
    let mut readable = 0;
    for (version, state) in history.iter().rev().take(40) {
        match client
            .get_range(b"", b"\xff", 10_000, false, *version)
            .await
        {
            Ok((pairs, more)) => {
                ensure!(!more);
                let expected: Vec<_> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                ensure!(pairs == expected, "at {version}");
                readable += 1;
            }
            Err(ClientError::Read {
                code: proto::rpc::ErrorCode::TransactionTooOld,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(readable >= 1, "the newest version must be readable");
    // Reverse reads and point reads agree with the model too.
    let (pairs, _) = client.get_range(b"", b"\xff", 5, true, last).await?;
    let expected: Vec<_> = model
        .iter()
        .rev()
        .take(5)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ensure!(pairs == expected);
    for (key, value) in model.iter().take(10) {
        ensure!(client.get(key, last).await?.as_ref() == Some(value));
    }
    ensure!(client.get(b"zz-absent", last).await?.is_none());
    // A server refuses a range reaching into the system keys, clearly.
    let last_team = cluster.teams.last().expect("teams");
    let addr = cluster
        .storage_servers
        .iter()
        .find(|s| s.id == last_team.servers[0])
        .expect("known")
        .address;
    let server = RpcClient::connect(addr, cluster.client_config()?).await?;
    let request = GetRangeRequest {
        begin: Bytes::from_static(b"p"),
        end: Bytes::from_static(b"\xff\x00"),
        limit: 10,
        reverse: false,
        version: last,
        copy: false,
    };
    match server.call(Message::GetRange(request)).await {
        Err(RpcError::Remote { code, .. }) => ensure!(code == ErrorCode::InvalidRange),
        other => anyhow::bail!("expected invalid_range, got {other:?}"),
    }
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_and_applies_nothing_twice() -> Result<()> {
    let kills = kills_from_env(20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_from_env());
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let mut local = LocalCluster::start(exe, dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    // Writers use disjoint keys, so the order of commits sharing a version
    // (one batch) cannot matter to the model.
    let acked = Arc::new(Mutex::new(Vec::<(Version, Vec<Mutation>)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (client, acked, stop, progress) = (
            client.clone(),
            acked.clone(),
            stop.clone(),
            progress.clone(),
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng.random());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mutations = random_mutations(&mut rng, &format!("w{w}-"), n);
                let version = client.commit(mutations.clone()).await?;
                acked.lock().unwrap().push((version, mutations));
                progress.notify_waiters();
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    let ids: Vec<u64> = cluster.storage_servers.iter().map(|s| s.id).collect();
    for _ in 0..kills {
        let target = acked.lock().unwrap().len() + rng.random_range(5..30);
        while acked.lock().unwrap().len() < target {
            tokio::time::timeout(std::time::Duration::from_secs(30), progress.notified()).await?;
        }
        let victim = ids[rng.random_range(0..ids.len())];
        local
            .storage
            .remove(&victim)
            .flatten()
            .expect("running")
            .kill9()
            .await?;
        local
            .storage
            .insert(victim, Some(local.start_storage(victim).await?));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await??;
    }
    let mut acked = std::mem::take(&mut *acked.lock().unwrap());
    acked.sort_by_key(|(v, _)| *v);
    let mut model = Model::new();
    let mut states = Vec::new();
    for (version, mutations) in &acked {
        for m in mutations {
            apply(&mut model, m);
        }
        states.push((*version, model.clone()));
    }
    let (last, _) = *states.last().expect("commits");
    check_all_servers(&cluster, &model, last).await?;
    // Earlier versions still in the window read exactly as the model says.
    for (version, state) in states.iter().rev().step_by(7).take(10) {
        for (shard, team) in cluster.teams.iter().enumerate() {
            let server = team.servers[0];
            match server_range(&cluster, server, shard, *version).await {
                Ok(got) => ensure!(
                    got == model_range(state, shard),
                    "server {server} at {version}"
                ),
                Err(e) if e.to_string().contains("transaction_too_old") => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_large_values_pages_by_bytes_instead_of_failing() -> Result<()> {
    // 700 values of 100 KB: 70 MB in one shard, more than a frame holds.
    const VALUES: usize = 700;
    const PER_COMMIT: usize = 90;
    let dir = tempfile::tempdir()?;
    let local = LocalCluster::start(crate::exe(), dir.path(), &ClusterSpec::default()).await?;
    let client = Client::new(&local.cluster)?;
    let value = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 100_000]);
    let mut last = Version::ZERO;
    for chunk in (0..VALUES).collect::<Vec<_>>().chunks(PER_COMMIT) {
        let mutations = chunk
            .iter()
            .map(|i| Mutation::SetValue {
                key: Bytes::from(format!("big{i:04}")),
                value: value(*i),
            })
            .collect();
        last = client.commit(mutations).await?;
    }
    let (pairs, more) = client
        .get_range(b"big", b"bih", 1_000_000, false, last)
        .await?;
    ensure!(!more && pairs.len() == VALUES, "{} pairs", pairs.len());
    for (i, (key, got)) in pairs.iter().enumerate() {
        ensure!(key.as_ref() == format!("big{i:04}").as_bytes() && *got == value(i));
    }
    Ok(local.stop().await?)
}

/// Each storage server's (applied, durable) versions, and the sequencer's
/// (last, committed).
async fn versions(cluster: &ClusterFile) -> Result<(Vec<(Version, Version)>, (Version, Version))> {
    let mut servers = Vec::new();
    for server in &cluster.storage_servers {
        let client = RpcClient::connect(server.address, cluster.client_config()?).await?;
        match client.call(Message::Status).await? {
            Message::StorageStatus(s) => servers.push((s.applied_version, s.durable_version)),
            other => anyhow::bail!("unexpected {}", other.name()),
        }
    }
    let sequencer =
        RpcClient::connect(cluster.sequencer_address()?, cluster.client_config()?).await?;
    match sequencer.call(Message::Status).await? {
        Message::SequencerStatus(s) => Ok((servers, (s.last_version, s.committed_version))),
        other => anyhow::bail!("unexpected {}", other.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_not_known_committed_stay_out_of_the_engine_and_reads_go_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    for i in 0..5 {
        client
            .commit(random_mutations(
                &mut rand::rngs::StdRng::seed_from_u64(i),
                "a",
                i,
            ))
            .await?;
    }
    // One TLog gone for good: new versions reach the other TLogs (and the
    // storage servers through them) but never commit. Large values push the
    // servers' windows over their byte budget, which would flush them.
    local.tlogs[1].take().expect("running").kill9().await?;
    let writes: Vec<_> = (0..3u8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let big = Mutation::SetValue {
                    key: Bytes::from(vec![b'b', i]),
                    value: Bytes::from(vec![i; 20_000]),
                };
                client.commit(vec![big]).await
            })
        })
        .collect();
    for write in writes {
        ensure!(
            write.await?.is_err(),
            "a commit missing a TLog was acknowledged"
        );
    }
    let started = std::time::Instant::now();
    let (servers, (last, committed)) = loop {
        let (servers, sequencer) = versions(&cluster).await?;
        if servers.iter().all(|(applied, _)| *applied >= sequencer.0) {
            break (servers, sequencer);
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the storage servers never applied {}: {servers:?}",
            sequencer.0
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    ensure!(
        last > committed,
        "the test needs versions that did not commit"
    );
    for (applied, durable) in &servers {
        ensure!(
            *durable <= committed,
            "durable {durable} (applied {applied}) passed the committed version {committed}"
        );
    }
    // Reads at the read version clients get still work.
    let version = client.read_version().await?;
    ensure!(version == committed);
    client
        .get_range(b"", b"\xff", 1_000, false, version)
        .await?;
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_team_change_starts_and_stops_exactly_at_its_version() -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_from_env());
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let spec = ClusterSpec {
        // Large windows: every version of this test stays readable.
        storage_args: Vec::new(),
        ..spec()
    };
    let local = LocalCluster::start(exe, dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let client = Client::new(&cluster)?;
    let assign = |server: u64, teams: &[u64]| {
        let entry = cluster
            .storage_servers
            .iter()
            .find(|s| s.id == server)
            .expect("known");
        let set = proto::team_set::TeamSet::new(
            proto::StorageTeamId(entry.private_team),
            teams.iter().map(|t| proto::StorageTeamId(*t)),
        );
        set.mutation(proto::StorageServerId(server))
    };
    let mut log: Vec<(Version, Vec<Mutation>)> = Vec::new();
    let mut changes = (Version::ZERO, Version::ZERO);
    for n in 0..90u64 {
        if n == 30 {
            changes.0 = client.commit_system(vec![assign(100, &[1, 2])]).await?;
        }
        if n == 50 {
            changes.1 = client.commit_system(vec![assign(301, &[])]).await?;
        }
        let mutations = random_mutations(&mut rng, "", n);
        log.push((client.commit(mutations.clone()).await?, mutations));
    }
    let (added_at, removed_at) = changes;
    let last = log.last().expect("commits").0;
    let model_between = |after: Version, through: Version| {
        let mut model = Model::new();
        for (version, mutations) in &log {
            if *version > after && *version <= through {
                mutations.iter().for_each(|m| apply(&mut model, m));
            }
        }
        model
    };
    // Server 100 added team 2 at `added_at`: its team-2 data is exactly the
    // mutations after that version, and its team-1 data is all of them.
    let got = server_range(&cluster, 100, 1, last).await?;
    ensure!(
        got == model_range(&model_between(added_at, last), 1),
        "added team: {got:?}"
    );
    let got = server_range(&cluster, 100, 0, last).await?;
    ensure!(got == model_range(&model_between(Version::ZERO, last), 0));
    // Before the change, team 2's keys are not server 100's.
    let before = server_range(&cluster, 100, 1, added_at).await;
    ensure!(
        matches!(&before, Err(e) if e.to_string().contains("wrong_shard_server")),
        "before the change: {before:?}"
    );
    // Server 301 left team 3 at `removed_at`: it answers for it up to that
    // version, exactly as the model was then, and not after.
    let got = server_range(&cluster, 301, 2, removed_at).await?;
    ensure!(
        got == model_range(&model_between(Version::ZERO, removed_at), 2),
        "removed team"
    );
    let after = server_range(&cluster, 301, 2, last).await;
    ensure!(
        matches!(&after, Err(e) if e.to_string().contains("wrong_shard_server")),
        "after leaving: {after:?}"
    );
    // Its partner still serves everything.
    let got = server_range(&cluster, 300, 2, last).await?;
    ensure!(got == model_range(&model_between(Version::ZERO, last), 2));
    Ok(local.stop().await?)
}
