//! The storage server runtime: consumes its teams through the mutable team
//! cursor, applies into the versioned store, flushes and pops, and serves
//! reads at a version.
//!
//! ```text
//!  TLogs ─▶ MutableTeamPeekCursor(private team + team set, from durable + 1)
//!            │ ordered by (version, subsequence)
//!            ├─ user mutations ──▶ VersionedStore (MVCC window ─flush─▶ heed)
//!            └─ private team ────▶ Ownership (team sets, shard map)
//!  after a flush: pop every team up to the durable version
//!  reads: wait for the version (briefly) ─▶ ownership ─▶ store.get / get_range
//! ```
//!
//! Restarts resume from the durable version: the team set and shard map are
//! persisted with each flush as of the flushed version, so nothing is applied
//! twice and nothing is skipped. When the log no longer holds what comes
//! after it (the data directory was lost), the server copies its teams from
//! teammates first (`rebuild`); the loop itself is in `apply_loop`.
//!
//! Metrics (through the `metrics` facade, a no-op unless the process installs
//! a recorder): per applied batch `teamlog_storage_applied_version`,
//! `teamlog_storage_mutations_applied_total` and
//! `teamlog_storage_mutation_bytes_applied_total`; per flush
//! `teamlog_storage_durable_version`; per read
//! `teamlog_storage_reads_total{kind}`, `teamlog_storage_read_errors_total{kind}`
//! and `teamlog_storage_read_latency_seconds{kind}` (kind `get`,
//! `get_range`, or `copy` for a move's or rebuild's read, which yields to
//! the others: `teamlog_storage_copy_yields_total` counts its waits); once
//! a second, after asking the sequencer for the committed
//! version, `teamlog_storage_lag_versions` (committed − applied) and
//! `teamlog_storage_window_bytes`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use cluster::{ClusterFile, ClusterFileError};
use cursor::{
    CursorError, GenerationSource, MutableTeamPeekCursor, Ordered, PeekCursor, SourceError,
    TLogSource, TeamSet,
};
use proto::disk_writes::DiskWrites;
use proto::rpc::{ErrorCode, ErrorReply, Message, StorageStatusReply};
use proto::shard_map::ShardMap;
use proto::signal::Signal;
use proto::system_keys::parse_key_servers_key;
use proto::team_set::parse_team_set_key;
use proto::transport::{ClientConfig, Responder, Service};
use proto::{is_system_key, Mutation, StorageServerId, StorageTeamId, Version};

use crate::adding::AddingRanges;
use crate::delivery::DeliveryOrder;
use crate::engine::{EngineError, KvEngine, WriteBatch};
use crate::generations::{Generations, LogDiscovery};
use crate::ownership::{ranges_left, Ownership};
use crate::sample::WriteSample;
use crate::versioned::{PreparedFlush, StoreError, VersionedStore, WindowConfig};

mod apply_loop;
mod copy_progress;
mod fetch;
mod lazy_copy;
mod reads;
mod rebuild;
mod shard_metrics;
mod watch;

const META_TEAM_SET: &str = "team_set";
const META_SHARD_MAP: &str = "shard_map";
/// The ranges being added and the clears still due, as of the durable
/// version (`AddingRanges::encode`).
const META_ADDING: &str = "adding";
/// The buffers of ranges being added may hold this part of the window's
/// byte budget before they are dropped (see `adding`).
const ADDING_BUFFER_SHARE: u64 = 4;
/// How long a status request waits for the sequencer's committed version.
const STATUS_SEQUENCER_WAIT: Duration = Duration::from_secs(1);
/// The most pairs one range read returns.
pub const MAX_RANGE_LIMIT: u32 = 10_000;
/// The most key and value bytes one range read answers with (plus one
/// pair); the client pages on. Well under the transport's frame cap.
pub const MAX_RANGE_REPLY_BYTES: usize = 4 << 20;
/// What a reply may need beyond its keys and values: the pair that
/// crosses [`MAX_RANGE_REPLY_BYTES`], and the encoding.
const REPLY_SLACK: usize = 1 << 20;
/// The most bytes one range's entry of a shard-metrics reply takes: two
/// split keys and the counts.
const SHARD_METRICS_BOUND: usize = 2 * proto::MAX_KEY_BYTES + 64;

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub id: StorageServerId,
    pub private_team: StorageTeamId,
    /// The team set to start with when the engine holds none (a new server).
    pub teams: BTreeSet<StorageTeamId>,
    /// The shard map to start with when the engine holds none.
    pub shards: ShardMap,
    /// Where the TLogs and the sequencer are.
    pub logs: LogDiscovery,
    pub replication: usize,
    pub window: WindowConfig,
    /// How long a read at a version not yet applied waits before
    /// `future_version`.
    pub read_wait: Duration,
    /// How the server calls the sequencer, the TLogs and other servers.
    pub transport: ClientConfig,
    /// The servers of every team: a rebuild copies from its teammates, and
    /// a range being added from a server of its source teams.
    pub team_servers: BTreeMap<StorageTeamId, Vec<(StorageServerId, SocketAddr)>>,
    /// The most stored bytes (`proto::rpc::stored_size`) a second the copy of
    /// ranges being added reads from their sources (`None` or 0: as fast
    /// as they answer).
    pub move_bytes_per_second: Option<u64>,
    /// Where flushes and a rebuild's writes run.
    pub engine_writes: DiskWrites,
}

