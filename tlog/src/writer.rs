//! The writer thread: the only code that appends to the log.
//!
//! ```text
//!  core ──push(WriterCommand, in seq order)──▶ CommandQueue
//!                                                   │ take all queued
//!                                                   ▼
//!                         writer: append each, one sync for the whole batch
//!  core ◀──report(WriterEvent::Durable{through_seq, commit locations})──┘
//! ```
//!
//! Taking everything queued while the previous sync ran is the group
//! commit: under load, many commits share one fdatasync. The queue wakes the
//! writer only when it sleeps, so while it syncs, queueing a command costs
//! no system call. A failed write or sync poisons the log; the writer
//! reports it once and stops.
//!
//! Metrics: `teamlog_tlog_fsync_seconds` (each sync) and
//! `teamlog_tlog_sync_batch_bytes` (record bytes each sync made durable).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use proto::Version;

use crate::log::{LogError, RecordLocation, SegmentLog};
use crate::record::{Metadata, Record};
use crate::store::{LogStore, SegmentId};

pub enum WriterCommand {
    Append {
        seq: u64,
        record: Record,
        payload: Bytes,
    },
    RemoveSegmentsBefore(SegmentId),
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
}

/// Bytes of records one batch may gather before it is synced.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Commands on their way to the writer, in the order they were pushed.
#[derive(Default)]
pub struct CommandQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    commands: Vec<WriterCommand>,
    writer_sleeps: bool,
    /// Set by [`CommandQueue::close`] or when the writer stops; later
    /// commands are dropped.
    closed: bool,
}

impl CommandQueue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        // Every operation leaves the state consistent, so a panic elsewhere
        // while holding the lock does not matter.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command; true when the writer sleeps and the caller must
    /// [`wake`](CommandQueue::wake) it, best after releasing its own locks
    /// so the woken writer's reports do not find them taken.
    #[must_use = "a sleeping writer must be woken"]
    pub fn push(&self, command: WriterCommand) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.commands.push(command);
        std::mem::take(&mut state.writer_sleeps)
    }

    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Lets the writer finish what is queued, then stop.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    /// Waits for commands and moves every queued one into `into`; false once
    /// the queue is closed and empty.
    fn wait_and_take(&self, into: &mut Vec<WriterCommand>) -> bool {
        let mut state = self.state();
        while state.commands.is_empty() {
            if state.closed {
                return false;
            }
            state.writer_sleeps = true;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::swap(&mut state.commands, into);
        true
    }

    /// Moves every queued command into `into` without waiting.
    fn take(&self, into: &mut Vec<WriterCommand>) {
        std::mem::swap(&mut self.state().commands, into);
    }
}

/// Records appended since the last sync, and what to do once it is done.
#[derive(Default)]
struct Batch {
    through_seq: Option<u64>,
    commits: Vec<(Version, RecordLocation)>,
    bytes: usize,
    removals: Vec<SegmentId>,
}

/// Starts the writer. `report` runs on the writer thread after each sync and
/// must not block (it hands the event on); it returns false once nobody
/// listens, which ends the thread.
pub fn spawn_writer<S, R>(
    mut log: SegmentLog<S>,
    mut meta: Metadata,
    queue: std::sync::Arc<CommandQueue>,
    mut report: R,
) -> std::io::Result<JoinHandle<()>>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool + Send + 'static,
{
    std::thread::Builder::new()
        .name("tlog-writer".into())
        .spawn(move || {
            let mut taken = Vec::new();
            let mut batch = Batch::default();
            while queue.wait_and_take(&mut taken) {
                // Whatever arrives while appending joins this batch.
                while !taken.is_empty() {
                    for command in taken.drain(..) {
                        let step =
                            append(&mut log, &mut meta, &mut batch, command).and_then(|()| {
                                if batch.bytes < MAX_BATCH_BYTES {
                                    Ok(true)
                                } else {
                                    sync_batch(&mut log, &mut batch, &mut report)
                                }
                            });
                        if !keep_going(step, &mut report) {
                            queue.close();
                            return;
                        }
                    }
                    queue.take(&mut taken);
                }
                let step = sync_batch(&mut log, &mut batch, &mut report);
                if !keep_going(step, &mut report) {
                    queue.close();
                    return;
                }
            }
        })
}

fn append<S: LogStore>(
    log: &mut SegmentLog<S>,
    meta: &mut Metadata,
    batch: &mut Batch,
    command: WriterCommand,
) -> Result<(), LogError> {
    match command {
        WriterCommand::Append {
            seq,
            record,
            payload,
        } => {
            let (location, len) = write_record(log, meta, &record, payload)?;
            if let Record::Commit(c) = &record {
                batch.commits.push((c.version, location));
            }
            batch.through_seq = Some(seq);
            batch.bytes += len;
        }
        WriterCommand::RemoveSegmentsBefore(id) => batch.removals.push(id),
    }
    Ok(())
}

