//! The commit path end to end, with real processes: 2 proxies, a sequencer,
//! 3 TLogs with replication 2, and 6 storage teams. Concurrent clients
//! commit through both proxies; every team's stream, read back from every
//! TLog that holds it, must reproduce exactly the acknowledged commits in
//! commit order, split by shard; a shard-map change committed through one
//! proxy must change the other proxy's routing from the next version on.
//!
//! `TEAMLOG_SEED` reproduces a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use client::Client;
use cluster::placement::tlogs_for_team;
use cluster::ClusterFile;
use cursor::{BroadcastedStorageTeamPeekCursor, Ordered, PeekCursor, TLogSource, TLogSourceConfig};
use proto::system_keys::{key_servers_key, ShardAssignment};
use proto::transport::RpcClient;
use proto::{BlockEntry, Mutation, StorageTeamId, Version};
use rand::{Rng, SeedableRng};
use testkit::seed_from_env;
use testkit::tlog_stream::read_team_entries;
use testkit::{ClusterSpec, LocalCluster};

/// Shards start at these keys; shard i belongs to team i + 1 (until moved).
const BEGINS: [&str; 6] = ["", "c", "f", "i", "l", "o"];

fn spec() -> ClusterSpec {
    ClusterSpec {
        proxies: 2,
        tlogs: 3,
        replication: 2,
        teams: 6,
        servers_per_team: 2,
        broadcast: true,
        shard_begins: BEGINS[1..].iter().map(|b| b.to_string()).collect(),
        storage: false,
        ..ClusterSpec::default()
    }
}

fn shard_of(key: &[u8]) -> usize {
    BEGINS
        .iter()
        .rposition(|b| b.as_bytes() <= key)
        .expect("\"\" begins every key")
}

/// A mutation as the teams receive it: a clear range cut at shard bounds.
fn pieces(mutation: &Mutation) -> Vec<(usize, Mutation)> {
    match mutation {
        Mutation::SetValue { key, .. } | Mutation::AppendIfFits { key, .. } => {
            vec![(shard_of(key), mutation.clone())]
        }
        Mutation::ClearRange { begin, end } => {
            let mut out = Vec::new();
            let first = shard_of(begin);
            for (shard, lo_bound) in BEGINS.iter().enumerate().skip(first) {
                let lo = begin.as_ref().max(lo_bound.as_bytes());
                let hi = match BEGINS.get(shard + 1) {
                    Some(next) => end.as_ref().min(next.as_bytes()),
                    None => end.as_ref(),
                };
                if lo < hi {
                    let piece = Mutation::ClearRange {
                        begin: Bytes::copy_from_slice(lo),
                        end: Bytes::copy_from_slice(hi),
                    };
                    out.push((shard, piece));
                }
            }
            out
        }
    }
}

fn random_commit(rng: &mut impl Rng, client: usize, n: usize) -> Vec<Mutation> {
    let letter = |rng: &mut dyn rand::RngCore| (b'a' + rng.random_range(0..18u8)) as char;
    // The first mutation is unique, so the test can tell commits apart.
    let mut mutations = vec![Mutation::SetValue {
        key: Bytes::from(format!("{}-c{client}-{n}", letter(rng))),
        value: Bytes::from(format!("v{n}")),
    }];
    for _ in 0..rng.random_range(0..4) {
        let (a, b) = (letter(rng), letter(rng));
        mutations.push(if rng.random_bool(0.4) {
            Mutation::SetValue {
                key: Bytes::from(format!("{a}{b}")),
                value: Bytes::from_static(b"x"),
            }
        } else if rng.random_bool(0.2) {
            Mutation::AppendIfFits {
                key: Bytes::from(format!("{a}{b}")),
                suffix: Bytes::from_static(b"y"),
            }
        } else {
            Mutation::ClearRange {
                begin: Bytes::from(a.min(b).to_string()),
                end: Bytes::from(format!("{}z", a.max(b))),
            }
        });
    }
    mutations
}

