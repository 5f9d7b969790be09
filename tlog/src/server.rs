//! The TLog runtime: runs the core's actions against the log, the network
//! and the clock.
//!
//! ```text
//!  RPC ─▶ TLogService ─lock─▶ TLogCore ─Append─▶ writer thread ─▶ SegmentLog
//!            │   ▲                ▲                   │
//!            │   └─ replies ──────┴── durable events ─┘
//!            └─ peeks: memory, long poll on a signal, or a disk scan on a blocking thread
//! ```
//!
//! Metrics (through the `metrics` facade, a no-op unless the process
//! installs a recorder): after each sync `teamlog_tlog_durable_version`,
//! `teamlog_tlog_known_committed_version`, `teamlog_tlog_memory_bytes` and
//! `teamlog_tlog_disk_bytes`; per commit `teamlog_tlog_commit_latency_seconds`
//! (received → durable); per peek `teamlog_tlog_peeks_total` and
//! `teamlog_tlog_peek_bytes_total`; once a second, per team,
//! `teamlog_tlog_team_bytes{team}` (bytes in the retained log) and
//! `teamlog_tlog_team_popped_version{team}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::DataDirLock;
use proto::clock::{Clock, SystemClock};
use proto::rpc::{
    ErrorCode, ErrorReply, Message, PeekReply, PeekRequest, TLogCommitRequest, TLogStatusReply,
    TeamBlockData, TeamStatus,
};
use proto::signal::Signal;
use proto::transport::{self, Responder, ServerConfig, Service};
use proto::{StorageTeamId, Version};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::engine::{
    finish_disk_peek, Action, CommitRequest, CoreConfig, CoreError, DiskPeek, LockOutcome,
    PeekPlan, PeekResult, PreparedCommit, TLogCore,
};
use crate::file_store::FileStore;
use crate::log::{LogConfig, LogError, LogPosition, LogReader, SegmentLog};
use crate::record::Record;
use crate::store::LogStore;
use crate::waiter::{error_reply, record_commit_latency, Outcome, Waiter};
use crate::writer::{
    spawn_writer, spawn_writer_task, CommandQueue, WriterCommand, WriterEvent, WriterPlacement,
};

#[derive(Clone, Debug, Default)]
pub struct TLogConfig {
    pub core: CoreConfig,
    pub log: LogConfig,
    pub server: ServerConfig,
    /// Where the writer runs; and, with it, where spilled data is read for
    /// peeks (blocking threads, or the runtime itself in a simulation).
    pub writer: WriterPlacement,
}

impl TLogConfig {
    /// A TLog that holds little: 1 MiB segments and 16 MiB of recent data
    /// in memory. Over a `MemStore`, whose segments are allocated whole
    /// twice (durable and current images), the defaults would take 128 MiB
    /// before the first commit; this takes 2 MiB. For tests and tools.
    pub fn small() -> TLogConfig {
        let mut config = TLogConfig::default();
        config.log.segment_size = 1 << 20;
        config.core.memory_budget = 16 << 20;
        config
    }
}

/// Counts of the writer's syncs, for benchmarks and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub syncs: u64,
    /// Commits the syncs made durable.
    pub commits: u64,
    /// Record bytes the syncs made durable.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TLogError {
    #[error(transparent)]
    DataDir(#[from] cluster::DataDirError),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("undecodable record at {location:?}: {reason}")]
    Record {
        location: crate::log::RecordLocation,
        reason: String,
    },
}

/// The largest reply a peek gets, whatever it asks for: replies must fit
/// in a frame, and one reader must not hold a large buffer.
pub const MAX_PEEK_BYTES: u32 = 16 << 20;
/// What a peek reply needs beyond the bytes it asked for: the encoding. (A
/// peek returns at least one block, which alone may pass the limit.)
const PEEK_REPLY_SLACK: usize = 64 << 10;
/// The longest a peek long-polls, whatever it asks for.
pub const MAX_PEEK_WAIT_MS: u64 = 60_000;

/// Durable version and whether the epoch ended, for long polls.
type Progress = (Version, bool);

