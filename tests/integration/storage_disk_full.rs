//! A storage server's flushes into its engine. One whose engine finds no
//! room goes on applying into memory (up to twice its window), reports
//! itself stalled, keeps everything, and flushes on by itself once there is
//! room again. One whose flush is slow to sync holds up nothing else of
//! its process meanwhile.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use proto::disk_writes::DiskWrites;
use proto::rpc::{RegisterTeamRequest, StorageStatusReply};
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::{RpcClient, StorageServerId, StorageTeamId, Version};
use storage_server::engine::{EngineError, KvEngine, WriteBatch};
use storage_server::generations::LogDiscovery;
use storage_server::mem_engine::MemEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use testkit::tlog_stream::{set_commit, VersionChain};
use testkit::InProcessTLog;

const TEAM: StorageTeamId = StorageTeamId(1);
const PRIVATE: StorageTeamId = StorageTeamId(10_100);
const SERVER: StorageServerId = StorageServerId(100);

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:04}"))
}

/// Waits until the server's status satisfies `done`, or fails at the deadline.
async fn status_until<E: KvEngine>(
    service: &StorageService<E>,
    what: &str,
    done: impl Fn(&StorageStatusReply) -> bool,
) -> Result<StorageStatusReply> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = service.status().await;
        if done(&status) {
            return Ok(status);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server of team `TEAM` alone, reading `tlog`, flushing every version.
fn start_server<E: KvEngine>(
    engine: Arc<E>,
    tlog: &InProcessTLog,
    engine_writes: DiskWrites,
) -> Result<StorageService<E>> {
    Ok(StorageService::start(
        engine,
        StorageConfig {
            id: SERVER,
            private_team: PRIVATE,
            teams: BTreeSet::from([TEAM]),
            shards: ShardMap::new([(Bytes::new(), ShardAssignment::to(TEAM))])?,
            // The sequencer is asked only for status, which this does not use.
            logs: LogDiscovery::Pinned {
                tlogs: vec![tlog.addr],
                sequencer: tlog.addr,
            },
            replication: 1,
            window: WindowConfig {
                max_versions: 5,
                max_bytes: 1 << 20,
            },
            read_wait: Duration::from_secs(1),
            transport: Default::default(),
            team_servers: Default::default(),
            move_bytes_per_second: None,
            engine_writes,
        },
    )?)
}

/// Registers the server's teams on `tlog`.
async fn register(client: &RpcClient) -> Result<()> {
    for team in [TEAM, PRIVATE] {
        client
            .register_team(RegisterTeamRequest {
                team,
                servers: vec![SERVER],
            })
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_stalls_flushes_until_there_is_room() -> Result<()> {
    let tlog = InProcessTLog::start().await?;
    let client = tlog.client().await?;
    register(&client).await?;
    let engine = Arc::new(MemEngine::new());
    let service = start_server(engine.clone(), &tlog, DiskWrites::default())?;
    let chain = VersionChain::default();
    let commit = async |i: u64| {
        let request = set_commit(chain.next_pair(), TEAM, key(i), Bytes::from("v"), &[]);
        client.tlog_commit(request).await
    };

    for i in 1..=20 {
        commit(i).await?;
    }
    status_until(&service, "flushed", |s| s.durable_version >= Version(10)).await?;

    engine.set_full(true);
    for i in 21..=40 {
        commit(i).await?;
    }
    let stalled = status_until(&service, "stalled with everything applied", |s| {
        s.stalled.is_some() && s.applied_version >= Version(40)
    })
    .await?;
    ensure!(stalled.stopped.is_none(), "a full disk stopped the server");
    let durable_while_full = stalled.durable_version;
    ensure!(engine.get(&key(40))?.is_none(), "written to a full engine");

    engine.set_full(false);
    let resumed = status_until(&service, "flushing again", |s| {
        s.stalled.is_none() && s.durable_version >= Version(35)
    })
    .await?;
    ensure!(resumed.durable_version > durable_while_full);
    for i in 1..=resumed.durable_version.0 {
        ensure!(
            engine.get(&key(i))?.is_some(),
            "key {i} is missing from the engine"
        );
    }
    tlog.stop().await;
    Ok(())
}

/// An engine whose writes, once armed, wait until the test opens the gate
/// (or a bound passes): a flush slow to sync.
#[derive(Default)]
struct GatedEngine {
    inner: MemEngine,
    gate: Mutex<Gate>,
    opened: Condvar,
}

#[derive(Default)]
struct Gate {
    armed: bool,
    waiting: bool,
    /// A write waited out the bound: nothing opened the gate meanwhile.
    waited_out: bool,
}

/// Long enough for the test's steps, short enough that a runtime held by a
/// write fails the test instead of hanging it.
const GATE_BOUND: Duration = Duration::from_secs(15);

impl GatedEngine {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arm(&self) {
        self.gate().armed = true;
    }

    fn open(&self) {
        self.gate().armed = false;
        self.opened.notify_all();
    }
}

impl KvEngine for GatedEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.inner.get(key)
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        self.inner.range(begin, end, limit, reverse)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut gate = self.gate();
        if gate.armed {
            gate.waiting = true;
            let (mut gate, wait) = self
                .opened
                .wait_timeout_while(gate, GATE_BOUND, |g| g.armed)
                .unwrap_or_else(|e| e.into_inner());
            gate.waiting = false;
            gate.waited_out = wait.timed_out();
        }
        self.inner.write(batch)
    }

    fn metadata(&self, name: &str) -> Result<Option<Bytes>, EngineError> {
        self.inner.metadata(name)
    }

    fn max_key_len(&self) -> usize {
        self.inner.max_key_len()
    }
}

/// One runtime thread, shared by the server and an in-process TLog, as the
/// roles of a `teamlog server` share theirs: while a flush waits for its
/// sync, the TLog goes on taking commits and the server answers.
#[tokio::test(flavor = "current_thread")]
async fn a_flush_waiting_for_its_sync_holds_up_nothing_else_on_the_runtime() -> Result<()> {
    let tlog = InProcessTLog::start().await?;
    let client = tlog.client().await?;
    register(&client).await?;
    let engine = Arc::new(GatedEngine::default());
    let service = start_server(engine.clone(), &tlog, DiskWrites::BlockingPool)?;
    let chain = VersionChain::default();
    let commit = async |i: u64| {
        let request = set_commit(chain.next_pair(), TEAM, key(i), Bytes::from("v"), &[]);
        client.tlog_commit(request).await
    };
    for i in 1..=10 {
        commit(i).await?;
    }
    status_until(&service, "flushed", |s| s.durable_version >= Version(5)).await?;

    engine.arm();
    commit(11).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        {
            let gate = engine.gate();
            ensure!(
                !gate.waited_out,
                "the flush's write held the runtime until the gate's bound passed"
            );
            if gate.waiting {
                break;
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no flush reached the gate"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let durable_before = service.durable_version();
    for i in 12..=20 {
        commit(i).await?;
    }
    let status = service.status().await;
    {
        let gate = engine.gate();
        ensure!(
            gate.waiting && !gate.waited_out,
            "commits and status waited for the flush's write"
        );
    }
    ensure!(status.durable_version == durable_before);

    engine.open();
    status_until(&service, "flushed the rest", |s| {
        s.durable_version >= Version(15)
    })
    .await?;
    ensure!(!engine.gate().waited_out);
    ensure!(engine.get(&key(11))?.is_some());
    tlog.stop().await;
    Ok(())
}
