//! The segmented, checksummed record log: the TLog's durable storage.
//!
//! One writer appends records (opaque payloads) into a [`Scatter`] (large
//! payloads referenced, not copied); `write` writes it with one vectored
//! write, and a [`LogSyncer`] (on any thread) makes everything written so
//! far durable with one fdatasync, so many commits share a sync (group
//! commit) and the next batch can be written while the last one syncs.
//! Readers on other threads ([`LogReader`]) see only what is durable.
//!
//! ```text
//!  segment 7 (preallocated, zero-filled)                  segment 8
//!  ┌────────┬─────┬─────┬─────┬─────┬──────┬──────────┐    ┌────────┬─────┬──
//!  │ header │ r41 │ r42 │ r43 │ r44 │ seal │ 0 0 0 0  │ ─▶ │ header │ r46 │
//!  └────────┴─────┴─────┴─────┴─────┴──────┴──────────┘    └────────┴─────┴──
//!             └─ batch ─┘ └─ batch ─┘ (one sync each)
//! ```
//!
//! # On-disk format (little-endian)
//!
//! Segment header, 64 bytes at offset 0:
//!
//! ```text
//!  0  magic "TLOGSEG\0"   8  format version u32 (2)   12 header length u32 (64)
//!  16 segment id u64      24 first sequence u64       32 zeros
//!  60 crc32c of bytes 0..60
//! ```
//!
//! Records follow at 8-byte aligned offsets from 64; each is a 32-byte header,
//! the payload, and zero padding up to the next multiple of 8:
//!
//! ```text
//!  0  magic u32 "TLR2"    4  payload_len u32      8  sequence u64
//!  16 batch_start u64     24 kind u32 (1 data, 2 seal)
//!  28 crc32c u32 of the payload, then bytes 0..28
//! ```
//!
//! `sequence` goes up by exactly one per record across the whole log (the
//! segment header holds the first one). `batch_start` is the segment's durable
//! end when the record's batch was started: everything before it had been
//! synced. A seal record ends every segment but the last: `roll` writes it
//! and syncs before any byte goes to the next segment. Every segment keeps
//! room for its seal.
//!
//! # Recovery
//!
//! Records are checked in order. Segments other than the last must end with a
//! seal; anything invalid before it is corruption. In the last segment, at the
//! first invalid record X the rest of the segment is probed (every 8-byte
//! offset) for valid records with a later sequence. One whose `batch_start` is
//! beyond X was written after a sync that covered X, so X is corruption
//! ([`LogError::Corrupt`], the log refuses to open). Otherwise everything from
//! X on is unsynced (the last batch, or the last two when one was written
//! while the other synced), whose pages may have persisted in any order: a
//! torn tail, zeroed (so stale bytes never look valid later), synced,
//! and appended over. A last segment without its own header (zeros, or the
//! stale header of the older segment a recycled file used to be) was being
//! created by `roll` and is removed: records go into a segment only after
//! its header is synced.
//!
//! One case cannot be told apart: corruption inside the very last synced
//! batch, with no batch on disk that was started after its sync, looks
//! exactly like a torn unsynced batch, so it is truncated (with a warning)
//! rather than reported.

mod format;
mod payload;
mod reader;
mod recovery;
mod syncer;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use proto::scatter::Scatter;

use format::{RecordHeader, SegmentHeader, KIND_DATA, KIND_SEAL, SEAL_LEN};
pub use format::{
    FIRST_RECORD_OFFSET, FORMAT_VERSION, RECORD_ALIGN, RECORD_HEADER_LEN, RECORD_MAGIC,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
pub use payload::ChecksummedPayload;
pub use reader::LogReader;
pub use syncer::{LogSyncer, SyncPoint};

use crate::store::{LogStore, SegmentId, StoreError};

/// Tunables of a [`SegmentLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Capacity of each new segment; a multiple of 8, at least
    /// [`LogConfig::MIN_SEGMENT_SIZE`].
    pub segment_size: u64,
}