struct Shared<S: LogStore> {
    core: Mutex<TLogCore<Waiter>>,
    /// Closed when the service is dropped, which ends the writer thread.
    writer: Arc<CommandQueue>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    placement: WriterPlacement,
    syncs: AtomicU64,
    synced_commits: AtomicU64,
    synced_bytes: AtomicU64,
    reader: LogReader<S>,
    progress: Signal<Progress>,
    clock: Arc<dyn Clock>,
    memory_budget: u64,
    /// The largest commit record a segment holds: a larger one is refused
    /// before it reaches the log, which could only fail (and poison) on it.
    max_commit_payload: u64,
    disk_bytes: AtomicU64,
    /// Why the writer waits (for disk space), while it does.
    stalled: Mutex<Option<String>>,
}

impl<S: LogStore> Shared<S> {
    fn core(&self) -> MutexGuard<'_, TLogCore<Waiter>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs actions: hands appends and removals to the writer while `core`
    /// is still locked (so the writer sees them in sequence order), then
    /// unlocks it before waking the writer and answering callers, so
    /// neither finds the core still taken.
    fn execute(&self, core: MutexGuard<'_, TLogCore<Waiter>>, actions: Vec<Action<Waiter>>) {
        let mut completions = Vec::new();
        let mut wake_writer = false;
        for action in actions {
            match action {
                Action::Append {
                    seq,
                    record,
                    payload,
                } => {
                    wake_writer |= self.send(WriterCommand::Append {
                        seq,
                        record,
                        payload,
                    })
                }
                Action::RemoveSegmentsBefore(id) => {
                    wake_writer |= self.send(WriterCommand::RemoveSegmentsBefore(id))
                }
                Action::CommitDone(token, result) => {
                    completions.push((token, Outcome::Commit(result)));
                }
                Action::LockDone(token, result) => completions.push((token, Outcome::Lock(result))),
                Action::RegisterDone(token, result) | Action::BeginDone(token, result) => {
                    completions.push((token, Outcome::Durable(result)));
                }
            }
        }
        drop(core);
        if wake_writer {
            self.writer.wake();
        }
        for (waiter, outcome) in completions {
            waiter.complete(outcome);
        }
    }

    /// Queues a command for the writer; true when it sleeps.
    fn send(&self, command: WriterCommand) -> bool {
        // A stopped writer has reported poisoning (or the service is going
        // away); the queue then drops the command and the core fails what
        // waits.
        self.writer.push(command)
    }

    /// Applies a report of the writer thread.
    fn on_writer_event(&self, event: WriterEvent) {
        let mut core = self.core();
        let actions = match event {
            WriterEvent::Durable {
                through_seq,
                commits,
                disk_bytes,
                batch_bytes,
            } => {
                self.disk_bytes.store(disk_bytes, Ordering::Relaxed);
                self.syncs.fetch_add(1, Ordering::Relaxed);
                self.synced_commits
                    .fetch_add(commits.len() as u64, Ordering::Relaxed);
                self.synced_bytes.fetch_add(batch_bytes, Ordering::Relaxed);
                let actions = core.on_durable(through_seq, &commits);
                publish_sync_gauges(&core, disk_bytes);
                actions
            }
            WriterEvent::Poisoned(reason) => {
                tracing::error!(%reason, "tlog poisoned");
                core.on_poisoned()
            }
            WriterEvent::Stalled(reason) => {
                *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = reason;
                return;
            }
        };
        let progress = progress_of(&core);
        self.execute(core, actions);
        self.publish_progress(progress);
    }

    fn publish_progress(&self, progress: Progress) {
        self.progress.update(|p| {
            let changed = *p != progress;
            *p = progress;
            changed
        });
    }
}

