//! Byte layout of segment headers and records (see the `log` module doc for
//! the diagram). All integers are little-endian; every header carries a magic,
//! and a crc32c (Castagnoli) so no stale or torn bytes can pass as valid.

use crate::store::SegmentId;

/// Identifies a teamlog segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TLOGSEG\0";
/// On-disk format version, in the segment header; a reader refuses others.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes reserved for the segment header; records start right after it.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Offset of the first record in every segment.
pub const FIRST_RECORD_OFFSET: u64 = SEGMENT_HEADER_LEN;
/// Identifies a record header ("TLR2": the 2 tracks `FORMAT_VERSION`).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TLR2");
/// Bytes of a record header; the payload follows.
pub const RECORD_HEADER_LEN: u64 = 32;
/// Records start at multiples of this, so recovery can probe for headers.
pub const RECORD_ALIGN: u64 = 8;

/// A record carrying a caller's payload.
pub(super) const KIND_DATA: u32 = 1;
/// The last record of a segment, written by `roll`: the segment is complete.
pub(super) const KIND_SEAL: u32 = 2;
/// Space every segment keeps free for its seal record.
pub(super) const SEAL_LEN: u64 = RECORD_HEADER_LEN;

const SEGMENT_CRC_AT: usize = 60;

/// Bytes a record with `payload_len` bytes of payload takes on disk.
pub(super) fn record_len(payload_len: u64) -> u64 {
    (RECORD_HEADER_LEN + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub segment: SegmentId,
    /// Sequence number of the segment's first record, so sequences stay
    /// strictly increasing across segments even when older ones are removed.
    pub first_sequence: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_sequence.to_le_bytes());
        let crc = crc32c::crc32c(&b[..SEGMENT_CRC_AT]);
        b[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies the header of the segment stored as `id`.
    pub fn decode(buf: &[u8], id: SegmentId) -> Result<SegmentHeader, String> {
        let header = SegmentHeader::decode_any(buf)?;
        if header.segment != id {
            return Err(format!("header names segment {}", header.segment));
        }
        Ok(header)
    }

    /// Decodes and verifies a segment header, whichever segment it names.
    pub fn decode_any(buf: &[u8]) -> Result<SegmentHeader, String> {
        let b = buf
            .get(..SEGMENT_HEADER_LEN as usize)
            .ok_or_else(|| format!("segment is {} bytes, shorter than its header", buf.len()))?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment header magic".into());
        }
        let stored_crc = u32_at(b, SEGMENT_CRC_AT);
        if crc32c::crc32c(&b[..SEGMENT_CRC_AT]) != stored_crc {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "segment format version {version}, this build reads only {FORMAT_VERSION}"
            ));
        }
        let header_len = u32_at(b, 12);
        if u64::from(header_len) != SEGMENT_HEADER_LEN {
            return Err(format!("segment header length {header_len}"));
        }
        Ok(SegmentHeader {
            segment: u64_at(b, 16),
            first_sequence: u64_at(b, 24),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordHeader {
    pub kind: u32,
    pub payload_len: u32,
    /// Strictly increasing (by one) across the whole log.
    pub sequence: u64,
    /// Segment offset of the first record written since the previous sync of
    /// this segment: lets recovery tell a torn tail from corruption.
    pub batch_start: u64,
}

impl RecordHeader {
    /// Bytes the whole record takes on disk, padding included.
    pub fn record_len(&self) -> u64 {
        record_len(u64::from(self.payload_len))
    }
}

/// The header of a record whose payload has the crc32c `payload_crc`; on
/// disk it is followed by the payload and [`padding`] zeros.
///
/// The header's checksum continues the payload's over the header's first 28
/// bytes, so a payload checksummed where it was made (off the writer's
/// serial path) is never read again to write its record.
pub(super) fn record_header(
    header: RecordHeader,
    payload_crc: u32,
) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&header.payload_len.to_le_bytes());
    h[8..16].copy_from_slice(&header.sequence.to_le_bytes());
    h[16..24].copy_from_slice(&header.batch_start.to_le_bytes());
    h[24..28].copy_from_slice(&header.kind.to_le_bytes());
    let crc = record_crc(payload_crc, &h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The zeros after a record's payload, up to the next record boundary.
pub(super) fn padding(header: &RecordHeader) -> &'static [u8] {
    const ZEROS: [u8; RECORD_ALIGN as usize] = [0; RECORD_ALIGN as usize];
    let len = header.record_len() - RECORD_HEADER_LEN - u64::from(header.payload_len);
    &ZEROS[..len as usize]
}

/// The on-disk length of the record whose header starts `buf`, judged by
/// its magic alone (the checksum needs the whole record).
pub(super) fn peek_record_len(buf: &[u8]) -> Option<u64> {
    let h = buf.get(..RECORD_HEADER_LEN as usize)?;
    (u32_at(h, 0) == RECORD_MAGIC).then(|| record_len(u64::from(u32_at(h, 4))))
}

/// Decodes and verifies the record at the start of `buf`, which must hold
/// the whole record. Returns the header; the payload is
/// `buf[RECORD_HEADER_LEN..][..payload_len]`.
pub(super) fn decode_record(buf: &[u8]) -> Result<RecordHeader, String> {
    let h = buf
        .get(..RECORD_HEADER_LEN as usize)
        .ok_or("record header runs past the end of the segment")?;
    if u32_at(h, 0) != RECORD_MAGIC {
        return Err(if h.iter().all(|&b| b == 0) {
            "no record (zeros)".into()
        } else {
            "bad record magic".into()
        });
    }
    let header = RecordHeader {
        payload_len: u32_at(h, 4),
        sequence: u64_at(h, 8),
        batch_start: u64_at(h, 16),
        kind: u32_at(h, 24),
    };
    let payload = buf
        .get(RECORD_HEADER_LEN as usize..)
        .and_then(|p| p.get(..header.payload_len as usize))
        .ok_or_else(|| {
            format!(
                "record payload of {} bytes runs past the end of the segment",
                header.payload_len
            )
        })?;
    if record_crc(crc32c::crc32c(payload), &h[..28]) != u32_at(h, 28) {
        return Err("record checksum mismatch".into());
    }
    if header.kind != KIND_DATA && header.kind != KIND_SEAL {
        return Err(format!("unknown record kind {}", header.kind));
    }
    Ok(header)
}

/// crc32c of a record's payload followed by its header's first 28 bytes.
fn record_crc(payload_crc: u32, header_start: &[u8]) -> u32 {
    crc32c::crc32c_append(payload_crc, header_start)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
