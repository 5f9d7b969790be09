//! Concurrent readers of the durable part of the log.
//!
//! ```text
//!  writer: append ─▶ buffer ─sync─▶ store ─▶ publishes durable_end
//!  reader:                           store ◀─ reads only below durable_end
//! ```
//!
//! Every record read is verified again (checksum, kind, length), so a reader
//! never hands out bytes that went bad on the disk after recovery.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::format::{self, FIRST_RECORD_OFFSET, KIND_DATA, KIND_SEAL, RECORD_HEADER_LEN};
use super::{corrupt, read_lock, LogError, LogPosition, RecordLocation, Shared};
use crate::store::{LogStore, SegmentId, StoreError};

/// Smallest read `scan` issues, so small `max_bytes` still batch records.
const MIN_SCAN_READ: u64 = 64 << 10;

/// Cloneable, `Send + Sync`; reads only what is durable (never past
/// `durable_end`).
pub struct LogReader<S: LogStore> {
    store: Arc<S>,
    shared: Arc<RwLock<Shared>>,
}

impl<S: LogStore> Clone for LogReader<S> {
    fn clone(&self) -> Self {
        LogReader {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: LogStore> LogReader<S> {
    pub(super) fn new(store: Arc<S>, shared: Arc<RwLock<Shared>>) -> Self {
        LogReader { store, shared }
    }

    pub fn durable_end(&self) -> LogPosition {
        read_lock(&self.shared).durable_end
    }

    /// The position of the first record of the oldest live segment.
    pub fn begin(&self) -> LogPosition {
        let shared = read_lock(&self.shared);
        let segment = shared
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(shared.durable_end.segment);
        LogPosition {
            segment,
            offset: FIRST_RECORD_OFFSET,
        }
    }

    /// Durable end of `segment`'s data: the error says why there is none.
    fn segment_end(&self, at: LogPosition) -> Result<u64, LogError> {
        let shared = read_lock(&self.shared);
        match shared.segments.get(&at.segment) {
            Some(extent) => Ok(extent.end),
            None if at.segment < shared.durable_end.segment => {
                Err(LogError::SegmentRemoved(at.segment))
            }
            None => Err(LogError::NotDurable {
                at,
                durable_end: shared.durable_end,
            }),
        }
    }

    fn read_exact(&self, segment: SegmentId, offset: u64, len: u64) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len as usize];
        let n = self
            .store
            .read_at(segment, offset, &mut buf)
            .map_err(|e| match e {
                StoreError::NoSuchSegment(id) => LogError::SegmentRemoved(id),
                e => LogError::Store(e),
            })?;
        if n as u64 != len {
            return Err(corrupt(
                &*self.store,
                segment,
                offset + n as u64,
                "segment ends inside durable data",
            ));
        }
        Ok(buf)
    }

    /// Reads one durable record's payload, checksum verified.
    pub fn read(&self, loc: RecordLocation) -> Result<Bytes, LogError> {
        let at = LogPosition {
            segment: loc.segment,
            offset: loc.offset,
        };
        let end = self.segment_end(at)?;
        if loc.offset.saturating_add(u64::from(loc.len)) > end {
            return Err(LogError::NotDurable {
                at,
                durable_end: self.durable_end(),
            });
        }
        let buf = Bytes::from(self.read_exact(loc.segment, loc.offset, u64::from(loc.len))?);
        let header = format::decode_record(&buf)
            .map_err(|reason| corrupt(&*self.store, loc.segment, loc.offset, reason))?;
        if header.kind != KIND_DATA || header.record_len() != u64::from(loc.len) {
            return Err(corrupt(
                &*self.store,
                loc.segment,
                loc.offset,
                format!(
                    "a record of kind {} and length {} is not the one asked for (length {})",
                    header.kind,
                    header.record_len(),
                    loc.len
                ),
            ));
        }
        Ok(payload(&buf, 0, header.payload_len))
    }

    /// Reads consecutive durable records starting at `from` (a record start),
    /// following into later segments, until `max_bytes` of records are read
    /// (at least one record if any) or the durable end.
    pub fn scan(
        &self,
        from: LogPosition,
        max_bytes: usize,
    ) -> Result<Vec<(RecordLocation, Bytes)>, LogError> {
        let max_bytes = max_bytes as u64;
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut pos = from;
        loop {
            let durable_end = self.durable_end();
            if pos >= durable_end {
                return Ok(out);
            }
            let end = self.segment_end(pos)?;
            if pos.offset >= end {
                pos = next_segment(pos.segment);
                continue;
            }
            let want = (end - pos.offset).min(max_bytes.saturating_sub(total).max(MIN_SCAN_READ));
            let mut chunk = Bytes::from(self.read_exact(pos.segment, pos.offset, want)?);
            let mut off = 0u64;
            while off + RECORD_HEADER_LEN <= chunk.len() as u64 {
                let at = pos.offset + off;
                let rest = &chunk[off as usize..];
                let len = format::peek_record_len(rest).ok_or_else(|| {
                    corrupt(
                        &*self.store,
                        pos.segment,
                        at,
                        "no record header (not a record start?)",
                    )
                })?;
                if at + len > end {
                    return Err(corrupt(
                        &*self.store,
                        pos.segment,
                        at,
                        "record runs past the durable end",
                    ));
                }
                if len > rest.len() as u64 {
                    if out.is_empty() && off == 0 {
                        // A first record larger than the read: fetch it whole.
                        chunk = Bytes::from(self.read_exact(pos.segment, pos.offset, len)?);
                        continue;
                    }
                    break;
                }
                let header = format::decode_record(rest)
                    .map_err(|reason| corrupt(&*self.store, pos.segment, at, reason))?;
                if header.kind == KIND_SEAL {
                    off = end - pos.offset;
                    break;
                }
                out.push((
                    RecordLocation {
                        segment: pos.segment,
                        offset: at,
                        len: len as u32,
                    },
                    payload(&chunk, off as usize, header.payload_len),
                ));
                total += len;
                off += len;
                if total >= max_bytes {
                    return Ok(out);
                }
            }
            if off == 0 {
                return Err(corrupt(
                    &*self.store,
                    pos.segment,
                    pos.offset,
                    "record header runs past the durable end",
                ));
            }
            pos.offset += off;
        }
    }
}

fn next_segment(segment: SegmentId) -> LogPosition {
    LogPosition {
        segment: segment + 1,
        offset: FIRST_RECORD_OFFSET,
    }
}

fn payload(chunk: &Bytes, record_at: usize, payload_len: u32) -> Bytes {
    let start = record_at + RECORD_HEADER_LEN as usize;
    chunk.slice(start..start + payload_len as usize)
}