/// Whether the writer carries on after a step: not once the log failed
/// (reported as poisoning) or nobody listens.
fn keep_going<R>(step: Result<bool, LogError>, report: &mut R) -> bool
where
    R: FnMut(WriterEvent) -> bool,
{
    match step {
        Ok(listening) => listening,
        Err(e) => {
            tracing::error!(error = %e, "log write failed; the tlog is poisoned");
            report(WriterEvent::Poisoned(e.to_string()));
            false
        }
    }
}

/// Syncs the batch, reports it durable, then removes the segments it was
/// asked to. Ok(false) when nobody listens to reports any more.
fn sync_batch<S, R>(
    log: &mut SegmentLog<S>,
    batch: &mut Batch,
    report: &mut R,
) -> Result<bool, LogError>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool,
{
    let batch = std::mem::take(batch);
    let started = Instant::now();
    log.sync()?;
    metrics::histogram!("teamlog_tlog_fsync_seconds").record(started.elapsed().as_secs_f64());
    if let Some(through_seq) = batch.through_seq {
        metrics::histogram!("teamlog_tlog_sync_batch_bytes").record(batch.bytes as f64);
        let event = WriterEvent::Durable {
            through_seq,
            commits: batch.commits,
            disk_bytes: log.disk_bytes(),
            batch_bytes: batch.bytes as u64,
        };
        if !report(event) {
            return Ok(false);
        }
    }
    // After the report: removals must not delay acknowledgements.
    for id in batch.removals {
        if let Err(e) = log.remove_segments_before(id) {
            tracing::warn!(error = %e, segment = id, "could not remove old segments");
        }
    }
    Ok(true)
}

/// Appends one record, starting a new segment (headed by a metadata
/// snapshot) when it does not fit.
fn write_record<S: LogStore>(
    log: &mut SegmentLog<S>,
    meta: &mut Metadata,
    record: &Record,
    payload: Bytes,
) -> Result<(RecordLocation, usize), LogError> {
    let len = payload.len();
    if log.needs_roll(len) {
        log.roll()?;
        log.append(&Record::Snapshot(meta.clone()).encode())?;
    }
    let location = log.append_shared(payload)?;
    meta.apply(record);
    Ok((location, len))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    fn removal(id: SegmentId) -> WriterCommand {
        WriterCommand::RemoveSegmentsBefore(id)
    }

    fn ids(commands: &[WriterCommand]) -> Vec<SegmentId> {
        commands
            .iter()
            .map(|c| match c {
                WriterCommand::RemoveSegmentsBefore(id) => *id,
                WriterCommand::Append { seq, .. } => panic!("unexpected append {seq}"),
            })
            .collect()
    }

    #[test]
    fn the_writer_takes_everything_queued_in_order_then_stops_after_close() {
        let queue = CommandQueue::default();
        for id in 1..=3 {
            assert!(!queue.push(removal(id)), "no writer sleeps");
        }
        queue.close();
        assert!(!queue.push(removal(4)));
        let mut taken = Vec::new();
        assert!(queue.wait_and_take(&mut taken));
        assert_eq!(ids(&taken), [1, 2, 3]);
        taken.clear();
        assert!(!queue.wait_and_take(&mut taken), "closed and empty");
        assert!(taken.is_empty(), "a command pushed after close is dropped");
    }

    /// Runs `wait_and_take` on a thread and waits until it sleeps; the
    /// receiver yields what it returned.
    fn sleeping_writer(
        queue: &Arc<CommandQueue>,
    ) -> std::sync::mpsc::Receiver<(bool, Vec<SegmentId>)> {
        let (done, result) = std::sync::mpsc::channel();
        let writer_queue = Arc::clone(queue);
        std::thread::spawn(move || {
            let mut taken = Vec::new();
            let woken = writer_queue.wait_and_take(&mut taken);
            let _ = done.send((woken, ids(&taken)));
        });
        let deadline = Instant::now() + WAIT;
        while !queue.state().writer_sleeps {
            assert!(Instant::now() < deadline, "the writer never went to sleep");
            std::thread::yield_now();
        }
        result
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_push_tells_to_wake_a_sleeping_writer_once() {
        let queue = Arc::new(CommandQueue::default());
        let result = sleeping_writer(&queue);
        assert!(queue.push(removal(7)), "the writer sleeps");
        assert!(!queue.push(removal(8)), "the first push took the wake");
        queue.wake();
        let taken = result.recv_timeout(WAIT).expect("the wake woke the writer");
        assert_eq!(taken, (true, vec![7, 8]));
    }

    #[test]
    fn close_wakes_a_sleeping_writer_and_ends_it() {
        let queue = Arc::new(CommandQueue::default());
        let result = sleeping_writer(&queue);
        queue.close();
        let taken = result.recv_timeout(WAIT).expect("close woke the writer");
        assert_eq!(taken, (false, vec![]));
    }
}