impl LogConfig {
    /// Room for the segment header, one empty record and the seal.
    pub const MIN_SEGMENT_SIZE: u64 = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + SEAL_LEN;

    /// The largest payload a segment of `capacity` bytes can hold.
    pub fn max_payload(capacity: u64) -> u64 {
        let room = capacity.saturating_sub(FIRST_RECORD_OFFSET + RECORD_HEADER_LEN + SEAL_LEN);
        // Round down so the padded record still fits, and keep the whole
        // record length representable in `RecordLocation::len`.
        (room - room % RECORD_ALIGN).min(u64::from(u32::MAX) - RECORD_HEADER_LEN - RECORD_ALIGN)
    }

    fn validate(&self) -> Result<(), LogError> {
        if self.segment_size < Self::MIN_SEGMENT_SIZE || self.segment_size % RECORD_ALIGN != 0 {
            return Err(LogError::InvalidConfig(format!(
                "segment_size {} must be a multiple of {RECORD_ALIGN} and at least {}",
                self.segment_size,
                Self::MIN_SEGMENT_SIZE
            )));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size: 64 << 20,
        }
    }
}

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordLocation {
    pub segment: SegmentId,
    /// Offset of the record header in the segment.
    pub offset: u64,
    /// The whole record on disk: header, payload and padding.
    pub len: u32,
}

impl RecordLocation {
    /// Where the next record starts (a valid `scan` start once durable).
    pub fn end(&self) -> LogPosition {
        LogPosition {
            segment: self.segment,
            offset: self.offset + u64::from(self.len),
        }
    }
}

/// A point in the log: a segment and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub segment: SegmentId,
    pub offset: u64,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Durable data failed verification; the log will not open over it.
    #[error("corrupt log segment {segment} ({path}) at offset {offset}: {reason}")]
    Corrupt {
        segment: SegmentId,
        path: String,
        offset: u64,
        reason: String,
    },
    /// A write or sync failed earlier; the log accepts nothing more. Reopen
    /// (recover) to continue.
    #[error("log is poisoned by an earlier failed write or sync")]
    Poisoned,
    /// The store has no space for the next segment. Nothing was lost and
    /// the log is not poisoned: `roll` again once space is back.
    #[error("no space for log segment {segment}: {reason}")]
    OutOfSpace { segment: SegmentId, reason: String },
    /// The payload can never fit in a segment of the configured size.
    #[error("record payload of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge { len: usize, max: u64 },
    /// The payload does not fit in what is left of the current segment:
    /// call `roll` first (see `needs_roll`).
    #[error("record of {needed} bytes does not fit in segment {segment} ({available} bytes left); roll first")]
    SegmentFull {
        segment: SegmentId,
        needed: u64,
        available: u64,
    },
    /// The segment was removed by `remove_segments_before`.
    #[error("segment {0} has been removed")]
    SegmentRemoved(SegmentId),
    /// A read asked for data that is not durable (yet).
    #[error("{at:?} is beyond the durable end {durable_end:?}")]
    NotDurable {
        at: LogPosition,
        durable_end: LogPosition,
    },
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The recovery visitor refused a record.
    #[error("recovery visitor failed: {0}")]
    Visit(String),
}

/// What readers share with the writer.
#[derive(Debug)]
struct Shared {
    /// Every live segment: capacity, and where its durable data ends (after
    /// the seal for sealed segments).
    segments: BTreeMap<SegmentId, Extent>,
    durable_end: LogPosition,
    /// Why the log is poisoned, once a write or sync failed.
    poison: Option<String>,
}

#[derive(Clone, Copy, Debug)]
struct Extent {
    capacity: u64,
    end: u64,
}

fn read_lock(shared: &RwLock<Shared>) -> RwLockReadGuard<'_, Shared> {
    shared.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(shared: &RwLock<Shared>) -> RwLockWriteGuard<'_, Shared> {
    shared.write().unwrap_or_else(|e| e.into_inner())
}