impl<S: LogStore> Drop for Shared<S> {
    /// Closes the writer's queue and waits for it to finish its batch, so the
    /// log is quiet (and its files closed) once the service is gone.
    fn drop(&mut self) {
        self.writer.close();
        let thread = self
            .writer_thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn progress_of(core: &TLogCore<Waiter>) -> Progress {
    (core.durable_version(), core.is_locked())
}

fn publish_sync_gauges(core: &TLogCore<Waiter>, disk_bytes: u64) {
    metrics::gauge!("teamlog_tlog_durable_version").set(core.durable_version().0 as f64);
    metrics::gauge!("teamlog_tlog_known_committed_version")
        .set(core.metadata().known_committed_version.0 as f64);
    metrics::gauge!("teamlog_tlog_memory_bytes").set(core.memory_bytes() as f64);
    metrics::gauge!("teamlog_tlog_disk_bytes").set(disk_bytes as f64);
}

/// Applies the writer's reports until the service is gone; dropping the
/// queue then tells the writer nobody listens.
async fn apply_writer_reports<S: LogStore>(
    shared: Weak<Shared<S>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<WriterEvent>,
) {
    while let Some(event) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.on_writer_event(event);
    }
}

/// Publishes the per-team gauges, which cost a pass over the teams and so
/// are not refreshed on every sync.
async fn run_team_gauges<S: LogStore>(shared: Weak<Shared<S>>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let report = shared.core().team_report();
        for (team, popped, bytes, _) in report {
            let label = team.0.to_string();
            metrics::gauge!("teamlog_tlog_team_bytes", "team" => label.clone()).set(bytes as f64);
            metrics::gauge!("teamlog_tlog_team_popped_version", "team" => label)
                .set(popped.0 as f64);
        }
    }
}

/// Expires commits that wait too long for their predecessors.
async fn run_ticks<S: LogStore>(shared: Weak<Shared<S>>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut core = shared.core();
        let actions = core.tick(shared.clock.now_ms());
        shared.execute(core, actions);
    }
}

/// A TLog over any log store: the RPC service plus its background work.
pub struct TLogService<S: LogStore> {
    shared: Arc<Shared<S>>,
}

impl<S: LogStore> Clone for TLogService<S> {
    fn clone(&self) -> Self {
        TLogService {
            shared: self.shared.clone(),
        }
    }
}

impl<S: LogStore> TLogService<S> {
    /// Recovers the log in `store` and starts the writer thread and timers.
    /// Must run inside a tokio runtime.
    pub fn open(
        store: Arc<S>,
        config: &TLogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TLogError> {
        let mut core = TLogCore::new(config.core.clone());
        let mut bad_record = None;
        let log =
            SegmentLog::open(
                store,
                config.log.clone(),
                |location, payload| match Record::decode(Bytes::copy_from_slice(payload)) {
                    Ok(record) => {
                        core.recover_record(location, record);
                        Ok(())
                    }
                    Err(e) => {
                        bad_record = Some((location, e.to_string()));
                        Err(LogError::Visit(e.to_string()))
                    }
                },
            );
        if let Some((location, reason)) = bad_record {
            return Err(TLogError::Record { location, reason });
        }
        let log = log?;
        let initial_actions = core.finish_recovery();
        let reader = log.reader();
        let disk_bytes = log.disk_bytes();
        let commands = Arc::new(CommandQueue::default());
        let meta = core.metadata().clone();
        let progress = Signal::new((core.durable_version(), core.is_locked()));
        tracing::info!(
            durable_version = %core.durable_version(),
            locked = core.is_locked(),
            "tlog recovered"
        );
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            writer: Arc::clone(&commands),
            writer_thread: Mutex::new(None),
            placement: config.writer,
            syncs: AtomicU64::new(0),
            synced_commits: AtomicU64::new(0),
            synced_bytes: AtomicU64::new(0),
            reader,
            progress,
            clock,
            memory_budget: config.core.memory_budget,
            max_commit_payload: LogConfig::max_payload(config.log.segment_size),
            disk_bytes: disk_bytes.into(),
            stalled: Mutex::new(None),
        });
        // The writer's reports are applied by a task of the runtime, not on
        // the writer thread: the commits they complete are then woken from
        // inside the runtime, one cross-thread wake per sync instead of one
        // per commit, and the writer thread never waits for the core.
        let (reports, report_queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(apply_writer_reports(Arc::downgrade(&shared), report_queue));
        let report = move |event| reports.send(event).is_ok();
        match config.writer {
            WriterPlacement::Threads => {
                let writer_thread =
                    spawn_writer(log, meta, commands, report).map_err(|source| TLogError::Io {
                        path: PathBuf::from("<writer thread>"),
                        source,
                    })?;
                *shared
                    .writer_thread
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(writer_thread);
            }
            WriterPlacement::RuntimeTask => {
                spawn_writer_task(log, meta, commands, report);
            }
        }
        shared.execute(shared.core(), initial_actions);
        tokio::spawn(run_ticks(Arc::downgrade(&shared)));
        tokio::spawn(run_team_gauges(Arc::downgrade(&shared)));
        Ok(TLogService { shared })
    }