/// A client that talks only to proxy `id`.
fn client_of_proxy(cluster: &ClusterFile, id: u64) -> Client {
    let mut only = cluster.clone();
    only.proxies.retain(|p| p.id == id);
    Client::new(&only).expect("the cluster file's TLS files load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_through_two_proxies_reach_every_tlog_in_commit_order() -> Result<()> {
    let seed = seed_from_env();
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let local = LocalCluster::start(exe, dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();

    // Concurrent clients, spread over both proxies.
    let client = Arc::new(Client::new(&cluster)?);
    let acked = Arc::new(Mutex::new(Vec::<(Version, Vec<Mutation>)>::new()));
    let mut tasks = Vec::new();
    for c in 0..6 {
        let (client, acked) = (client.clone(), acked.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ c as u64);
        tasks.push(tokio::spawn(async move {
            for n in 0..40 {
                let mutations = random_commit(&mut rng, c, n);
                let version = client.commit(mutations.clone()).await?;
                acked.lock().unwrap().push((version, mutations));
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }

    // Move the last shard to team 1 through proxy 1; proxy 2 must route by
    // the new map from the next version on.
    let via_one = client_of_proxy(&cluster, 1);
    let via_two = client_of_proxy(&cluster, 2);
    let before = vec![Mutation::SetValue {
        key: Bytes::from_static(b"p-before"),
        value: Bytes::from_static(b"1"),
    }];
    let before_version = via_two.commit(before.clone()).await?;
    let mv = Mutation::SetValue {
        key: key_servers_key(b"o"),
        value: ShardAssignment::to(StorageTeamId(1)).encode(),
    };
    let move_version = via_one.commit_system(vec![mv.clone()]).await?;
    let after = vec![Mutation::SetValue {
        key: Bytes::from_static(b"p-after"),
        value: Bytes::from_static(b"2"),
    }];
    let after_version = via_two.commit(after.clone()).await?;
    ensure!(before_version < move_version && move_version < after_version);

    // Read every team back from every TLog that holds it.
    let transport = cluster.client_config()?;
    let tlogs: Vec<RpcClient> = futures::future::try_join_all(
        cluster
            .tlogs
            .iter()
            .map(|t| RpcClient::connect(t.address, transport.clone())),
    )
    .await?;
    let last = after_version;
    let topology = cluster.topology();
    let mut versions_seen: Option<BTreeSet<Version>> = None;
    for team in topology.all_teams() {
        let mut replicas = Vec::new();
        for index in tlogs_for_team(team, cluster.tlogs.len(), cluster.replication) {
            replicas.push(read_team_entries(&tlogs[index], team, Version(1), last).await?);
        }
        ensure!(
            replicas.windows(2).all(|w| w[0] == w[1]),
            "replicas of {team} differ"
        );
        let stream = replicas.remove(0);
        // Broadcast: every team has every version (a message or an empty one).
        let versions: BTreeSet<Version> = stream.iter().map(BlockEntry::version).collect();
        match &versions_seen {
            Some(seen) => ensure!(*seen == versions, "{team} has other versions than the rest"),
            None => versions_seen = Some(versions),
        }
    }
    let versions_seen = versions_seen.expect("teams exist");

    // Read every team back through the broadcasted ordered cursor: one stream
    // by (version, subsequence). The same piece may reach several teams
    // (private teams) with one subsequence.
    let mut source = TLogSource::new(TLogSourceConfig {
        client: cluster.client_config()?,
        ..TLogSourceConfig::default()
    });
    for team in topology.all_teams() {
        let replicas = tlogs_for_team(team, cluster.tlogs.len(), cluster.replication);
        source = source.with_team(
            team,
            replicas.iter().map(|i| cluster.tlogs[*i].address).collect(),
        );
    }
    let mut cursor = BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(
        Arc::new(source),
        topology.all_teams(),
        Version(1),
    );
    let mut merged: BTreeMap<(Version, u32), (Mutation, BTreeSet<StorageTeamId>)> = BTreeMap::new();
    let mut previous = (Version::ZERO, 0);
    while cursor.complete_below() <= last {
        cursor.remote_more_available().await?;
        for m in cursor.iter().filter(|m| m.version <= last) {
            let at = (m.version, m.subsequence.0);
            ensure!(
                at >= previous,
                "the cursor went back from {previous:?} to {at:?}"
            );
            previous = at;
            let slot = merged
                .entry(at)
                .or_insert_with(|| (m.mutation.clone(), BTreeSet::new()));
            ensure!(
                slot.0 == m.mutation,
                "one subsequence, two mutations at {}",
                m.version
            );
            slot.1.insert(m.team);
        }
    }

    // The model: each acknowledged commit's pieces, owned by the shard's team.
    let mut acked = std::mem::take(&mut *acked.lock().unwrap());
    acked.push((before_version, before));
    acked.push((after_version, after));
    let mut by_version: BTreeMap<Version, Vec<Vec<Mutation>>> = BTreeMap::new();
    for (version, mutations) in acked {
        ensure!(
            versions_seen.contains(&version),
            "acknowledged {version} is missing"
        );
        by_version.entry(version).or_default().push(mutations);
    }
    let team_of_shard = |shard: usize, version: Version| {
        if shard == 5 && version > move_version {
            StorageTeamId(1)
        } else {
            StorageTeamId(shard as u64 + 1)
        }
    };
    for (version, mut commits) in by_version {
        let stream: Vec<&(Mutation, BTreeSet<StorageTeamId>)> = merged
            .range((version, 0)..=(version, u32::MAX))
            .map(|(_, v)| v)
            .collect();
        // The commits of one batch come in an order the clients cannot see:
        // match each by its unique first mutation.
        let mut at = 0;
        while at < stream.len() {
            let Some(i) = commits
                .iter()
                .position(|c| pieces(&c[0])[0].1 == stream[at].0)
            else {
                bail!(
                    "{version}: {:?} starts no acknowledged commit",
                    stream[at].0
                );
            };
            for (shard, piece) in commits.remove(i).iter().flat_map(pieces) {
                let (got, teams) = stream
                    .get(at)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("{version}: stream ends early"))?;
                ensure!(*got == piece, "{version}: got {got:?}, expected {piece:?}");
                let team = team_of_shard(shard, version);
                ensure!(
                    teams == &BTreeSet::from([team]),
                    "{version}: {piece:?} went to {teams:?}, not {team}"
                );
                at += 1;
            }
        }
        ensure!(
            commits.is_empty(),
            "{version}: acknowledged commits missing from the stream"
        );
    }
    // The move itself: at its version, the private team of every server,
    // since each keeps the whole shard map.
    let (got, teams) = &merged[&(move_version, 1)];
    ensure!(*got == mv);
    let expected: BTreeSet<StorageTeamId> = local
        .cluster
        .storage_servers
        .iter()
        .map(|s| StorageTeamId(s.private_team))
        .collect();
    ensure!(*teams == expected, "the shard move reached {teams:?}");
    Ok(local.stop().await?)
}

/// What happened to each commit a client sent.
#[derive(Default)]
struct Outcomes {
    acked: Vec<(Version, Bytes)>,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tlog_killed_mid_commit_never_loses_an_acknowledged_commit() -> Result<()> {
    let seed = seed_from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let mut local = LocalCluster::start(exe, dir.path(), &spec()).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (client, outcomes, progress) = (client.clone(), outcomes.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            // Commit until a failure shows the TLog is gone (it takes the
            // proxies' whole retry window for a TLog).
            for n in 0.. {
                let key = Bytes::from(format!("{}-c{c}-{n}", (b'a' + (n % 18) as u8) as char));
                let set = Mutation::SetValue {
                    key: key.clone(),
                    value: Bytes::from_static(b"v"),
                };
                let result = client.commit(vec![set]).await;
                let failed = {
                    let mut o = outcomes.lock().unwrap();
                    match result {
                        Ok(version) => o.acked.push((version, key)),
                        Err(_) => o.failed += 1,
                    }
                    o.failed > 0
                };
                progress.notify_one();
                if failed {
                    return;
                }
            }
        }));
    }
    let victim = rng.random_range(0..cluster.tlogs.len());
    let target = rng.random_range(20..150);
    loop {
        if outcomes.lock().unwrap().acked.len() >= target {
            break;
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), progress.notified()).await?;
    }
    local.tlogs[victim].take().expect("running").kill9().await?;
    for task in tasks {
        task.await?;
    }
    local.tlogs[victim] = Some(local.start_tlog(victim).await?);

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    ensure!(
        outcomes.failed > 0,
        "commits kept succeeding without tlog {victim}"
    );
    let last_acked = outcomes
        .acked
        .iter()
        .map(|(v, _)| *v)
        .max()
        .expect("commits were acked");
    let transport = cluster.client_config()?;
    let tlogs: Vec<RpcClient> = futures::future::try_join_all(
        cluster
            .tlogs
            .iter()
            .map(|t| RpcClient::connect(t.address, transport.clone())),
    )
    .await?;
    for (i, tlog) in tlogs.iter().enumerate() {
        let durable = tlog.status().await?.durable_version;
        ensure!(
            durable >= last_acked,
            "tlog {i} holds {durable}, below acknowledged {last_acked}"
        );
    }
    // Every acknowledged commit is on every TLog of its team, restarted one included.
    let mut by_team: BTreeMap<StorageTeamId, Vec<(Version, Bytes)>> = BTreeMap::new();
    for (version, key) in outcomes.acked {
        by_team
            .entry(StorageTeamId(shard_of(&key) as u64 + 1))
            .or_default()
            .push((version, key));
    }
    for (team, expected) in by_team {
        for index in tlogs_for_team(team, cluster.tlogs.len(), cluster.replication) {
            let entries = read_team_entries(&tlogs[index], team, Version(1), last_acked).await?;
            let present: BTreeSet<(Version, Bytes)> = entries
                .into_iter()
                .filter_map(|e| match e {
                    BlockEntry::Message(m) => match m.mutation {
                        Mutation::SetValue { key, .. } => Some((m.version, key)),
                        Mutation::ClearRange { .. } | Mutation::AppendIfFits { .. } => None,
                    },
                    BlockEntry::EmptyVersion { .. } => None,
                })
                .collect();
            for commit in &expected {
                ensure!(
                    present.contains(commit),
                    "tlog {index} lost acknowledged {commit:?} of {team}"
                );
            }
        }
    }
    Ok(local.stop().await?)
}