fn check_poison(shared: &RwLock<Shared>) -> Result<(), LogError> {
    match read_lock(shared).poison {
        Some(_) => Err(LogError::Poisoned),
        None => Ok(()),
    }
}

fn corrupt<S: LogStore>(
    store: &S,
    segment: SegmentId,
    offset: u64,
    reason: impl Into<String>,
) -> LogError {
    LogError::Corrupt {
        segment,
        path: store.describe(segment),
        offset,
        reason: reason.into(),
    }
}

/// A record's payload on its way into the buffer.
enum Payload<'a> {
    Copied(&'a [u8]),
    Shared(ChecksummedPayload),
}

/// The single-writer log. See the module doc.
pub struct SegmentLog<S: LogStore> {
    store: Arc<S>,
    config: LogConfig,
    shared: Arc<RwLock<Shared>>,
    current: SegmentId,
    capacity: u64,
    /// Written end of the current segment; `buffer` goes right after it.
    written_end: u64,
    /// The current segment's durable end when the buffer's first record was
    /// pushed; every record in the buffer carries it as its `batch_start`.
    batch_start: u64,
    buffer: Scatter,
    next_sequence: u64,
    /// The current segment is sealed and synced, and the next one could
    /// not be created yet (no space): `roll` only creates it.
    sealed_awaiting_next: bool,
}

impl<S: LogStore> SegmentLog<S> {
    /// Opens (creating the first segment if none) and recovers: calls `visit`
    /// for every valid record in log order. Truncates a torn tail; reports
    /// corruption anywhere else as [`LogError::Corrupt`] and refuses to open.
    pub fn open<F>(store: Arc<S>, config: LogConfig, visit: F) -> Result<SegmentLog<S>, LogError>
    where
        F: FnMut(RecordLocation, &[u8]) -> Result<(), LogError>,
    {
        config.validate()?;
        let rec = recovery::recover(&*store, visit)?;
        let mut segments = rec.segments;
        let (current, capacity, synced_end, sealed_awaiting_next) = match rec.tail {
            Some(tail) if !tail.sealed => (tail.segment, tail.capacity, tail.end, false),
            sealed_or_none => match start_segment(
                &*store,
                rec.next_segment,
                config.segment_size,
                rec.next_sequence,
            ) {
                Ok(()) => (
                    rec.next_segment,
                    config.segment_size,
                    FIRST_RECORD_OFFSET,
                    false,
                ),
                // A sealed tail on a full disk: the log opens as a roll
                // that found no space leaves it, so that what it holds can
                // be read; the next roll creates the segment.
                Err(LogError::Store(e)) if e.is_out_of_space() => match sealed_or_none {
                    Some(tail) => (tail.segment, tail.capacity, tail.end, true),
                    None => return Err(LogError::Store(e)),
                },
                Err(e) => return Err(e),
            },
        };
        segments.insert(
            current,
            Extent {
                capacity,
                end: synced_end,
            },
        );
        let durable_end = LogPosition {
            segment: current,
            offset: synced_end,
        };
        Ok(SegmentLog {
            store,
            config,
            shared: Arc::new(RwLock::new(Shared {
                segments,
                durable_end,
                poison: None,
            })),
            current,
            capacity,
            written_end: synced_end,
            batch_start: synced_end,
            buffer: Scatter::default(),
            next_sequence: rec.next_sequence,
            sealed_awaiting_next,
        })
    }

    fn check_poison(&self) -> Result<(), LogError> {
        check_poison(&self.shared)
    }

    /// Where the current segment's durable data ends, as last synced (by
    /// this log or a [`LogSyncer`]). The segment is always in the map; the
    /// fallback only keeps this total.
    fn current_durable_end(&self) -> u64 {
        read_lock(&self.shared)
            .segments
            .get(&self.current)
            .map_or(FIRST_RECORD_OFFSET, |extent| extent.end)
    }