    fn core(&self) -> MutexGuard<'_, TLogCore<Waiter>> {
        self.shared.core()
    }

    fn execute(&self, core: MutexGuard<'_, TLogCore<Waiter>>, actions: Vec<Action<Waiter>>) {
        self.shared.execute(core, actions)
    }

    pub async fn commit(&self, request: TLogCommitRequest) -> Result<Version, CoreError> {
        let received = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.submit_commit(request, Waiter::Local(tx));
        let result = match rx.await {
            Ok(Outcome::Commit(result)) => result,
            _ => Err(CoreError::Poisoned),
        };
        if result.is_ok() {
            record_commit_latency(received);
        }
        result
    }

    fn submit_commit(&self, request: TLogCommitRequest, waiter: Waiter) {
        let request = CommitRequest {
            prev_version: request.prev_version,
            version: request.version,
            known_committed_version: request.known_committed_version,
            blocks: request
                .teams
                .into_iter()
                .map(|t| (t.team, t.data))
                .collect(),
        };
        let max = self.shared.max_commit_payload;
        let prepared = PreparedCommit::new(request).and_then(|commit| {
            if commit.payload_len() > max {
                return Err(CoreError::CommitTooLarge {
                    bytes: commit.payload_len(),
                    max,
                });
            }
            Ok(commit)
        });
        let commit = match prepared {
            Ok(commit) => commit,
            Err(e) => return waiter.complete(Outcome::Commit(Err(e))),
        };
        let now_ms = self.shared.clock.now_ms();
        let mut core = self.core();
        let actions = core.commit(commit, waiter, now_ms);
        self.execute(core, actions);
    }

    pub async fn lock(&self) -> Result<LockOutcome, CoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit_lock(Waiter::Local(tx));
        match rx.await {
            Ok(Outcome::Lock(result)) => result,
            _ => Err(CoreError::Poisoned),
        }
    }

    fn submit_lock(&self, waiter: Waiter) {
        let mut core = self.core();
        let actions = core.lock(waiter);
        let progress = progress_of(&core);
        self.execute(core, actions);
        self.shared.publish_progress(progress);
    }

    pub fn pop(&self, request: proto::rpc::PopRequest) -> Result<(), CoreError> {
        let mut core = self.core();
        let actions = core.pop(request.team, request.server, request.version)?;
        self.execute(core, actions);
        Ok(())
    }

    pub async fn register_team(
        &self,
        request: proto::rpc::RegisterTeamRequest,
    ) -> Result<(), CoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit_register_team(request, Waiter::Local(tx));
        match rx.await {
            Ok(Outcome::Durable(result)) => result,
            _ => Err(CoreError::Poisoned),
        }
    }

    fn submit_register_team(&self, request: proto::rpc::RegisterTeamRequest, waiter: Waiter) {
        let mut core = self.core();
        let actions = core.register_team(request.team, request.servers, waiter);
        self.execute(core, actions);
    }

    /// Starts this TLog's chain after `version` (see [`TLogCore::begin_at`]):
    /// how a worker readies a TLog it was recruited for.
    pub async fn begin_at(&self, version: Version) -> Result<(), CoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit_begin(version, Waiter::Local(tx));
        match rx.await {
            Ok(Outcome::Durable(result)) => result,
            _ => Err(CoreError::Poisoned),
        }
    }

    fn submit_begin(&self, version: Version, waiter: Waiter) {
        let mut core = self.core();
        let actions = core.begin_at(version, waiter);
        self.execute(core, actions);
    }

    /// Answers a peek, waiting up to its timeout when nothing is there yet.
    pub async fn peek(&self, request: PeekRequest) -> Result<PeekResult, CoreError> {
        let wait = u64::from(request.timeout_ms).min(MAX_PEEK_WAIT_MS);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
        let max_bytes = request.max_bytes.clamp(1, MAX_PEEK_BYTES) as usize;
        loop {
            let seen = self.shared.progress.get();
            let plan = self
                .core()
                .plan_peek(request.team, request.begin, max_bytes)?;
            match plan {
                PeekPlan::Ready(result) => return Ok(result),
                PeekPlan::Disk(disk) => {
                    if let Some(result) = self.read_disk(disk).await? {
                        return Ok(result);
                    }
                }
                PeekPlan::Wait => {
                    let changed = self.shared.progress.wait_for(|p| *p != seen);
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return self.empty_peek(request.team, request.begin);
                    }
                }
            }
        }
    }

    fn empty_peek(&self, team: StorageTeamId, begin: Version) -> Result<PeekResult, CoreError> {
        let core = self.core();
        let popped = core
            .team_report()
            .into_iter()
            .find(|(t, ..)| *t == team)
            .map(|(_, popped, ..)| popped)
            .unwrap_or_default();
        Ok(PeekResult {
            blocks: Vec::new(),
            end: core.durable_version().next().min(begin),
            popped,
            max_known_version: core.durable_version(),
            known_committed_version: core.metadata().known_committed_version,
            end_of_stream: false,
        })
    }

    /// Reads spilled data on a blocking thread (on the runtime when the
    /// writer runs there too); None when the segments it
    /// planned to read were removed meanwhile (the caller plans again).
    /// Data that fails verification is reported, never read again and again.
    async fn read_disk(&self, disk: DiskPeek) -> Result<Option<PeekResult>, CoreError> {
        let reader = self.shared.reader.clone();
        let scanned = match self.shared.placement {
            WriterPlacement::Threads => {
                tokio::task::spawn_blocking(move || scan_for_peek(&reader, &disk)).await
            }
            WriterPlacement::RuntimeTask => Ok(scan_for_peek(&reader, &disk)),
        };
        match scanned {
            Ok(Ok(result)) => Ok(Some(result)),
            Ok(Err(e @ (LogError::SegmentRemoved(_) | LogError::NotDurable { .. }))) => {
                tracing::debug!(error = %e, "disk peek raced with truncation; planning again");
                Ok(None)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a peek read corrupt data from the log");
                Err(CoreError::Corrupt(e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %e, "disk peek task failed");
                Err(CoreError::Corrupt(format!("reading the log failed: {e}")))
            }
        }
    }

    /// What the writer's syncs did since the start.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            commits: self.shared.synced_commits.load(Ordering::Relaxed),
            bytes: self.shared.synced_bytes.load(Ordering::Relaxed),
        }
    }

    pub fn status(&self) -> TLogStatusReply {
        let core = self.core();
        let teams = core
            .team_report()
            .into_iter()
            .map(|(team, popped, bytes, servers)| TeamStatus {
                team,
                popped,
                bytes,
                servers,
            })
            .collect();
        TLogStatusReply {
            durable_version: core.durable_version(),
            known_committed_version: core.metadata().known_committed_version,
            locked: core.is_locked(),
            poisoned: core.is_poisoned(),
            memory_bytes: core.memory_bytes(),
            memory_budget: self.shared.memory_budget,
            disk_bytes: self.shared.disk_bytes.load(Ordering::Relaxed),
            truncation_blocker: core.truncation_blocker(),
            teams,
            stalled: self
                .shared
                .stalled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .or_else(|| core.chain_gap()),
        }
    }

    async fn peek_reply(self, peek: PeekRequest) -> Result<Message, ErrorReply> {
        let team = peek.team;
        let result = self.peek(peek).await.map_err(error_reply)?;
        let bytes: usize = result.blocks.iter().map(Bytes::len).sum();
        metrics::counter!("teamlog_tlog_peeks_total").increment(1);
        metrics::counter!("teamlog_tlog_peek_bytes_total").increment(bytes as u64);
        Ok(Message::PeekReply(PeekReply {
            blocks: result
                .blocks
                .into_iter()
                .map(|data| TeamBlockData { team, data })
                .collect(),
            end: result.end,
            popped: result.popped,
            max_known_version: result.max_known_version,
            known_committed_version: result.known_committed_version,
            end_of_stream: result.end_of_stream,
        }))
    }
}

