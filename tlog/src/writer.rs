//! The writer thread: the only code that appends to the log.
//!
//! ```text
//!  core ──WriterCommand (in seq order)──▶ writer: drain all queued, append,
//!                                           one sync for the whole batch
//!  core ◀──report(WriterEvent::Durable{through_seq, commit locations})──┘
//! ```
//!
//! Draining everything queued while the previous sync ran is the group
//! commit: under load, many commits share one fdatasync. A failed write or
//! sync poisons the log; the writer reports it once and stops.
//!
//! Metrics: `teamlog_tlog_fsync_seconds` (each sync) and
//! `teamlog_tlog_sync_batch_bytes` (record bytes each sync made durable).

use std::sync::mpsc::{Receiver, TryRecvError};
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

/// Starts the writer. `report` runs on the writer thread after each sync (so
/// waiters are woken without another thread hop); it returns false once
/// nobody listens, which ends the thread.
pub fn spawn_writer<S, R>(
    mut log: SegmentLog<S>,
    mut meta: Metadata,
    commands: Receiver<WriterCommand>,
    mut report: R,
) -> std::io::Result<JoinHandle<()>>
where
    S: LogStore,
    R: FnMut(WriterEvent) -> bool + Send + 'static,
{
    std::thread::Builder::new()
        .name("tlog-writer".into())
        .spawn(move || {
            let mut removals = Vec::new();
            while let Ok(first) = commands.recv() {
                let mut through_seq = None;
                let mut commits = Vec::new();
                let mut batch_bytes = 0;
                let mut next = Some(first);
                let outcome = loop {
                    let Some(command) = next.take() else {
                        break Ok(());
                    };
                    match command {
                        WriterCommand::Append {
                            seq,
                            record,
                            payload,
                        } => match write_record(&mut log, &mut meta, &record, &payload) {
                            Ok((location, len)) => {
                                if let Record::Commit(c) = &record {
                                    commits.push((c.version, location));
                                }
                                through_seq = Some(seq);
                                batch_bytes += len;
                            }
                            Err(e) => break Err(e),
                        },
                        WriterCommand::RemoveSegmentsBefore(id) => removals.push(id),
                    }
                    if batch_bytes < MAX_BATCH_BYTES {
                        match commands.try_recv() {
                            Ok(c) => next = Some(c),
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                        }
                    }
                };
                let outcome = outcome.and_then(|()| {
                    let started = Instant::now();
                    log.sync()?;
                    metrics::histogram!("teamlog_tlog_fsync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    Ok(())
                });
                if let Err(e) = outcome {
                    tracing::error!(error = %e, "log write failed; the tlog is poisoned");
                    report(WriterEvent::Poisoned(e.to_string()));
                    return;
                }
                if let Some(through_seq) = through_seq {
                    metrics::histogram!("teamlog_tlog_sync_batch_bytes").record(batch_bytes as f64);
                    let event = WriterEvent::Durable {
                        through_seq,
                        commits,
                        disk_bytes: log.disk_bytes(),
                        batch_bytes: batch_bytes as u64,
                    };
                    if !report(event) {
                        return;
                    }
                }
                // After the report: removals must not delay acknowledgements.
                for id in removals.drain(..) {
                    if let Err(e) = log.remove_segments_before(id) {
                        tracing::warn!(error = %e, segment = id, "could not remove old segments");
                    }
                }
            }
        })
}

/// Appends one record, starting a new segment (headed by a metadata
/// snapshot) when it does not fit.
fn write_record<S: LogStore>(
    log: &mut SegmentLog<S>,
    meta: &mut Metadata,
    record: &Record,
    payload: &[u8],
) -> Result<(RecordLocation, usize), LogError> {
    if log.needs_roll(payload.len()) {
        log.roll()?;
        log.append(&Record::Snapshot(meta.clone()).encode())?;
    }
    let location = log.append(payload)?;
    meta.apply(record);
    Ok((location, payload.len()))
}
