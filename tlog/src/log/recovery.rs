//! Recovery at open: verify every segment, visit every record, decide torn
//! tail versus corruption in the last segment (rules in the `log` module doc).
//!
//! ```text
//!  seg 3: header r r r seal   must be sealed: anything bad is corruption
//!  seg 4: header r r X ? ? 0  last: probe past X for a later batch
//!                   │          found ─▶ Corrupt { offset: X }
//!                   └───────── none  ─▶ torn tail: zero [X, ..), sync
//! ```

use std::collections::BTreeMap;

use super::format::{
    self, SegmentHeader, FIRST_RECORD_OFFSET, KIND_SEAL, RECORD_ALIGN, RECORD_HEADER_LEN,
    RECORD_MAGIC,
};
use super::{corrupt, Extent, LogError, RecordLocation};
use crate::store::{LogStore, SegmentId};

/// Bytes of zeros written per call when truncating a torn tail.
const ZERO_CHUNK: usize = 1 << 20;

pub(super) struct Recovered {
    /// Every surviving segment except the tail.
    pub segments: BTreeMap<SegmentId, Extent>,
    pub tail: Option<Tail>,
    /// Where a new segment goes if the tail is sealed or there is none.
    pub next_segment: SegmentId,
    pub next_sequence: u64,
}

pub(super) struct Tail {
    pub segment: SegmentId,
    pub capacity: u64,
    /// End of valid data; appends continue here unless `sealed`.
    pub end: u64,
    pub sealed: bool,
}

/// How the in-order walk of one segment ended.
struct Walk {
    /// Offset after the last valid record (after the seal if sealed).
    end: u64,
    next_sequence: u64,
    sealed: bool,
    /// Why the record at `end` is invalid, when not sealed.
    reason: String,
}

pub(super) fn recover<S, F>(store: &S, mut visit: F) -> Result<Recovered, LogError>
where
    S: LogStore,
    F: FnMut(RecordLocation, &[u8]) -> Result<(), LogError>,
{
    let ids = store.list()?;
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(corrupt(
                store,
                pair[0] + 1,
                0,
                format!("segment missing between {} and {}", pair[0], pair[1]),
            ));
        }
    }
    let mut segments = BTreeMap::new();
    let mut tail: Option<Tail> = None;
    let mut next_segment = ids.first().copied().unwrap_or(1);
    let mut next_sequence: Option<u64> = None;
    let mut buf = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        let capacity = read_segment(store, id, &mut buf)?;
        let header = match SegmentHeader::decode(&buf, id) {
            Ok(header) => header,
            Err(reason) if is_last && never_started(&buf, id) => {
                // roll() (or the first open) crashed between creating the
                // segment and syncing its header: nothing was ever in it.
                tracing::warn!(segment = id, path = %store.describe(id), %reason, "removing segment left by an interrupted creation");
                store.remove(id)?;
                next_segment = id;
                break;
            }
            Err(reason) => return Err(corrupt(store, id, 0, reason)),
        };
        if let Some(expected) = next_sequence {
            if header.first_sequence != expected {
                return Err(corrupt(
                    store,
                    id,
                    0,
                    format!(
                        "segment starts at sequence {}, the previous one ended before {expected}",
                        header.first_sequence
                    ),
                ));
            }
        }
        let walk = walk(&buf, id, header.first_sequence, &mut visit)?;
        if !walk.sealed {
            if !is_last {
                return Err(corrupt(
                    store,
                    id,
                    walk.end,
                    format!("{} in a sealed-off segment", walk.reason),
                ));
            }
            if let Some((at, sequence, batch_start)) =
                later_batch(&buf, walk.end, walk.next_sequence)
            {
                return Err(corrupt(
                    store,
                    id,
                    walk.end,
                    format!(
                        "{}, but the record at {at} (sequence {sequence}) is from a batch starting at {batch_start}, \
                         written after this offset was synced",
                        walk.reason
                    ),
                ));
            }
            truncate_tail(store, id, &buf, walk.end)?;
        }
        if let Some(prev) = tail.take() {
            segments.insert(
                prev.segment,
                Extent {
                    capacity: prev.capacity,
                    end: prev.end,
                },
            );
        }
        tail = Some(Tail {
            segment: id,
            capacity,
            end: walk.end,
            sealed: walk.sealed,
        });
        next_segment = id + 1;
        next_sequence = Some(walk.next_sequence);
    }
    if let Some(t) = tail.as_ref().filter(|t| t.sealed) {
        // A sealed tail stays a read-only segment; appends go to a new one.
        segments.insert(
            t.segment,
            Extent {
                capacity: t.capacity,
                end: t.end,
            },
        );
    }
    Ok(Recovered {
        segments,
        tail,
        next_segment,
        next_sequence: next_sequence.unwrap_or(1),
    })
}