impl<S: LogStore> Service for TLogService<S> {
    fn reply_size_bound(&self, request: &Message) -> usize {
        match request {
            Message::Peek(peek) => {
                peek.max_bytes.clamp(1, MAX_PEEK_BYTES) as usize + PEEK_REPLY_SLACK
            }
            _ => transport::SMALL_REPLY_BOUND,
        }
    }

    /// Commits, locks and team registrations are answered by the core when
    /// it decides (commits by the sync that makes them durable); a peek may
    /// long-poll, so it runs as a task.
    fn handle(&self, request: Message, responder: Responder) {
        match request {
            Message::TLogCommit(commit) => self.submit_commit(commit, Waiter::remote(responder)),
            Message::Lock => self.submit_lock(Waiter::remote(responder)),
            Message::RegisterTeam(register) => {
                self.submit_register_team(register, Waiter::remote(responder))
            }
            Message::Peek(peek) => responder.reply_with(self.clone().peek_reply(peek)),
            Message::Pop(pop) => responder.reply(
                self.pop(pop)
                    .map(|()| Message::PopReply)
                    .map_err(error_reply),
            ),
            Message::Status => responder.reply(Ok(Message::TLogStatus(self.status()))),
            other => responder.reply(Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("a tlog does not serve {}", other.name()),
            ))),
        }
    }
}

