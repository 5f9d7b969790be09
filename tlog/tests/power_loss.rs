//! The TLog service over the crash-simulating memory store: a failed sync
//! poisons it (never retried), and after a simulated power loss, where
//! unsynced pages persist in any order or not at all, every acknowledged
//! commit is recovered exactly once, in order.
//!
//! `TEAMLOG_SEED` reproduces a run (the seed is printed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proto::clock::SystemClock;
use proto::rpc::{PeekRequest, RegisterTeamRequest, TLogCommitRequest, TeamBlockData};
use proto::{
    BlockEntry, Mutation, StorageTeamId, Subsequence, TeamBlock, TeamBlockBuilder, Version,
};
use rand::{Rng, SeedableRng};
use tlog::engine::{CoreConfig, CoreError};
use tlog::log::LogConfig;
use tlog::mem_store::MemStore;
use tlog::server::{TLogConfig, TLogService};

const TEAM: StorageTeamId = StorageTeamId(1);
const ROUNDS: usize = 20;

fn commit(prev: Version, version: Version, key: &str) -> TLogCommitRequest {
    let mut block = TeamBlockBuilder::new(TEAM);
    let mutation = Mutation::SetValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
    };
    block.push(version, Subsequence(1), &mutation).unwrap();
    TLogCommitRequest {
        prev_version: prev,
        version,
        known_committed_version: Version::ZERO,
        teams: vec![TeamBlockData {
            team: TEAM,
            data: block.finish(),
        }],
    }
}

/// Opens the TLog over `store` and registers the test's team, as the
/// proxies register every team at start (again after a restart: a
/// registration is idempotent).
async fn open(store: Arc<MemStore>) -> TLogService<MemStore> {
    let service = TLogService::open(store, &config(), Arc::new(SystemClock::default())).unwrap();
    service
        .register_team(RegisterTeamRequest {
            team: TEAM,
            servers: Vec::new(),
        })
        .await
        .unwrap();
    service
}

fn config() -> TLogConfig {
    TLogConfig {
        log: LogConfig {
            segment_size: 32 << 10,
        },
        core: CoreConfig {
            memory_budget: 16 << 10,
            ..CoreConfig::default()
        },
        ..TLogConfig::default()
    }
}

async fn read_all(service: &TLogService<MemStore>, through: Version) -> BTreeMap<Version, Bytes> {
    let mut out = BTreeMap::new();
    let mut next = Version(1);
    while next <= through {
        let peek = PeekRequest {
            team: TEAM,
            begin: next,
            max_bytes: 64 << 10,
            timeout_ms: 0,
        };
        let reply = service.peek(peek).await.unwrap();
        for data in reply.blocks {
            for entry in TeamBlock::parse(data).unwrap().entries() {
                let BlockEntry::Message(m) = entry else {
                    continue;
                };
                let Mutation::SetValue { key, .. } = m.mutation else {
                    panic!()
                };
                assert!(
                    out.insert(m.version, key).is_none(),
                    "{} delivered twice",
                    m.version
                );
            }
        }
        assert!(reply.end > next, "peek made no progress at {next}");
        next = reply.end;
    }
    out
}

/// Polls a condition until it holds, failing after a deadline.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_sync_failure_and_power_loss() {
    let seed: u64 = std::env::var("TEAMLOG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed} (set TEAMLOG_SEED to reproduce)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = Arc::new(MemStore::new());
    let mut acknowledged: BTreeMap<Version, Bytes> = BTreeMap::new();

    for round in 0..ROUNDS {
        let service = open(store.clone()).await;
        let durable = service.status().durable_version;
        let recovered = read_all(&service, durable).await;
        for (version, key) in &acknowledged {
            assert_eq!(
                recovered.get(version),
                Some(key),
                "round {round}: acknowledged {version} lost"
            );
        }
        acknowledged = recovered;

        let chain = Arc::new(Mutex::new(durable));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let target = rng.random_range(1..300usize);
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let (service, chain, acked) = (service.clone(), chain.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let (prev, version) = {
                        let mut last = chain.lock().unwrap();
                        let prev = *last;
                        *last = prev.next();
                        (prev, *last)
                    };
                    let key = format!("r{round}-w{worker}-{n}");
                    match service.commit(commit(prev, version, &key)).await {
                        Ok(v) => {
                            assert!(acked.lock().unwrap().insert(v, Bytes::from(key)).is_none())
                        }
                        Err(CoreError::Poisoned) => return,
                        Err(e) => panic!("unexpected commit error {e}"),
                    }
                }
            }));
        }
        wait_until("enough commits are acknowledged", || {
            acked.lock().unwrap().len() >= target
        })
        .await;
        store.fail_next_sync();
        wait_until("the tlog is poisoned", || service.status().poisoned).await;
        for task in tasks {
            task.await.unwrap();
        }
        // Poisoned for good: the sync is never retried, commits are refused.
        let next = chain.lock().unwrap().next();
        let refused = service
            .commit(commit(Version(next.0 - 1), next, "late"))
            .await;
        assert_eq!(refused, Err(CoreError::Poisoned));
        drop(service);
        store.crash(rng.random());
        acknowledged.extend(std::mem::take(&mut *acked.lock().unwrap()));
    }
}

#[tokio::test]
async fn a_commit_larger_than_a_segment_is_refused_and_poisons_nothing() {
    let service = open(Arc::new(MemStore::new())).await;
    let mut huge = commit(Version(0), Version(1), "k");
    let mut block = TeamBlockBuilder::new(TEAM);
    let mutation = Mutation::SetValue {
        key: Bytes::from_static(b"big"),
        value: Bytes::from(vec![b'x'; 64 << 10]),
    };
    block.push(Version(1), Subsequence(1), &mutation).unwrap();
    huge.teams[0].data = block.finish();
    assert!(matches!(
        service.commit(huge).await,
        Err(CoreError::CommitTooLarge { .. })
    ));
    // The same version, small enough, is taken: nothing was appended, and
    // the TLog is not poisoned.
    assert_eq!(
        service.commit(commit(Version(0), Version(1), "k")).await,
        Ok(Version(1))
    );
    assert_eq!(
        service.commit(commit(Version(1), Version(2), "k")).await,
        Ok(Version(2))
    );
}

#[tokio::test]
async fn a_corrupt_spilled_record_is_reported_to_the_peek_not_read_for_ever() {
    use tlog::store::LogStore;

    let store = MemStore::new();
    let service = open(Arc::new(store.clone())).await;
    // Well past the 16 KiB memory budget, so the first versions are read
    // back from the log.
    for v in 1..=600u64 {
        service
            .commit(commit(Version(v - 1), Version(v), &format!("key-{v:04}")))
            .await
            .unwrap();
    }
    let first = *store.list().unwrap().first().expect("a segment");
    let mut byte = [0u8; 1];
    let offset = 200;
    store.read_at(first, offset, &mut byte).unwrap();
    store.write_at(first, offset, &[byte[0] ^ 0x5a]).unwrap();
    store.sync(first).unwrap();

    let peek = service.peek(PeekRequest {
        team: TEAM,
        begin: Version(1),
        max_bytes: 1 << 20,
        timeout_ms: 0,
    });
    match tokio::time::timeout(Duration::from_secs(30), peek).await {
        Ok(Err(CoreError::Corrupt(reason))) => assert!(reason.contains("corrupt"), "{reason}"),
        Ok(other) => panic!("expected corruption, got {:?}", other.map(|r| r.end)),
        Err(_) => panic!("the peek never came back"),
    }
}
