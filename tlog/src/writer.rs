//! The writer: the only code that appends to the log, on two threads that
//! take turns, so one writes while the other waits for its fdatasync.
//!
//! ```text
//!  core ──push(WriterCommand, in seq order)──▶ CommandQueue
//!                                                   │ either writer thread:
//!                                                   ▼
//!      append lock: take queued commands, append them, write (no sync)
//!                                                   │ written: records not yet synced
//!                                                   ▼
//!      sync turn: fdatasync everything written by now, then report it
//!  core ◀──report(WriterEvent::Durable{through_seq, commit locations})──┘
//! ```
//!
//! Taking everything queued while a sync runs is the group commit: under
//! load, many commits share one fdatasync. With two threads, the commits
//! that arrive during a sync are already written when it ends, and the
//! next sync starts at once; with one, their write would wait for the sync
//! and the next sync for their write. Under light load one thread does it
//! all while the other sleeps, so a lone commit pays no hand-off. Commands
//! are taken and appended under one lock, so they reach the log in queue
//! order whichever thread takes them; reports are made in the sync turn,
//! so they come in order too.
//!
//! A failed write or sync poisons the log; the writer reports it once and
//! stops.
//!
//! Metrics: `teamlog_tlog_fsync_seconds` (each sync) and
//! `teamlog_tlog_sync_batch_bytes` (record bytes each sync made durable).

mod queue;

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use proto::Version;

pub use queue::CommandQueue;

use crate::log::{ChecksummedPayload, LogError, LogSyncer, RecordLocation, SegmentLog, SyncPoint};
use crate::record::{Metadata, Record};
use crate::store::{LogStore, SegmentId};

pub enum WriterCommand {
    Append {
        seq: u64,
        record: Record,
        payload: ChecksummedPayload,
    },
    RemoveSegmentsBefore(SegmentId),
}

impl WriterCommand {
    fn record_bytes(&self) -> usize {
        match self {
            WriterCommand::Append { payload, .. } => payload.len(),
            WriterCommand::RemoveSegmentsBefore(_) => 0,
        }
    }
}

#[derive(Debug)]
pub enum WriterEvent {
    Durable {
        through_seq: u64,
        commits: Vec<(Version, RecordLocation)>,
        disk_bytes: u64,
        /// Record payload bytes this sync made durable.
        batch_bytes: u64,
    },
    Poisoned(String),
    /// The log waits for space for its next segment (`Some(why)`), or has
    /// it again (`None`). Nothing is lost meanwhile: commits wait.
    Stalled(Option<String>),
}

/// Record bytes a thread takes, writes and syncs as one batch, so a burst
/// is acknowledged as it is written rather than all at its end.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Records appended, or written and not yet synced, and what to do once
/// they are durable.
#[derive(Default)]
struct Batch {
    through_seq: Option<u64>,
    commits: Vec<(Version, RecordLocation)>,
    bytes: usize,
    removals: Vec<SegmentId>,
    /// Where the batch's data ends, once written.
    point: Option<SyncPoint>,
}

impl Batch {
    /// Adds `later`, which was appended after everything in `self`.
    fn absorb(&mut self, later: Batch) {
        if self.commits.is_empty() {
            self.commits = later.commits;
        } else {
            self.commits.extend(later.commits);
        }
        self.through_seq = later.through_seq.or(self.through_seq);
        self.bytes += later.bytes;
        self.removals.extend(later.removals);
        self.point = later.point.or(self.point);
    }
}

/// The log and what only appending touches.
struct Appender<S: LogStore, R> {
    log: SegmentLog<S>,
    meta: Metadata,
    /// Appended since the last write.
    appended: Batch,
    /// Told when the log waits for space, and when it has it again.
    report: R,
    queue: Arc<CommandQueue>,
    space_wait: SpaceWait,
    /// The last roll found no space, and it was reported.
    out_of_space: bool,
}

/// How the writer waits for disk space for its next segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SpaceWait {
    /// On its own thread, which sleeps until there is space.
    Block,
    /// As a task of the runtime, which must not block: the command goes
    /// back to the head of the queue, and the task sleeps before the next
    /// attempt.
    Yield,
}

/// Waits between attempts to create a segment on a full disk.
const SPACE_RETRY_MIN: Duration = Duration::from_millis(100);
const SPACE_RETRY_MAX: Duration = Duration::from_secs(2);