fn scan_for_peek<S: LogStore>(
    reader: &LogReader<S>,
    disk: &DiskPeek,
) -> Result<PeekResult, LogError> {
    let mut from: LogPosition = disk.from;
    let mut payloads = Vec::new();
    let mut scanned = 0;
    while scanned < disk.scan_limit {
        let records = reader.scan(from, disk.scan_limit - scanned)?;
        let Some((last, _)) = records.last() else {
            break;
        };
        from = LogPosition {
            segment: last.segment,
            offset: last.offset + u64::from(last.len),
        };
        scanned += records.iter().map(|(l, _)| l.len as usize).sum::<usize>();
        payloads.extend(records.into_iter().map(|(_, p)| p));
        let partial =
            finish_disk_peek(disk, &payloads).map_err(|e| LogError::Visit(e.to_string()))?;
        if partial.end > disk.begin
            && (partial.end >= disk.memory_floor || !partial.blocks.is_empty())
        {
            return Ok(partial);
        }
    }
    finish_disk_peek(disk, &payloads).map_err(|e| LogError::Visit(e.to_string()))
}

/// A TLog process: data dir lock, file log and listening socket.
pub struct TLogProcess {
    pub local_addr: SocketAddr,
    pub service: TLogService<FileStore>,
    _dir_lock: DataDirLock,
    listener: Option<TcpListener>,
    server_config: ServerConfig,
}

impl TLogProcess {
    pub async fn start(
        listen: SocketAddr,
        data_dir: &Path,
        config: TLogConfig,
    ) -> Result<TLogProcess, TLogError> {
        let dir_lock = DataDirLock::acquire(data_dir)?;
        let store = Arc::new(FileStore::open(&data_dir.join("log"))?);
        let service = TLogService::open(store, &config, Arc::new(SystemClock::default()))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TLogError::Io {
                path: PathBuf::from(listen.to_string()),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| TLogError::Io {
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
        Ok(TLogProcess {
            local_addr,
            service,
            _dir_lock: dir_lock,
            listener: Some(listener),
            server_config: config.server,
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let listener = self.listener.take().expect("serve is called once");
        let service: Arc<dyn Service> = Arc::new(self.service.clone());
        transport::serve(listener, service, self.server_config.clone(), shutdown).await
    }
}