/// Reads all of segment `id` into `buf`; returns its capacity.
fn read_segment<S: LogStore>(store: &S, id: SegmentId, buf: &mut Vec<u8>) -> Result<u64, LogError> {
    let capacity = store.capacity(id)?;
    let len = usize::try_from(capacity).map_err(|_| {
        corrupt(
            store,
            id,
            0,
            format!("capacity {capacity} does not fit in memory"),
        )
    })?;
    buf.clear();
    buf.resize(len, 0);
    let n = store.read_at(id, 0, buf)?;
    buf.truncate(n);
    Ok(capacity)
}

/// Checks records in order from the first, visiting data records, until a
/// seal or the first invalid record.
fn walk<F>(buf: &[u8], id: SegmentId, first_sequence: u64, visit: &mut F) -> Result<Walk, LogError>
where
    F: FnMut(RecordLocation, &[u8]) -> Result<(), LogError>,
{
    let mut pos = FIRST_RECORD_OFFSET;
    let mut sequence = first_sequence;
    loop {
        let header = match check_record(buf, pos, sequence) {
            Ok(header) => header,
            Err(reason) => {
                return Ok(Walk {
                    end: pos,
                    next_sequence: sequence,
                    sealed: false,
                    reason,
                })
            }
        };
        let len = header.record_len();
        sequence += 1;
        if header.kind == KIND_SEAL {
            return Ok(Walk {
                end: pos + len,
                next_sequence: sequence,
                sealed: true,
                reason: String::new(),
            });
        }
        let start = (pos + RECORD_HEADER_LEN) as usize;
        let payload = &buf[start..start + header.payload_len as usize];
        let location = RecordLocation {
            segment: id,
            offset: pos,
            len: len as u32,
        };
        visit(location, payload)?;
        pos += len;
    }
}

/// Verifies the record at `pos`, which must carry `sequence`.
fn check_record(buf: &[u8], pos: u64, sequence: u64) -> Result<format::RecordHeader, String> {
    let at = buf
        .get(pos as usize..)
        .ok_or("offset past the end of the segment")?;
    let header = format::decode_record(at)?;
    if header.sequence != sequence {
        return Err(format!(
            "sequence {} where {sequence} was expected",
            header.sequence
        ));
    }
    if header.batch_start < FIRST_RECORD_OFFSET
        || header.batch_start > pos
        || header.batch_start % RECORD_ALIGN != 0
    {
        return Err(format!("batch start {} is impossible", header.batch_start));
    }
    Ok(header)
}

/// Finds a valid record after `from` with a sequence of at least
/// `min_sequence` whose batch started after `from`: proof that `from` had
/// been synced. Returns (offset, sequence, batch_start).
fn later_batch(buf: &[u8], from: u64, min_sequence: u64) -> Option<(u64, u64, u64)> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut pos = from as usize + RECORD_ALIGN as usize;
    while pos + RECORD_HEADER_LEN as usize <= buf.len() {
        if buf[pos..pos + 4] == magic {
            if let Ok(h) = format::decode_record(&buf[pos..]) {
                if h.sequence >= min_sequence && h.batch_start > from {
                    return Some((pos as u64, h.sequence, h.batch_start));
                }
            }
        }
        pos += RECORD_ALIGN as usize;
    }
    None
}

/// Zeroes everything non-zero from `from` on and syncs, so no stale byte of
/// the torn batch can later pass as a record.
fn truncate_tail<S: LogStore>(
    store: &S,
    id: SegmentId,
    buf: &[u8],
    from: u64,
) -> Result<(), LogError> {
    let tail = buf.get(from as usize..).unwrap_or(&[]);
    let Some(last) = tail.iter().rposition(|&b| b != 0) else {
        return Ok(());
    };
    let len = last + 1;
    tracing::warn!(segment = id, path = %store.describe(id), offset = from, bytes = len, "truncating torn log tail");
    let zeros = vec![0u8; len.min(ZERO_CHUNK)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        store.write_at(id, from + done as u64, &zeros[..n])?;
        done += n;
    }
    store.sync(id)?;
    Ok(())
}

/// Whether a last segment without its own header is one whose creation was
/// interrupted, not one whose header was damaged: records are written only
/// after the header is synced, so a new segment holds either zeros or, when
/// the file was recycled, the stale but valid header (and records) of the
/// segment it used to be.
fn never_started(buf: &[u8], id: SegmentId) -> bool {
    is_zero(buf.get(FIRST_RECORD_OFFSET as usize..).unwrap_or(&[]))
        || SegmentHeader::decode_any(buf).is_ok_and(|stale| stale.segment < id)
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}