/// What only the thread whose turn it is to sync touches.
struct Turn<R> {
    report: R,
    stopped: bool,
}

struct Writer<S: LogStore, R> {
    queue: Arc<CommandQueue>,
    syncer: LogSyncer<S>,
    appender: Mutex<Appender<S, R>>,
    /// Written, not yet synced.
    written: Mutex<Batch>,
    turn: Mutex<Turn<R>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A writer thread that panicked holding a lock leaves nothing half done
    // that the other would trust: its batch is simply never reported.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the writer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriterPlacement {
    /// Two threads of its own: a sync never holds up the runtime.
    #[default]
    Threads,
    /// One task of the runtime, which each write and sync block: for a
    /// simulation, where everything runs on the simulated runtime over a
    /// store in memory. On a full disk the task sleeps between attempts,
    /// and commands wait in the queue.
    RuntimeTask,
}

/// Starts the writer threads. `report` runs on them after each sync and
/// must not block (it hands the event on); it returns false once nobody
/// listens, which ends the threads. The handle returned ends after both.
pub fn spawn_writer<S, R>(
    log: SegmentLog<S>,
    meta: Metadata,
    queue: Arc<CommandQueue>,
    report: R,
) -> std::io::Result<JoinHandle<()>>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool + Clone + Send + 'static,
{
    let writer = Arc::new(Writer::new(log, meta, queue, report, SpaceWait::Block));
    std::thread::Builder::new()
        .name("tlog-writer".into())
        .spawn(move || {
            let partner = Arc::clone(&writer);
            let partner = std::thread::Builder::new()
                .name("tlog-writer".into())
                .spawn(move || partner.run());
            if let Err(e) = &partner {
                tracing::warn!(error = %e, "no second writer thread: writes wait for syncs");
            }
            writer.run();
            if let Ok(partner) = partner {
                let _ = partner.join();
            }
        })
}

/// Starts the writer as one task of the current runtime
/// ([`WriterPlacement::RuntimeTask`]); it ends as the threads do.
pub fn spawn_writer_task<S, R>(
    log: SegmentLog<S>,
    meta: Metadata,
    queue: Arc<CommandQueue>,
    report: R,
) -> tokio::task::JoinHandle<()>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool + Clone + Send + 'static,
{
    let writer = Writer::new(log, meta, queue, report, SpaceWait::Yield);
    tokio::spawn(async move {
        let mut taken = Vec::new();
        let mut delays = space_delays();
        while writer.queue.commands_queued().await {
            if !writer.write_and_sync(&mut taken) {
                return;
            }
            if lock(&writer.appender).out_of_space {
                let delay = delays.next().unwrap_or(SPACE_RETRY_MAX);
                tokio::time::sleep(delay).await;
                if writer.queue.is_closed() {
                    return;
                }
            } else {
                delays = space_delays();
            }
        }
    })
}

impl<S, R> Writer<S, R>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool + Clone,
{
    fn new(
        log: SegmentLog<S>,
        meta: Metadata,
        queue: Arc<CommandQueue>,
        report: R,
        space_wait: SpaceWait,
    ) -> Self {
        Writer {
            syncer: log.syncer(),
            appender: Mutex::new(Appender {
                log,
                meta,
                appended: Batch::default(),
                report: report.clone(),
                queue: Arc::clone(&queue),
                space_wait,
                out_of_space: false,
            }),
            queue,
            written: Mutex::new(Batch::default()),
            turn: Mutex::new(Turn {
                report,
                stopped: false,
            }),
        }
    }
}

impl<S, R> Writer<S, R>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool,
{
    fn run(&self) {
        let mut taken = Vec::new();
        while self.queue.wait_for_commands() {
            if !self.write_and_sync(&mut taken) {
                return;
            }
        }
    }

    /// Appends and writes a batch of queued commands, then syncs in turn;
    /// false once the writer stops.
    fn write_and_sync(&self, taken: &mut Vec<WriterCommand>) -> bool {
        match self.append_and_write(taken) {
            Ok(false) => true,
            Ok(true) => self.sync_turn(),
            Err(e) => {
                self.stop(&mut lock(&self.turn), Some(e));
                false
            }
        }
    }

