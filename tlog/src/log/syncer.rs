//! The durable side of the log, usable from a thread other than the
//! writer's: making written records durable, and removing old segments.
//!
//! ```text
//!  SegmentLog::write ──SyncPoint──▶ LogSyncer::sync ──fdatasync──▶ durable end advances
//!  (appends keep going meanwhile)                                   (readers see more)
//! ```
//!
//! A sync covers everything written before it started, so a point handed
//! over after its write returned is durable once `sync(point)` returns.
//! Points may be synced out of order or twice, or after their segment was
//! removed: the durable end only moves forward. A failed sync poisons the
//! log for the writer too.

use std::sync::{Arc, RwLock};

use super::{check_poison, read_lock, write_lock, LogError, LogPosition, Shared};
use crate::store::{LogStore, SegmentId, StoreError};

/// Everything written to a segment up to an offset, awaiting its sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPoint {
    pub(super) end: LogPosition,
}

impl SyncPoint {
    /// Where the data this point covers ends.
    pub fn end(&self) -> LogPosition {
        self.end
    }
}

/// Syncs and removes segments for a [`super::SegmentLog`], from any thread.
pub struct LogSyncer<S: LogStore> {
    store: Arc<S>,
    shared: Arc<RwLock<Shared>>,
}

impl<S: LogStore> Clone for LogSyncer<S> {
    fn clone(&self) -> Self {
        LogSyncer {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: LogStore> LogSyncer<S> {
    pub(super) fn new(store: Arc<S>, shared: Arc<RwLock<Shared>>) -> Self {
        LogSyncer { store, shared }
    }

    /// Makes everything written up to `point` durable and visible to
    /// readers. A failure poisons the log, and the sync is never retried:
    /// after a failed fdatasync the page cache no longer tells what reached
    /// the disk.
    pub fn sync(&self, point: SyncPoint) -> Result<(), LogError> {
        check_poison(&self.shared)?;
        let segment = point.end.segment;
        match self.store.sync(segment) {
            Ok(()) => {}
            // Removed since the point was written: it was sealed and synced
            // before the next segment was written, so nothing is left to do.
            Err(StoreError::NoSuchSegment(_)) if self.removed(segment) => return Ok(()),
            Err(e) => return Err(self.poison(segment, e.into())),
        }
        let mut shared = write_lock(&self.shared);
        if let Some(extent) = shared.segments.get_mut(&point.end.segment) {
            extent.end = extent.end.max(point.end.offset);
        }
        shared.durable_end = shared.durable_end.max(point.end);
        Ok(())
    }

    fn removed(&self, segment: SegmentId) -> bool {
        let shared = read_lock(&self.shared);
        segment < shared.durable_end.segment && !shared.segments.contains_key(&segment)
    }

    /// Durably removes every segment with id < `segment` (never the one
    /// being written), oldest first.
    pub fn remove_segments_before(&self, segment: SegmentId) -> Result<(), LogError> {
        check_poison(&self.shared)?;
        let doomed: Vec<SegmentId> = {
            let shared = read_lock(&self.shared);
            // The durable end is in the segment being written, or before it.
            let limit = segment.min(shared.durable_end.segment);
            shared.segments.range(..limit).map(|(&id, _)| id).collect()
        };
        for id in doomed {
            // Oldest first, and the map entry goes only once the file is gone,
            // so a failure leaves a consistent prefix removed.
            self.store.remove(id)?;
            write_lock(&self.shared).segments.remove(&id);
        }
        Ok(())
    }

    /// Disk space held by live segments (they are preallocated).
    pub fn disk_bytes(&self) -> u64 {
        read_lock(&self.shared)
            .segments
            .values()
            .map(|e| e.capacity)
            .sum()
    }

    /// The error that poisoned the log, if any.
    pub fn poison_cause(&self) -> Option<String> {
        read_lock(&self.shared).poison.clone()
    }

    /// Poisons the log with `cause` (the first cause is kept).
    pub(super) fn poison(&self, segment: SegmentId, cause: LogError) -> LogError {
        tracing::error!(segment, error = %cause, "log poisoned");
        write_lock(&self.shared)
            .poison
            .get_or_insert_with(|| cause.to_string());
        LogError::Poisoned
    }
}
