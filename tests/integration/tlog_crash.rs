//! kill -9 a real `teamlog tlog` again and again while clients commit, and
//! check that every acknowledged commit survives: peekable, in version order,
//! exactly once.
//!
//! `TEAMLOG_KILLS` sets the number of kills (default 50); `TEAMLOG_SEED`
//! reproduces a run (the seed is printed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use bytes::Bytes;
use proto::transport::RpcClient;
use proto::{Mutation, StorageServerId, StorageTeamId, Version};
use rand::{Rng, SeedableRng};
use testkit::tlog_stream::{read_team, set_commit, VersionChain};
use testkit::ChildProcess;
use testkit::{kills_from_env, seed_from_env};

const TEAMS: [StorageTeamId; 3] = [StorageTeamId(1), StorageTeamId(2), StorageTeamId(3)];
const COMMITTERS: usize = 4;
/// Every fourth commit carries a value this large, so kills also land while
/// large frames arrive in buffers of their own and large records are
/// written in parts.
const LARGE_VALUE: usize = 40 << 10;

/// What one version was sent with, and whether the TLog acknowledged it.
#[derive(Clone, Debug)]
struct Sent {
    team: StorageTeamId,
    key: Bytes,
    value: Bytes,
    acknowledged: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_repeated_kill_9() -> Result<()> {
    let kills = kills_from_env(50);
    let seed = seed_from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    // Small segments so recovery crosses many segment boundaries.
    let args = ["--segment-size", "262144", "--memory-budget", "1048576"];
    // Every version ever sent per round; a later round may reuse a version
    // whose commit was lost, so only the latest sending counts.
    let mut history: BTreeMap<Version, Sent> = BTreeMap::new();
    let mut verified_through = Version::ZERO;

    for round in 0..=kills {
        let tlog = ChildProcess::spawn(exe, dir.path(), &args).await?;
        let client = RpcClient::connect(tlog.addr, Default::default()).await?;
        for team in TEAMS {
            client
                .register_team(proto::rpc::RegisterTeamRequest {
                    team,
                    servers: vec![StorageServerId(1)],
                })
                .await?;
        }
        let durable = client.status().await?.durable_version;
        // Versions above the recovered end were lost with the crash: never acknowledged.
        let lost: Vec<Version> = history.range(durable.next()..).map(|(v, _)| *v).collect();
        for version in lost {
            let sent = history.remove(&version).expect("listed above");
            if sent.acknowledged {
                bail!("round {round}: acknowledged {version} is above the recovered end {durable}");
            }
        }
        verify(&client, &history, verified_through, durable).await?;
        verified_through = durable;
        for team in TEAMS {
            client
                .pop(proto::rpc::PopRequest {
                    team,
                    server: StorageServerId(1),
                    version: durable.next(),
                })
                .await?;
        }
        if round == kills {
            tlog.stop().await?;
            break;
        }

        let chain = Arc::new(VersionChain::starting_at(durable));
        let sent = Arc::new(Mutex::new(BTreeMap::new()));
        let acked = Arc::new(tokio::sync::Notify::new());
        let target = rng.random_range(20..200usize);
        let mut tasks = Vec::new();
        for worker in 0..COMMITTERS {
            let (client, chain, sent, acked) =
                (client.clone(), chain.clone(), sent.clone(), acked.clone());
            let large = Bytes::from(vec![b'L'; LARGE_VALUE]);
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let pair = chain.next_pair();
                    let team = TEAMS[(pair.1 .0 % 3) as usize];
                    let key = Bytes::from(format!("r{round}-w{worker}-{n}"));
                    let value = if n % 4 == 3 {
                        large.clone()
                    } else {
                        Bytes::from_static(b"v")
                    };
                    n += 1;
                    let request = set_commit(pair, team, key.clone(), value.clone(), &TEAMS);
                    let record = Sent {
                        team,
                        key,
                        value,
                        acknowledged: false,
                    };
                    sent.lock().unwrap().insert(pair.1, record);
                    if client.tlog_commit(request).await.is_err() {
                        return;
                    }
                    sent.lock()
                        .unwrap()
                        .get_mut(&pair.1)
                        .expect("inserted")
                        .acknowledged = true;
                    acked.notify_one();
                }
            }));
        }
        // Kill once `target` commits are acknowledged: a condition, not a timer.
        loop {
            let count = sent
                .lock()
                .unwrap()
                .values()
                .filter(|s: &&Sent| s.acknowledged)
                .count();
            if count >= target {
                break;
            }
            tokio::time::timeout(std::time::Duration::from_secs(30), acked.notified()).await?;
        }
        tlog.kill9().await?;
        for task in tasks {
            task.await?;
        }
        history.extend(std::mem::take(&mut *sent.lock().unwrap()));
    }
    Ok(())
}

/// Every acknowledged version in (from, through] is present on its team
/// exactly once with what was sent; every team has every version.
async fn verify(
    client: &RpcClient,
    history: &BTreeMap<Version, Sent>,
    from: Version,
    through: Version,
) -> Result<()> {
    for team in TEAMS {
        let versions = read_team(client, team, from.next(), through).await?;
        let expected: Vec<Version> = history
            .range(from.next()..=through)
            .map(|(v, _)| *v)
            .collect();
        let got: Vec<Version> = versions.keys().copied().collect();
        if got != expected {
            bail!("{team}: versions {got:?} != sent and recovered {expected:?}");
        }
        for (version, mutations) in versions {
            let sent = &history[&version];
            let want: Vec<Mutation> = if sent.team == team {
                vec![Mutation::SetValue {
                    key: sent.key.clone(),
                    value: sent.value.clone(),
                }]
            } else {
                Vec::new()
            };
            if mutations != want {
                bail!("{team} at {version}: {mutations:?} != {want:?}");
            }
        }
    }
    // Versions in (from, through] that were acknowledged but are absent
    // would have been caught above: `expected` lists every sent version.
    Ok(())
}