impl StorageConfig {
    /// Server `id` of `cluster`: its teams, their other servers and the
    /// shard map as the cluster file gives them, reading the log through
    /// `logs`.
    pub fn for_server(
        cluster: &ClusterFile,
        id: u64,
        logs: LogDiscovery,
        window: WindowConfig,
    ) -> Result<StorageConfig, ClusterFileError> {
        let entry = cluster
            .storage_servers
            .iter()
            .find(|s| s.id == id)
            .ok_or(ClusterFileError::NoSuchStorageServer(id))?;
        let teams_of_this_server = || cluster.teams.iter().filter(|t| t.servers.contains(&id));
        let address_of = |server: u64| {
            let entry = cluster.storage_servers.iter().find(|s| s.id == server)?;
            Some((StorageServerId(server), entry.address))
        };
        let team_servers = cluster
            .teams
            .iter()
            .map(|t| {
                let servers = t.servers.iter().filter_map(|s| address_of(*s));
                (StorageTeamId(t.id), servers.collect())
            })
            .collect();
        Ok(StorageConfig {
            id: StorageServerId(id),
            private_team: StorageTeamId(entry.private_team),
            teams: teams_of_this_server()
                .map(|t| StorageTeamId(t.id))
                .collect(),
            shards: cluster.shard_map()?,
            logs,
            replication: cluster.replication,
            window,
            read_wait: Duration::from_secs(1),
            transport: cluster.client_config()?,
            team_servers,
            move_bytes_per_second: Some(
                cluster.distribution.unwrap_or_default().move_bytes_per_sec,
            ),
            engine_writes: DiskWrites::default(),
        })
    }
}