    /// Offset where the next appended record will go.
    fn append_end(&self) -> u64 {
        self.written_end + self.buffer.len() as u64
    }

    fn free(&self) -> u64 {
        if self.sealed_awaiting_next {
            return 0;
        }
        self.capacity.saturating_sub(self.append_end() + SEAL_LEN)
    }

    /// Buffers a record for the current segment (not durable, not visible to
    /// readers).
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordLocation, LogError> {
        let location = self.place(payload.len())?;
        self.push(KIND_DATA, Payload::Copied(payload));
        Ok(location)
    }

    /// [`SegmentLog::append`] of a shared, already checksummed payload,
    /// whose large parts are written from where they are, without a copy.
    pub fn append_shared(
        &mut self,
        payload: ChecksummedPayload,
    ) -> Result<RecordLocation, LogError> {
        let location = self.place(payload.len())?;
        self.push(KIND_DATA, Payload::Shared(payload));
        Ok(location)
    }

    /// Where a record of `payload` goes, if it fits.
    fn place(&self, payload_len: usize) -> Result<RecordLocation, LogError> {
        self.check_poison()?;
        let max = LogConfig::max_payload(self.config.segment_size);
        if payload_len as u64 > max {
            return Err(LogError::RecordTooLarge {
                len: payload_len,
                max,
            });
        }
        let len = format::record_len(payload_len as u64);
        if len > self.free() {
            return Err(LogError::SegmentFull {
                segment: self.current,
                needed: len,
                available: self.free(),
            });
        }
        Ok(RecordLocation {
            segment: self.current,
            offset: self.append_end(),
            len: len as u32,
        })
    }

    fn push(&mut self, kind: u32, payload: Payload<'_>) {
        if self.buffer.is_empty() {
            // Read once per batch: a stale value is only lower, which keeps
            // recovery's torn-tail judgement conservative.
            self.batch_start = self.current_durable_end();
        }
        let (len, crc) = match &payload {
            Payload::Copied(bytes) => (bytes.len(), crc32c::crc32c(bytes)),
            Payload::Shared(shared) => (shared.len(), shared.crc()),
        };
        let header = RecordHeader {
            kind,
            payload_len: len as u32,
            sequence: self.next_sequence,
            batch_start: self.batch_start,
        };
        self.buffer
            .extend_from_slice(&format::record_header(header, crc));
        match payload {
            Payload::Copied(bytes) => self.buffer.extend_from_slice(bytes),
            Payload::Shared(shared) => shared.into_parts().for_each(|p| self.buffer.push(p)),
        }
        self.buffer.extend_from_slice(format::padding(&header));
        self.next_sequence += 1;
    }

    /// True when a record with `payload_len` bytes of payload does not fit in
    /// the current segment (the caller then calls `roll`).
    pub fn needs_roll(&self, payload_len: usize) -> bool {
        format::record_len(payload_len as u64) > self.free()
    }