    /// Takes a batch of queued commands, appends and writes it; false when
    /// the other thread had taken everything. A writer task that finds no
    /// space for the next segment puts that command and the rest back and
    /// writes what it appended before it.
    fn append_and_write(&self, taken: &mut Vec<WriterCommand>) -> Result<bool, LogError> {
        let mut appender = lock(&self.appender);
        self.queue.take(taken, MAX_BATCH_BYTES);
        if taken.is_empty() {
            return Ok(false);
        }
        let mut commands = taken.drain(..);
        while let Some(command) = commands.next() {
            if let Some(waiting) = appender.apply(command)? {
                self.queue
                    .put_back(std::iter::once(waiting).chain(commands));
                break;
            }
        }
        let point = appender.log.write()?;
        let mut batch = std::mem::take(&mut appender.appended);
        batch.point = point;
        // Still under the append lock: batches become written in order.
        lock(&self.written).absorb(batch);
        Ok(true)
    }

    /// Waits for the turn to sync, then syncs everything written by then
    /// (this thread's batch, unless the other thread's sync took it, and
    /// whatever the other wrote meanwhile) and reports it. False once the
    /// writer stops.
    fn sync_turn(&self) -> bool {
        let mut turn = lock(&self.turn);
        if turn.stopped {
            return false;
        }
        let batch = std::mem::take(&mut *lock(&self.written));
        match self.sync_batch(batch, &mut turn.report) {
            Ok(true) => true,
            Ok(false) => {
                self.stop(&mut turn, None);
                false
            }
            Err(e) => {
                self.stop(&mut turn, Some(e));
                false
            }
        }
    }

    /// Stops both threads: after a failure, which is reported unless one
    /// already was, or once nobody listens.
    fn stop(&self, turn: &mut Turn<R>, error: Option<LogError>) {
        if let (Some(e), false) = (error, turn.stopped) {
            let cause = match e {
                LogError::Poisoned => self.syncer.poison_cause().unwrap_or(e.to_string()),
                e => e.to_string(),
            };
            tracing::error!(error = %cause, "log write failed; the tlog is poisoned");
            (turn.report)(WriterEvent::Poisoned(cause));
        }
        turn.stopped = true;
        self.queue.close();
    }

    /// Syncs the batch, reports it durable, then removes the segments it was
    /// asked to. Ok(false) when nobody listens to reports any more.
    fn sync_batch(&self, batch: Batch, report: &mut R) -> Result<bool, LogError> {
        if let Some(point) = batch.point {
            let started = Instant::now();
            self.syncer.sync(point)?;
            metrics::histogram!("teamlog_tlog_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if let Some(through_seq) = batch.through_seq {
            metrics::histogram!("teamlog_tlog_sync_batch_bytes").record(batch.bytes as f64);
            let event = WriterEvent::Durable {
                through_seq,
                commits: batch.commits,
                disk_bytes: self.syncer.disk_bytes(),
                batch_bytes: batch.bytes as u64,
            };
            if !report(event) {
                return Ok(false);
            }
        }
        // After the report: removals must not delay acknowledgements.
        for id in batch.removals {
            if let Err(e) = self.syncer.remove_segments_before(id) {
                tracing::warn!(error = %e, segment = id, "could not remove old segments");
            }
        }
        Ok(true)
    }
}

impl<S: LogStore, R: FnMut(WriterEvent) -> bool> Appender<S, R> {
    /// Appends a command, or hands it back when it must wait for space.
    fn apply(&mut self, command: WriterCommand) -> Result<Option<WriterCommand>, LogError> {
        match command {
            WriterCommand::Append {
                seq,
                record,
                payload,
            } => {
                let len = payload.len();
                if self.log.needs_roll(len) && !self.roll()? {
                    return Ok(Some(WriterCommand::Append {
                        seq,
                        record,
                        payload,
                    }));
                }
                let location = self.append_record(&record, payload)?;
                if let Record::Commit(c) = &record {
                    self.appended.commits.push((c.version, location));
                }
                self.appended.through_seq = Some(seq);
                self.appended.bytes += len;
            }
            WriterCommand::RemoveSegmentsBefore(id) => self.appended.removals.push(id),
        }
        Ok(None)
    }