impl StorageConfig {
    /// The servers of `team` other than this one.
    fn others_of(&self, team: StorageTeamId) -> Vec<(StorageServerId, SocketAddr)> {
        let servers = self.team_servers.get(&team).into_iter().flatten();
        servers.filter(|(id, _)| *id != self.id).copied().collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored {what} is corrupt: {reason}")]
    CorruptMetadata { what: &'static str, reason: String },
}

struct Inner<E: KvEngine> {
    config: StorageConfig,
    store: RwLock<VersionedStore<E>>,
    ownership: Mutex<Ownership>,
    applied: Signal<Version>,
    generations: Generations,
    /// Set when applying stopped on an error no retry can fix.
    failed: Mutex<Option<String>>,
    /// Set while flushes fail for lack of room and are retried.
    stalled: Mutex<Option<String>>,
    /// Set while the server must copy its teams from teammates, or does:
    /// what it is doing. Reads are refused meanwhile, and the apply loop
    /// makes no cursor until the copy is done.
    rebuilding: Mutex<Option<String>>,
    /// The ranges this server is adding, and clears of ranges it gave away.
    /// Locked after the store and the ownership.
    adding: Mutex<AddingRanges>,
    /// Wakes the fetch of ranges being added when their state changed.
    adding_changed: Arc<tokio::sync::Notify>,
    copy_progress: Mutex<copy_progress::CopyProgress>,
    /// Foreground reads in flight, which copies yield to.
    lanes: lazy_copy::Lanes,
    /// Sampled user writes, for the data distributor. Locked last.
    write_sample: Mutex<WriteSample>,
    /// When the server started: the write sample's clock.
    started: tokio::time::Instant,
}

/// Why a flush did not happen.
enum FlushError {
    /// The engine had no room: the window keeps the versions and the flush
    /// is tried again.
    NoRoom(String),
    /// Anything else: the server stops applying.
    Failed(String),
}

/// While flushes find no room, the window may hold this many times its
/// configured bytes before the server stops fetching and only retries.
const STALLED_WINDOW_FACTOR: u64 = 2;
/// Waits between flush attempts while the engine has no room.
const NO_ROOM_RETRY_MIN: Duration = Duration::from_millis(100);
const NO_ROOM_RETRY_MAX: Duration = Duration::from_secs(2);

pub struct StorageService<E: KvEngine> {
    inner: Arc<Inner<E>>,
}

impl<E: KvEngine> Clone for StorageService<E> {
    fn clone(&self) -> Self {
        StorageService {
            inner: self.inner.clone(),
        }
    }
}

impl<E: KvEngine> StorageService<E> {
    /// Opens the store over `engine` and starts consuming from its durable
    /// version. Must run inside a tokio runtime.
    pub fn start(engine: Arc<E>, config: StorageConfig) -> Result<Self, StartError> {
        let store = VersionedStore::open(engine.clone(), config.window)?;
        let durable = store.durable_version();
        let unfinished_copy = rebuild::copy_unfinished(engine.as_ref())?;
        let teams = match engine.metadata(META_TEAM_SET).map_err(StoreError::from)? {
            Some(bytes) => {
                let set = TeamSet::decode(&bytes).map_err(|e| StartError::CorruptMetadata {
                    what: "team set",
                    reason: e.to_string(),
                })?;
                set.teams
            }
            None => config.teams.clone(),
        };
        let map = match engine.metadata(META_SHARD_MAP).map_err(StoreError::from)? {
            Some(bytes) => ShardMap::decode(&bytes).map_err(|e| StartError::CorruptMetadata {
                what: "shard map",
                reason: e.to_string(),
            })?,
            None => config.shards.clone(),
        };
        let buffer_limit = config.window.max_bytes / ADDING_BUFFER_SHARE;
        let mut adding = match engine.metadata(META_ADDING).map_err(StoreError::from)? {
            Some(bytes) => AddingRanges::decode(&bytes, durable, buffer_limit).map_err(|e| {
                StartError::CorruptMetadata {
                    what: "adding ranges",
                    reason: e.to_string(),
                }
            })?,
            None => AddingRanges::new(buffer_limit),
        };
        let ownership = Ownership::new(map, teams.clone(), durable);
        let (wanted, held) = ownership.ranges_now();
        adding.reconcile(durable, &wanted, &held, Vec::new());
        tracing::info!(server = %config.id, %durable, ?teams, "storage server resuming");
        let generations = Generations::new(
            config.logs.clone(),
            config.replication,
            config.transport.clone(),
            (config.id, config.private_team),
        );
        generations.route_teams(&teams);
        let inner = Arc::new(Inner {
            generations,
            applied: Signal::new(store.applied_version()),
            store: RwLock::new(store),
            ownership: Mutex::new(ownership),
            failed: Mutex::new(None),
            stalled: Mutex::new(None),
            rebuilding: Mutex::new(
                unfinished_copy.then(|| "a copy that did not finish starts over".to_owned()),
            ),
            adding: Mutex::new(adding),
            adding_changed: Arc::new(tokio::sync::Notify::new()),
            copy_progress: Mutex::default(),
            lanes: lazy_copy::Lanes::new(),
            write_sample: Mutex::new(WriteSample::new(config.id.0)),
            started: tokio::time::Instant::now(),
            config,
        });
        tokio::spawn(apply_loop::run_apply(Arc::downgrade(&inner)));
        tokio::spawn(fetch::run_fetch(Arc::downgrade(&inner)));
        tokio::spawn(run_lag_gauges(Arc::downgrade(&inner)));
        tokio::spawn(watch::run_core_state_watch(Arc::downgrade(&inner)));
        Ok(StorageService { inner })
    }

    pub fn applied_version(&self) -> Version {
        self.inner.applied.get()
    }

    pub fn durable_version(&self) -> Version {
        self.inner.store().durable_version()
    }

    pub async fn status(&self) -> StorageStatusReply {
        // Bounded, so a stuck sequencer does not make this server look dead.
        let committed = tokio::time::timeout(STATUS_SEQUENCER_WAIT, self.inner.committed_version())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (applied, durable, oldest, window_bytes) = {
            let store = self.inner.store();
            (
                store.applied_version(),
                store.durable_version(),
                store.oldest_readable(),
                store.window_bytes(),
            )
        };
        StorageStatusReply {
            server: self.inner.config.id,
            applied_version: applied,
            durable_version: durable,
            oldest_readable_version: oldest,
            committed_version: committed,
            window_bytes,
            teams: self
                .inner
                .ownership()
                .teams_at(applied.next())
                .into_iter()
                .collect(),
            stopped: self
                .inner
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            stalled: self.inner.stalled_reason(),
            rebuilding: self.inner.rebuilding(),
            adding: {
                let mut adding = self.inner.adding().status(durable);
                self.inner
                    .copy_progress()
                    .fill(&mut adding, tokio::time::Instant::now());
                adding
            },
            following_epoch: self.inner.generations.source().newest_epoch().unwrap_or(0),
        }
    }
}

impl<E: KvEngine> Service for StorageService<E> {
    fn reply_size_bound(&self, request: &Message) -> usize {
        match request {
            Message::GetRange(_) => MAX_RANGE_REPLY_BYTES + REPLY_SLACK,
            Message::GetValue(_) => REPLY_SLACK,
            // More ranges than allowed get a short refusal.
            Message::ShardMetrics(ranges) => {
                ranges.len().min(proto::rpc::MAX_SHARD_METRICS_RANGES) * SHARD_METRICS_BOUND
                    + REPLY_SLACK
            }
            _ => proto::transport::SMALL_REPLY_BOUND,
        }
    }

    fn handle(&self, request: Message, responder: Responder) {
        let service = self.clone();
        responder.reply_with(async move {
            match request {
                Message::GetValue(r) => Ok(Message::GetValueReply(service.get(r).await?)),
                Message::GetRange(r) => Ok(Message::GetRangeReply(service.get_range(r).await?)),
                Message::Status => Ok(Message::StorageStatus(service.status().await)),
                Message::ShardMetrics(ranges) => Ok(Message::ShardMetricsReply(
                    service.inner.shard_metrics(&ranges)?,
                )),
                other => Err(ErrorReply::new(
                    ErrorCode::UnknownMessage,
                    format!("a storage server does not serve {}", other.name()),
                )),
            }
        });
    }
}

impl<E: KvEngine> Inner<E> {
    /// The cluster's committed version, as the sequencer knows it.
    async fn committed_version(&self) -> Result<Version, proto::transport::RpcError> {
        let Some(sequencer) = self.generations.sequencer() else {
            return Err(proto::transport::RpcError::Remote {
                code: ErrorCode::Unavailable,
                message: "no sequencer known yet: the cluster is recovering".to_owned(),
                version: None,
            });
        };
        let reply = sequencer
            .call(|c| async move { c.call(Message::GetReadVersion).await })
            .await?;
        match reply {
            Message::GetReadVersionReply(r) => Ok(r.version),
            other => Err(proto::transport::RpcError::UnexpectedReply(other.name())),
        }
    }

    fn store(&self) -> RwLockReadGuard<'_, VersionedStore<E>> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `batch` into the engine, where `engine_writes` says.
    async fn write_engine(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let engine = self.store().engine().clone();
        self.config
            .engine_writes
            .run(move || engine.write(batch))
            .await
    }

    fn store_mut(&self) -> RwLockWriteGuard<'_, VersionedStore<E>> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    fn ownership(&self) -> MutexGuard<'_, Ownership> {
        self.ownership.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn adding(&self) -> MutexGuard<'_, AddingRanges> {
        self.adding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_sample(&self) -> MutexGuard<'_, WriteSample> {
        self.write_sample.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since the server started, by the runtime's clock.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn copy_progress(&self) -> MutexGuard<'_, copy_progress::CopyProgress> {
        self.copy_progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this server's teams own `[begin, end)` (`begin` alone when
    /// empty) at `version`.
    fn owns(&self, begin: &[u8], end: &[u8], version: Version) -> bool {
        if begin == end {
            self.ownership().owns_key(begin, version)
        } else {
            self.ownership().owns(begin, end, version)
        }
    }

    /// Writes what ranges being added and given away have due at the
    /// applied version, when it can be written at.
    fn write_adding_due(
        store: &mut VersionedStore<E>,
        adding: &mut AddingRanges,
    ) -> Result<(), String> {
        let at = store.applied_version();
        if !adding.has_work_due(at) || !store.writable_at_applied() {
            return Ok(());
        }
        for mutation in adding.take_due(at) {
            store
                .apply_at_applied(&mutation)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn stalled_reason(&self) -> Option<String> {
        self.stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records whether flushes find no room; says so in the log when that
    /// changes.
    fn set_stalled(&self, reason: Option<String>) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        match (&*stalled, &reason) {
            (None, Some(why)) => tracing::error!(
                server = %self.config.id,
                reason = %why,
                "flushes find no room; versions stay in memory and the flush is retried"
            ),
            (Some(_), None) => {
                tracing::info!(server = %self.config.id, "room again; flushing on")
            }
            _ => {}
        }
        *stalled = reason;
    }

    /// Whether the window is past what it may hold while flushes stall.
    fn window_over_stalled_cap(&self) -> bool {
        let cap = self
            .config
            .window
            .max_bytes
            .saturating_mul(STALLED_WINDOW_FACTOR);
        self.store().window_bytes() > cap
    }

    fn rebuilding(&self) -> Option<String> {
        self.rebuilding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_rebuilding(&self, what: Option<String>) {
        *self.rebuilding.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    /// Stops applying for `reason`; the first reason given is the one
    /// status keeps (a flush task and the loop that collects it may both
    /// report one failure).
    fn fail(&self, reason: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            tracing::error!(server = %self.config.id, %reason, "storage server stopped applying");
            *failed = Some(reason);
        }
    }

    /// Applies what the cursor fetched; returns the version now applied.
    fn apply_batch<C: PeekCursor>(
        &self,
        cursor: &mut C,
        order: &mut DeliveryOrder,
        complete_below: Version,
        known_committed: Version,
    ) -> Result<Version, String> {
        let mut store = self.store_mut();
        // A version the TLogs hold but no proxy has reported committed may
        // be rolled back by a recovery, and the read versions clients get
        // have not reached it: it stays in the window, readable, and out of
        // the engine.
        store.limit_flushes_to(known_committed);
        let mut ownership = self.ownership();
        let mut adding = self.adding();
        let mut write_sample = self.write_sample();
        let now_ms = self.now_ms();
        let (mut mutations, mut mutation_bytes) = (0u64, 0u64);
        for m in cursor.iter() {
            order.admit(m.version, m.subsequence, m.team)?;
            if ownership.pending_version().is_some_and(|v| v < m.version) {
                settle_changes(&mut ownership, &mut adding)?;
            }
            if m.team == self.config.private_team {
                let key = m.mutation.first_key();
                if let (Some(server), Mutation::SetValue { value, .. }) =
                    (parse_team_set_key(key), &m.mutation)
                {
                    if server == self.config.id {
                        let set = TeamSet::decode(value).map_err(|e| e.to_string())?;
                        ownership.set_teams(m.version, set.teams);
                    }
                } else if parse_key_servers_key(key).is_some()
                    || matches!(&m.mutation, Mutation::ClearRange { end, .. } if parse_key_servers_key(end).is_some())
                {
                    ownership
                        .shard_change(m.version, m.mutation)
                        .map_err(|e| e.to_string())?;
                }
                continue;
            }
            if !is_system_key(m.mutation.first_key()) {
                mutations += 1;
                mutation_bytes += m.mutation.payload_len() as u64;
                write_sample.record(now_ms, m.mutation.first_key(), m.mutation.payload_len());
                for piece in adding.route(m.version, m.mutation.clone()) {
                    store.apply(m.version, &piece).map_err(|e| e.to_string())?;
                }
                #[cfg(feature = "broken-variants")]
                if matches!(m.mutation, Mutation::AppendIfFits { .. })
                    && crate::broken::take_apply_twice()
                {
                    store
                        .apply(m.version, &m.mutation)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        metrics::counter!("teamlog_storage_mutations_applied_total").increment(mutations);
        metrics::counter!("teamlog_storage_mutation_bytes_applied_total").increment(mutation_bytes);
        settle_changes(&mut ownership, &mut adding)?;
        let applied = Version(complete_below.0.saturating_sub(1));
        if applied > store.applied_version() {
            store.set_applied(applied);
        }
        Self::write_adding_due(&mut store, &mut adding)?;
        if !adding.is_empty() {
            self.adding_changed.notify_one();
        }
        metrics::gauge!("teamlog_storage_applied_version").set(store.applied_version().0 as f64);
        Ok(store.applied_version())
    }

    /// Prepares a flush of old versions into the engine, with the team set
    /// and shard map as of the new durable version, when one is due and
    /// none is being written. Reads and applies go on while it is written
    /// ([`write_flush`](Self::write_flush)).
    fn prepare_flush(&self) -> Result<Option<PreparedFlush>, String> {
        let mut store = self.store_mut();
        // A range copied whole becomes ready once its last page is
        // durable: that flush is made as soon as it can be.
        let ready_at = self
            .adding()
            .flush_wanted(store.durable_version())
            .filter(|at| store.flushable_through(*at) == *at);
        if !store.should_flush() && ready_at.is_none() {
            return Ok(None);
        }
        let through = store.flush_target().max(ready_at.unwrap_or_default());
        let Some((map, teams)) = self.ownership().snapshot_at(through) else {
            return Err(format!("no shard map kept at {through}"));
        };
        let set = TeamSet::new(self.config.private_team, teams).encode();
        let adding = self.adding().encode(through);
        let metadata = [
            (META_TEAM_SET, set),
            (META_SHARD_MAP, map),
            (META_ADDING, adding),
        ];
        store
            .prepare_flush(through, &metadata)
            .map_err(|e| e.to_string())
    }

    /// Writes a prepared flush where `engine_writes` says, without the
    /// store's lock; returns the new durable version.
    async fn write_flush(&self, mut flush: PreparedFlush) -> Result<Version, FlushError> {
        let engine = self.store().engine().clone();
        let started = std::time::Instant::now();
        let (flush, written) = self
            .config
            .engine_writes
            .run(move || {
                let written = flush.write(engine.as_ref());
                (flush, written)
            })
            .await;
        metrics::histogram!("teamlog_storage_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            self.store_mut().abandon_flush(flush);
            return Err(match e {
                StoreError::Engine(e) if e.is_out_of_space() => FlushError::NoRoom(e.to_string()),
                e => FlushError::Failed(e.to_string()),
            });
        }
        let durable = self.store_mut().finish_flush(flush);
        self.ownership().forget_before(durable);
        self.adding().forget_durable(durable);
        Ok(durable)
    }

    /// Tells every TLog of every team this server reads that it no longer
    /// needs versions up to `durable`.
    async fn pop(&self, durable: Version) {
        let mut teams = self.ownership().teams_at(durable.next());
        teams.insert(self.config.private_team);
        self.generations.pop(self.config.id, &teams, durable).await;
    }

    /// Forgets what was applied above `version`, and what a version in
    /// progress left: a recovery ended the generation it came from there.
    fn rollback_to(&self, version: Version) -> Result<(), String> {
        let mut store = self.store_mut();
        let applied = store.applied_version();
        let to = version.min(applied);
        store.rollback_to(to).map_err(|e| e.to_string())?;
        let mut ownership = self.ownership();
        ownership.rollback_to(to);
        let mut adding = self.adding();
        adding.rollback_to(to);
        let (wanted, held) = ownership.ranges_now();
        adding.reconcile(to, &wanted, &held, Vec::new());
        drop((adding, ownership, store));
        self.adding_changed.notify_one();
        self.applied.set(to);
        if to < applied {
            tracing::warn!(server = %self.config.id, %version, %applied, "rolled back to the recovery version");
        }
        Ok(())
    }
}

/// Applies the queued shard-map changes of one version, and has the
/// ranges being added follow them: new destinations start copying, and
/// what left every team of this server is cleared after the change.
fn settle_changes(ownership: &mut Ownership, adding: &mut AddingRanges) -> Result<(), String> {
    let Some(version) = ownership.pending_version() else {
        return Ok(());
    };
    let (_, held_before) = ownership.ranges_now();
    ownership.settle().map_err(|e| e.to_string())?;
    let (wanted, held) = ownership.ranges_now();
    let given_away = ranges_left(&held_before, &held);
    adding.reconcile(version, &wanted, &held, given_away);
    Ok(())
}

/// Publishes the lag behind the committed version, which only the sequencer
/// knows, and the window's size.
async fn run_lag_gauges<E: KvEngine>(inner: Weak<Inner<E>>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let committed = inner.committed_version().await;
        let (applied, durable, window_bytes) = {
            let store = inner.store();
            (
                store.applied_version(),
                store.durable_version(),
                store.window_bytes(),
            )
        };
        metrics::gauge!("teamlog_storage_durable_version").set(durable.0 as f64);
        metrics::gauge!("teamlog_storage_window_bytes").set(window_bytes as f64);
        match committed {
            Ok(committed) => {
                let lag = committed.0.saturating_sub(applied.0);
                metrics::gauge!("teamlog_storage_lag_versions").set(lag as f64);
            }
            Err(e) => tracing::debug!(error = %e, "no committed version for the lag gauge"),
        }
    }
}
