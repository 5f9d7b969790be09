//! The narrow disk interface under the record log.
//!
//! The log (`crate::log`) sees the disk only through [`LogStore`]: a set of
//! numbered, fixed-capacity segments that support positioned writes and reads,
//! an explicit durability barrier per segment, and durable create/remove. Two
//! implementations exist: `FileStore` (one preallocated file per segment) and
//! `MemStore` (in memory, able to simulate a machine crash), so the same log
//! code runs on a real disk and in deterministic simulation.
//!
//! ```text
//!   SegmentLog ──write_at/sync──▶ LogStore ──▶ FileStore  <dir>/<id>.seg
//!   LogReader  ──read_at───────▶ (shared)  └─▶ MemStore   durable + current image
//! ```
//!
//! Durability contract: `create` and `remove` are durable when they return;
//! a `write_at` is durable only after a later `sync` of that segment returns
//! `Ok`.

/// Identifies a segment; segments are ordered by id.
pub type SegmentId = u64;

/// Segmented append-only storage.
///
/// All methods take `&self` (implementations use interior mutability) so
/// readers on other threads can read while one writer appends.
pub trait LogStore: Send + Sync + 'static {
    /// Ids of all existing segments, ascending.
    fn list(&self) -> Result<Vec<SegmentId>, StoreError>;
    /// Creates a segment of `capacity` bytes, preallocated, and makes its
    /// existence durable (file + directory synced). Its bytes are zeros or
    /// stale content of a removed segment: callers must not trust them. A
    /// create that fails for lack of space
    /// ([`StoreError::is_out_of_space`]) leaves nothing behind.
    fn create(&self, id: SegmentId, capacity: u64) -> Result<(), StoreError>;
    /// Writes `data` at `offset`; the whole range must lie within the capacity.
    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Writes `parts` back to back from `offset`, as one write where the
    /// store can.
    fn write_vectored_at(
        &self,
        id: SegmentId,
        offset: u64,
        parts: &[std::io::IoSlice<'_>],
    ) -> Result<(), StoreError> {
        let mut at = offset;
        for part in parts {
            self.write_at(id, at, part)?;
            at += part.len() as u64;
        }
        Ok(())
    }
    /// Reads up to `buf.len()` bytes; returns bytes read (short only at the
    /// end of the segment).
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError>;
    /// Makes every completed write to `id` durable (fdatasync).
    fn sync(&self, id: SegmentId) -> Result<(), StoreError>;
    /// Removes a segment durably (directory synced).
    fn remove(&self, id: SegmentId) -> Result<(), StoreError>;
    /// The segment's size in bytes, fixed at creation.
    fn capacity(&self, id: SegmentId) -> Result<u64, StoreError>;
    /// A human-readable location for error messages, e.g. the file path.
    fn describe(&self, id: SegmentId) -> String;
}

/// A store chosen at run time: a worker hosts TLogs over files, or over
/// memory in a simulation.
impl LogStore for Box<dyn LogStore> {
    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        (**self).list()
    }
    fn create(&self, id: SegmentId, capacity: u64) -> Result<(), StoreError> {
        (**self).create(id, capacity)
    }
    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_at(id, offset, data)
    }
    fn write_vectored_at(
        &self,
        id: SegmentId,
        offset: u64,
        parts: &[std::io::IoSlice<'_>],
    ) -> Result<(), StoreError> {
        (**self).write_vectored_at(id, offset, parts)
    }
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        (**self).read_at(id, offset, buf)
    }
    fn sync(&self, id: SegmentId) -> Result<(), StoreError> {
        (**self).sync(id)
    }
    fn remove(&self, id: SegmentId) -> Result<(), StoreError> {
        (**self).remove(id)
    }
    fn capacity(&self, id: SegmentId) -> Result<u64, StoreError> {
        (**self).capacity(id)
    }
    fn describe(&self, id: SegmentId) -> String {
        (**self).describe(id)
    }
}

/// Why a [`LogStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The segment does not exist (never created, or removed).
    #[error("segment {0} does not exist")]
    NoSuchSegment(SegmentId),
    /// `create` of a segment that already exists.
    #[error("segment {0} already exists")]
    AlreadyExists(SegmentId),
    /// An access outside `[0, capacity)`.
    #[error("access of {len} bytes at offset {offset} is outside segment {segment} (capacity {capacity})")]
    OutOfBounds {
        segment: SegmentId,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    /// An I/O error other than a failed sync; `what` names the operation and path.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// fdatasync failed: the segment's unsynced writes are in an unknown
    /// state, so the caller must not retry (the log poisons itself).
    #[error("sync of segment {segment} failed: {source}")]
    SyncFailed {
        segment: SegmentId,
        #[source]
        source: std::io::Error,
    },
    /// A failure injected by a test store.
    #[error("injected fault: {0}")]
    InjectedFault(String),
}

impl StoreError {
    /// The store ran out of space (or quota): a `create` that failed so
    /// left nothing behind and may be tried again once space is back.
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            StoreError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
        )
    }
}

/// Writes must lie entirely inside the segment; reads may run past the end
/// (they come back short) but must start inside it.
pub(crate) fn check_bounds(
    segment: SegmentId,
    offset: u64,
    len: u64,
    capacity: u64,
    whole: bool,
) -> Result<(), StoreError> {
    let end = offset.checked_add(len);
    let ok = match end {
        Some(end) if whole => end <= capacity,
        Some(_) => offset <= capacity,
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::OutOfBounds {
            segment,
            offset,
            len,
            capacity,
        })
    }
}
