//! `teamlog replay TRACE --path log`: the trace's commits straight into one
//! TLog (over a memory store or files) and consumed by one storage server
//! through its cursor, all in this process and without proxies, to measure
//! the log, cursor and apply path alone.
//!
//! ```text
//!  commit ─▶ version chain (≈ µs since start) ─tlog_commit (loopback)─▶ TLog  [mem | file]
//!                                                                       │ peek
//!  reads, visibility, scan ─▶ StorageService (heed, temp dir) ◀─cursor──┘
//! ```
//!
//! A commit's latency is until it is durable on the TLog; its visibility
//! lag is from then until the storage server has applied its version.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use proto::clock::SystemClock;
use proto::rpc::{
    ErrorCode, ErrorReply, GetRangeRequest, GetValueRequest, RegisterTeamRequest,
    TLogCommitRequest, TeamBlockData,
};
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::transport::{serve, RpcClient, ServerConfig, Service};
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, TeamBlockBuilder, Version};
use storage_server::generations::LogDiscovery;
use storage_server::heed_engine::HeedEngine;
use storage_server::server::{StorageConfig, StorageService, MAX_RANGE_LIMIT};
use storage_server::versioned::WindowConfig;
use tlog::mem_store::MemStore;
use tlog::server::{TLogConfig, TLogProcess, TLogService};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::replay::trace::TraceOp;
use crate::replay::{
    conclude, drive, CommitOutcome, Pacing, ReplayArgs, ReplayTarget, TLogStoreKind, WAIT_LIMIT,
};
use proto::key_after;

const TEAM: StorageTeamId = StorageTeamId(1);
const PRIVATE_TEAM: StorageTeamId = StorageTeamId(1_001);
const SERVER: StorageServerId = StorageServerId(1);

/// Hands out chained versions that follow the clock in microseconds, as a
/// sequencer's do, so the storage server's version window means time.
struct ClockVersions {
    started: Instant,
    last: Mutex<u64>,
}

impl ClockVersions {
    fn next_pair(&self) -> (Version, Version) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = *last;
        *last = (prev + 1).max(self.started.elapsed().as_micros() as u64);
        (Version(prev), Version(*last))
    }
}

struct LogTarget {
    tlog: RpcClient,
    storage: StorageService<HeedEngine>,
    versions: ClockVersions,
    /// The highest acknowledged version: the TLog acknowledges a version
    /// only once every earlier one is durable, so reads at it see them all.
    acknowledged: AtomicU64,
}

fn reply_kind(reply: &ErrorReply) -> String {
    reply.code.to_string()
}

impl LogTarget {
    fn read_version(&self) -> Version {
        Version(self.acknowledged.load(Ordering::Acquire)).max(self.storage.applied_version())
    }

    /// Retries while the server is still applying `version`.
    async fn until_applied<T, F>(&self, mut read: impl FnMut() -> F) -> Result<T, ErrorReply>
    where
        F: std::future::Future<Output = Result<T, ErrorReply>>,
    {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            match read().await {
                Err(e) if e.code == ErrorCode::FutureVersion && Instant::now() < deadline => {}
                other => return other,
            }
        }
    }
}