    /// Ends the current segment: writes and syncs what is buffered plus a
    /// seal, then starts a new segment; returns its id.
    ///
    /// When the store has no space for the new segment the log is left
    /// sealed and waiting, and [`LogError::OutOfSpace`] is returned without
    /// poisoning: nothing was written that a retry would repeat, so `roll`
    /// may be called again once space is back (recovery after a crash
    /// meanwhile starts the new segment itself, as for any sealed tail).
    /// Any other failure poisons the log.
    pub fn roll(&mut self) -> Result<SegmentId, LogError> {
        self.check_poison()?;
        if !self.sealed_awaiting_next {
            self.push(KIND_SEAL, Payload::Copied(&[]));
            self.sync()?;
            self.sealed_awaiting_next = true;
        }
        let next = self.current + 1;
        match self.store.create(next, self.config.segment_size) {
            Err(e) if e.is_out_of_space() => {
                return Err(LogError::OutOfSpace {
                    segment: next,
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(self.poisoned(e.into())),
            Ok(()) => {}
        }
        if let Err(e) = write_segment_header(&*self.store, next, self.next_sequence) {
            return Err(self.poisoned(e));
        }
        self.sealed_awaiting_next = false;
        self.current = next;
        self.capacity = self.config.segment_size;
        self.written_end = FIRST_RECORD_OFFSET;
        let mut shared = write_lock(&self.shared);
        shared.segments.insert(
            next,
            Extent {
                capacity: self.capacity,
                end: FIRST_RECORD_OFFSET,
            },
        );
        shared.durable_end = LogPosition {
            segment: next,
            offset: FIRST_RECORD_OFFSET,
        };
        Ok(next)
    }

    /// Writes everything appended with one vectored write, without syncing;
    /// returns the point a [`LogSyncer`] must sync to make it durable (none
    /// when nothing was appended). A failed write poisons the log.
    pub fn write(&mut self) -> Result<Option<SyncPoint>, LogError> {
        self.check_poison()?;
        if self.buffer.is_empty() {
            return Ok(None);
        }
        if let Err(e) =
            self.store
                .write_vectored_at(self.current, self.written_end, &self.buffer.slices())
        {
            return Err(self.poisoned(e.into()));
        }
        self.written_end += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(Some(SyncPoint {
            end: LogPosition {
                segment: self.current,
                offset: self.written_end,
            },
        }))
    }

    /// [`SegmentLog::write`], then sync: afterwards everything appended is
    /// durable and visible to readers. A failed write or sync poisons the
    /// log: this and every later call returns [`LogError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.write()?;
        if self.current_durable_end() >= self.written_end {
            return Ok(());
        }
        self.syncer().sync(SyncPoint {
            end: LogPosition {
                segment: self.current,
                offset: self.written_end,
            },
        })
    }

    /// A handle that syncs what this log writes, and removes old segments,
    /// from another thread.
    pub fn syncer(&self) -> LogSyncer<S> {
        LogSyncer::new(Arc::clone(&self.store), Arc::clone(&self.shared))
    }

    fn poisoned(&mut self, cause: LogError) -> LogError {
        self.buffer.clear();
        self.syncer().poison(self.current, cause)
    }

    /// Durably removes every segment with id < `segment` (never the current
    /// one), oldest first.
    pub fn remove_segments_before(&mut self, segment: SegmentId) -> Result<(), LogError> {
        self.syncer().remove_segments_before(segment)
    }

    /// Live segment ids, ascending.
    pub fn segments(&self) -> Vec<SegmentId> {
        read_lock(&self.shared).segments.keys().copied().collect()
    }

    pub fn current_segment(&self) -> SegmentId {
        self.current
    }

    pub fn durable_end(&self) -> LogPosition {
        read_lock(&self.shared).durable_end
    }

    /// Disk space held by live segments (they are preallocated).
    pub fn disk_bytes(&self) -> u64 {
        self.syncer().disk_bytes()
    }

    pub fn reader(&self) -> LogReader<S> {
        LogReader::new(Arc::clone(&self.store), Arc::clone(&self.shared))
    }

    pub fn is_poisoned(&self) -> bool {
        read_lock(&self.shared).poison.is_some()
    }

    /// The error that poisoned the log, if any.
    pub fn poison_cause(&self) -> Option<String> {
        self.syncer().poison_cause()
    }

    /// Bytes appended but not yet synced.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }
}

/// Creates segment `id` and durably writes its header.
fn start_segment<S: LogStore>(
    store: &S,
    id: SegmentId,
    capacity: u64,
    first_sequence: u64,
) -> Result<(), LogError> {
    store.create(id, capacity)?;
    write_segment_header(store, id, first_sequence)
}

/// Heads a just-created segment and syncs it.
fn write_segment_header<S: LogStore>(
    store: &S,
    id: SegmentId,
    first_sequence: u64,
) -> Result<(), LogError> {
    let header = SegmentHeader {
        segment: id,
        first_sequence,
    };
    store.write_at(id, 0, &header.encode())?;
    store.sync(id)?;
    Ok(())
}