    fn append_record(
        &mut self,
        record: &Record,
        payload: ChecksummedPayload,
    ) -> Result<RecordLocation, LogError> {
        let location = self.log.append_shared(payload)?;
        self.meta.apply(record);
        Ok(location)
    }

    /// Starts the next segment, headed by a metadata snapshot; false when a
    /// writer task found no space for it (a thread waits for space).
    fn roll(&mut self) -> Result<bool, LogError> {
        let rolled = match self.space_wait {
            SpaceWait::Block => {
                self.roll_when_space()?;
                true
            }
            SpaceWait::Yield => self.try_roll()?.is_none(),
        };
        if rolled {
            self.log
                .append(&Record::Snapshot(self.meta.clone()).encode())?;
        }
        Ok(rolled)
    }

    /// One attempt at starting the next segment; the lack of space, when
    /// there is none for it.
    fn try_roll(&mut self) -> Result<Option<LogError>, LogError> {
        match self.log.roll() {
            Ok(_) => {
                if std::mem::take(&mut self.out_of_space) {
                    tracing::info!("space for the log again; writing on");
                    (self.report)(WriterEvent::Stalled(None));
                }
                Ok(None)
            }
            Err(e @ LogError::OutOfSpace { .. }) => {
                if !self.out_of_space {
                    tracing::error!(error = %e, "the log waits for disk space; commits wait");
                    (self.report)(WriterEvent::Stalled(Some(e.to_string())));
                    self.out_of_space = true;
                }
                Ok(Some(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the next segment, waiting as long as the disk has no room for
    /// it: commits wait rather than fail, and go on once space is back. The
    /// wait ends early only when the writer is asked to stop.
    fn roll_when_space(&mut self) -> Result<(), LogError> {
        let mut delays = space_delays();
        while let Some(no_space) = self.try_roll()? {
            let delay = delays.next().unwrap_or(SPACE_RETRY_MAX);
            if self.queue.wait_closed(delay) {
                return Err(no_space);
            }
        }
        Ok(())
    }
}

/// Growing, jittered waits between attempts to find space.
fn space_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(SPACE_RETRY_MIN)
        .with_max_delay(SPACE_RETRY_MAX)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Sender;

    use bytes::Bytes;
    use proto::StorageTeamId;

    use super::*;
    use crate::log::LogConfig;
    use crate::mem_store::MemStore;
    use crate::record::CommitRecord;

    fn commit(version: u64) -> WriterCommand {
        let record = Record::Commit(CommitRecord {
            prev_version: Version(version - 1),
            version: Version(version),
            known_committed_version: Version::ZERO,
            blocks: vec![(StorageTeamId(1), Bytes::from(vec![7; 40]))],
        });
        let payload = ChecksummedPayload::new(record.encode());
        WriterCommand::Append {
            seq: version,
            record,
            payload,
        }
    }

    /// Commands pushed while both threads write and sync (small segments, so
    /// rolls happen mid-stream) are reported durable once each, in order,
    /// and reach the log in the order they were queued.
    #[test]
    fn every_append_is_reported_once_in_order_and_logged_in_order() {
        check_every_append_reported_and_logged(|log, queue, report| {
            let report = move |e| report.send(e).is_ok();
            let writer =
                spawn_writer(log, Metadata::default(), Arc::clone(&queue), report).unwrap();
            push_commits_and_close(&queue);
            writer.join().unwrap();
        });
    }

    /// The same for a writer that runs as a task of a one-thread runtime,
    /// as in a simulation: commits pushed while it writes and syncs.
    #[test]
    fn a_writer_task_reports_every_append_once_in_order_and_logs_it_in_order() {
        check_every_append_reported_and_logged(|log, queue, report| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let report = move |e| report.send(e).is_ok();
            runtime.block_on(async {
                let writer =
                    spawn_writer_task(log, Metadata::default(), Arc::clone(&queue), report);
                for version in 1..=COMMITS {
                    if queue.push(commit(version)) {
                        queue.wake();
                    }
                    if version % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                queue.close();
                writer.await.unwrap();
            });
        });
    }

    /// A writer task whose disk has no room for another segment does not
    /// block its runtime: it reports the stall once, keeps what does not
    /// fit queued, and once space is back logs and reports every commit in
    /// order.
    #[test]
    fn a_writer_task_on_a_full_disk_waits_without_blocking_its_runtime() {
        let store = Arc::new(MemStore::new());
        let config = LogConfig {
            segment_size: 16 << 10,
        };
        let log = SegmentLog::open(Arc::clone(&store), config.clone(), |_, _| Ok(())).unwrap();
        store.limit_segments(Some(3));
        let queue = Arc::new(CommandQueue::default());
        let (events, reported) = std::sync::mpsc::channel();
        let report = move |e| events.send(e).is_ok();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut seen = Vec::new();
        runtime.block_on(async {
            let writer = spawn_writer_task(log, Metadata::default(), Arc::clone(&queue), report);
            for version in 1..=COMMITS {
                if queue.push(commit(version)) {
                    queue.wake();
                }
            }
            // This loop runs on the writer's runtime: a writer blocked on
            // the full disk would keep it from ever seeing the stall.
            let stalled = |e: &WriterEvent| matches!(e, WriterEvent::Stalled(Some(_)));
            wait_for(&reported, &mut seen, |seen| seen.iter().any(stalled)).await;
            assert_eq!(seen.iter().filter(|e| stalled(e)).count(), 1);
            assert!(durable_through(&seen) < COMMITS, "all fit on a full disk");

            store.limit_segments(None);
            wait_for(&reported, &mut seen, |seen| {
                durable_through(seen) == COMMITS
            })
            .await;
            queue.close();
            writer.await.unwrap();
        });
        assert!(seen.iter().any(|e| matches!(e, WriterEvent::Stalled(None))));
        let durable: Vec<u64> = seen
            .iter()
            .filter_map(|e| match e {
                WriterEvent::Durable { commits, .. } => Some(commits),
                _ => None,
            })
            .flatten()
            .map(|(version, _)| version.0)
            .collect();
        assert_eq!(durable, (1..=COMMITS).collect::<Vec<_>>());
        assert_logged_in_order(store, config);
    }

    /// Every commit 1..=COMMITS is in the log, once, in order.
    fn assert_logged_in_order(store: Arc<MemStore>, config: LogConfig) {
        let mut logged = Vec::new();
        SegmentLog::open(store, config, |_, payload| {
            if let Ok(Record::Commit(c)) = Record::decode(Bytes::copy_from_slice(payload)) {
                logged.push(c.version.0);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(logged, (1..=COMMITS).collect::<Vec<_>>());
    }

    /// The last sequence number reported durable.
    fn durable_through(seen: &[WriterEvent]) -> u64 {
        seen.iter()
            .filter_map(|e| match e {
                WriterEvent::Durable { through_seq, .. } => Some(*through_seq),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Collects reports until `done` holds of them, within a deadline.
    async fn wait_for(
        reported: &std::sync::mpsc::Receiver<WriterEvent>,
        seen: &mut Vec<WriterEvent>,
        done: impl Fn(&[WriterEvent]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(seen) {
            assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
            seen.extend(reported.try_iter());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const COMMITS: u64 = 3000;

    fn push_commits_and_close(queue: &CommandQueue) {
        for version in 1..=COMMITS {
            if queue.push(commit(version)) {
                queue.wake();
            }
        }
        queue.close();
    }

    /// Runs `write` (which pushes versions 1..=COMMITS and waits until the
    /// writer ends) and checks what it reported and logged.
    fn check_every_append_reported_and_logged(
        write: impl FnOnce(SegmentLog<MemStore>, Arc<CommandQueue>, Sender<WriterEvent>),
    ) {
        let store = Arc::new(MemStore::new());
        let config = LogConfig {
            segment_size: 16 << 10,
        };
        let log = SegmentLog::open(Arc::clone(&store), config.clone(), |_, _| Ok(())).unwrap();
        let queue = Arc::new(CommandQueue::default());
        let (events, reported) = std::sync::mpsc::channel();
        write(log, queue, events);

        let mut last_seq = 0;
        let mut durable = Vec::new();
        for event in reported.try_iter() {
            let WriterEvent::Durable {
                through_seq,
                commits,
                ..
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert!(through_seq > last_seq, "reports out of order");
            last_seq = through_seq;
            durable.extend(commits.into_iter().map(|(version, _)| version.0));
        }
        assert_eq!(last_seq, COMMITS);
        assert_eq!(durable, (1..=COMMITS).collect::<Vec<_>>());

        assert_logged_in_order(store, config);
    }
}