impl ReplayTarget for LogTarget {
    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'_, CommitOutcome> {
        async move {
            // A block holds payloads below 4 GiB; refuse before taking a
            // version, since a version taken must reach the TLog or every
            // later commit waits for it.
            if mutations
                .iter()
                .any(|m| m.payload_len() > u32::MAX as usize)
            {
                return CommitOutcome::Refused("payload_too_large".into());
            }
            let (prev, version) = self.versions.next_pair();
            let mut block = TeamBlockBuilder::new(TEAM);
            for (i, mutation) in mutations.iter().enumerate() {
                block
                    .push(version, Subsequence(i as u32 + 1), mutation)
                    .expect("ascending subsequences of one version, payloads below 4 GiB");
            }
            let request = TLogCommitRequest {
                prev_version: prev,
                version,
                // One TLog: what precedes a commit it takes is committed.
                known_committed_version: prev,
                teams: vec![TeamBlockData {
                    team: TEAM,
                    data: block.finish(),
                }],
            };
            match self.tlog.tlog_commit(request).await {
                Ok(_) => {
                    self.acknowledged.fetch_max(version.0, Ordering::AcqRel);
                    CommitOutcome::Acknowledged(version)
                }
                Err(proto::transport::RpcError::Remote { code, .. }) => {
                    CommitOutcome::Unknown(code.to_string())
                }
                Err(_) => CommitOutcome::Unknown("transport".into()),
            }
        }
        .boxed()
    }

    fn read<'a>(&'a self, op: &'a TraceOp) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let version = self.read_version();
            let read = match op {
                TraceOp::Get(key) => self
                    .storage
                    .get(GetValueRequest {
                        key: key.clone(),
                        version,
                    })
                    .await
                    .map(drop),
                TraceOp::GetRange { begin, end, limit } => self
                    .storage
                    .get_range(GetRangeRequest {
                        begin: begin.clone(),
                        end: end.clone(),
                        limit: *limit,
                        reverse: false,
                        version,
                        copy: false,
                    })
                    .await
                    .map(drop),
                TraceOp::Commit(_) => unreachable!("reads only"),
            };
            read.map_err(|e| reply_kind(&e))
        }
        .boxed()
    }

    fn visible(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<(), String>> {
        async move {
            self.until_applied(|| {
                self.storage.get(GetValueRequest {
                    key: key.clone(),
                    version,
                })
            })
            .await
            .map(drop)
            .map_err(|e| reply_kind(&e))
        }
        .boxed()
    }

    fn scan(&self) -> BoxFuture<'_, Result<(Version, BTreeMap<Bytes, Bytes>)>> {
        async move {
            let version = self.read_version();
            let mut pairs = BTreeMap::new();
            let mut begin = Bytes::new();
            loop {
                let request = GetRangeRequest {
                    begin: begin.clone(),
                    end: Bytes::from_static(b"\xff"),
                    limit: MAX_RANGE_LIMIT,
                    reverse: false,
                    version,
                    copy: false,
                };
                let page = self
                    .until_applied(|| self.storage.get_range(request.clone()))
                    .await
                    .map_err(|e| anyhow::anyhow!("scanning at {version}: {e}"))?;
                if let Some((last, _)) = page.pairs.last() {
                    begin = key_after(last);
                }
                pairs.extend(page.pairs);
                if !page.more {
                    return Ok((version, pairs));
                }
            }
        }
        .boxed()
    }
}

/// A TLog serving on loopback until `stop` is sent.
struct RunningTLog {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_tlog(kind: TLogStoreKind, dir: &std::path::Path) -> Result<RunningTLog> {
    let config = TLogConfig::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let (addr, served) = match kind {
        TLogStoreKind::Mem => {
            let service = TLogService::open(
                Arc::new(MemStore::new()),
                &config,
                Arc::new(SystemClock::default()),
            )?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let service: Arc<dyn Service> = Arc::new(service);
            let served = tokio::spawn(serve(listener, service, ServerConfig::default(), shutdown));
            (addr, served)
        }
        TLogStoreKind::File => {
            let tlog =
                TLogProcess::start("127.0.0.1:0".parse()?, &dir.join("tlog"), config).await?;
            (tlog.local_addr, tokio::spawn(tlog.serve(shutdown)))
        }
    };
    Ok(RunningTLog { addr, stop, served })
}

pub async fn run(args: ReplayArgs, pacing: Pacing) -> Result<()> {
    let temp = tempfile::tempdir_in(&args.dir).context("creating a data dir")?;
    let tlog = start_tlog(args.tlog, temp.path()).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    for team in [TEAM, PRIVATE_TEAM] {
        client
            .register_team(RegisterTeamRequest {
                team,
                servers: vec![SERVER],
            })
            .await?;
    }
    let engine = Arc::new(HeedEngine::open(&temp.path().join("storage"), 64 << 30)?);
    let storage = StorageService::start(
        engine,
        StorageConfig {
            id: SERVER,
            private_team: PRIVATE_TEAM,
            teams: BTreeSet::from([TEAM]),
            shards: ShardMap::new([(Bytes::new(), ShardAssignment::to(TEAM))])?,
            // The sequencer is asked only for status, which this does not use.
            logs: LogDiscovery::Pinned {
                tlogs: vec![tlog.addr],
                sequencer: tlog.addr,
            },
            replication: 1,
            window: WindowConfig::default(),
            read_wait: Duration::from_secs(1),
            transport: Default::default(),
            team_servers: Default::default(),
            move_bytes_per_second: None,
            engine_writes: Default::default(),
        },
    )?;
    let target = Arc::new(LogTarget {
        tlog: client,
        storage,
        versions: ClockVersions {
            started: Instant::now(),
            last: Mutex::new(0),
        },
        acknowledged: AtomicU64::new(0),
    });
    let store = match args.tlog {
        TLogStoreKind::Mem => "log (TLog over memory)",
        TLogStoreKind::File => "log (TLog over files)",
    };
    let result = drive(
        target.clone(),
        &args.trace,
        store,
        pacing,
        args.visibility_sample,
        !args.no_check,
    )
    .await;
    drop(target);
    let _ = tlog.stop.send(());
    tlog.served.await??;
    conclude(&args, &result?)
}
