//! Framing of messages on a byte stream.
//!
//! ```text
//! frame := length:u32 (LE, of the payload) | crc32c:u32 (LE, of the payload) | payload
//! ```
//!
//! [`FrameCodec`] checks the length against its cap before reserving any
//! buffer space, so a hostile length prefix cannot make a process allocate,
//! and checks the checksum before handing the payload on.
//!
//! Small frames are read many at a time into a shared read buffer. A frame of
//! [`OWN_BUFFER_FROM`] bytes or more is handed on in an allocation of its
//! own, exactly its size, so whoever keeps a slice of it (a TLog keeps the
//! blocks of a large commit) pins that frame and nothing else. It is read
//! straight into that allocation, or copied there in the rare case that it
//! was read ahead with smaller frames:
//!
//! ```text
//!  small frames: [f1|f2|f3|f4 ........ read ahead]   one read, many frames
//!  large frame:  [hdr]  then  [hdr|payload .......]   a buffer of its own
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default cap on a frame's payload: 64 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024 * 1024;

/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 8;

/// Frames of this many bytes or more (header included) are read into a
/// buffer of their own, exactly their size.
pub const OWN_BUFFER_FROM: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into checked payloads and frames payloads for
/// sending.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    pub max_frame_len: u32,
    /// The buffer holds the start of a large frame and was allocated for it.
    in_own_buffer: bool,
    /// The last frame was large. Large frames come in runs, so the next read
    /// takes just a header, and a large frame behind it is not read ahead
    /// into a shared buffer only to be copied out.
    after_large: bool,
}

impl FrameCodec {
    pub fn new(max_frame_len: u32) -> Self {
        FrameCodec {
            max_frame_len,
            in_own_buffer: false,
            after_large: false,
        }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = src.first_chunk::<FRAME_HEADER_LEN>() else {
            if self.after_large && src.is_empty() {
                *src = BytesMut::with_capacity(FRAME_HEADER_LEN);
            } else {
                read_ahead(src, FRAME_HEADER_LEN);
            }
            return Ok(None);
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let expected = u32::from_le_bytes([c0, c1, c2, c3]);
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_frame_len,
            });
        }
        let total = FRAME_HEADER_LEN + len as usize;
        let large = total >= OWN_BUFFER_FROM;
        if src.len() < total {
            // Safe to allocate now that the length is within the cap.
            if !large {
                read_ahead(src, total);
            } else if !self.in_own_buffer {
                let mut own = BytesMut::with_capacity(total);
                own.extend_from_slice(src);
                *src = own;
                self.in_own_buffer = true;
            }
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let payload = if large && !self.in_own_buffer {
            // Read ahead with smaller frames: copied out, so it still pins
            // nothing but itself.
            let payload = Bytes::copy_from_slice(&src[..len as usize]);
            src.advance(len as usize);
            payload
        } else {
            src.split_to(len as usize).freeze()
        };
        self.in_own_buffer = false;
        self.after_large = large;
        let actual = crc32c::crc32c(&payload);
        if actual != expected {
            return Err(FrameError::BadChecksum { expected, actual });
        }
        Ok(Some(payload))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        let header = frame_header(&payload, self.max_frame_len)?;
        dst.reserve(FRAME_HEADER_LEN + payload.len());
        dst.put_slice(&header);
        dst.put_slice(&payload);
        Ok(())
    }
}

/// Below this much free space, the read buffer grows before the next read.
const MIN_READ: usize = 8 << 10;
/// How much room a read buffer that grows gets beyond the frame in hand:
/// one read then brings in many small frames, not one at a time.
const READ_AHEAD: usize = 64 << 10;

/// Makes room in `src` for the rest of a frame of `total` bytes (header
/// included) and, when little room is left, for the frames after it.
fn read_ahead(src: &mut BytesMut, total: usize) {
    let rest = total.saturating_sub(src.len());
    let spare = src.capacity() - src.len();
    if spare < rest || spare < MIN_READ {
        src.reserve(rest.max(READ_AHEAD));
    }
}

/// The header that goes before `payload`, or `TooLarge` past the cap.
pub fn frame_header(
    payload: &[u8],
    max_frame_len: u32,
) -> Result<[u8; FRAME_HEADER_LEN], FrameError> {
    header_of(payload.len(), || crc32c::crc32c(payload), max_frame_len)
}

fn header_of(
    len: usize,
    crc: impl FnOnce() -> u32,
    max_frame_len: u32,
) -> Result<[u8; FRAME_HEADER_LEN], FrameError> {
    let len = u32::try_from(len)
        .ok()
        .filter(|len| *len <= max_frame_len)
        .ok_or(FrameError::TooLarge {
            len: len as u64,
            max: max_frame_len,
        })?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc().to_le_bytes());
    Ok(header)
}

/// A frame's payload: whole, or in parts sent back to back (an encoded
/// message, then the large blocks it carries after itself, each written
/// from its own buffer). The receiver sees one payload either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramePayload {
    Whole(Bytes),
    Parts(Vec<Bytes>),
}

impl FramePayload {
    pub fn len(&self) -> usize {
        self.parts().iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        match self {
            FramePayload::Whole(bytes) => std::slice::from_ref(bytes),
            FramePayload::Parts(parts) => parts,
        }
    }

    /// The payload in one buffer, as the receiver gets it (copied when it is
    /// in parts).
    pub fn into_bytes(self) -> Bytes {
        match self {
            FramePayload::Whole(bytes) => bytes,
            FramePayload::Parts(parts) => parts.concat().into(),
        }
    }

    /// The header that goes before this payload, or `TooLarge` past the cap.
    pub fn header(&self, max_frame_len: u32) -> Result<[u8; FRAME_HEADER_LEN], FrameError> {
        let crc = || {
            self.parts()
                .iter()
                .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
        };
        header_of(self.len(), crc, max_frame_len)
    }
}

impl From<FramePayload> for Bytes {
    fn from(payload: FramePayload) -> Self {
        payload.into_bytes()
    }
}

impl From<Bytes> for FramePayload {
    fn from(bytes: Bytes) -> Self {
        FramePayload::Whole(bytes)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn framed(payloads: &[&[u8]]) -> BytesMut {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for payload in payloads {
            codec
                .encode(Bytes::copy_from_slice(payload), &mut buf)
                .unwrap();
        }
        buf
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = framed(&[b"hello", b"", b"world"]);
        let mut codec = FrameCodec::default();
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "world");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn header_is_little_endian_length_then_crc32c() {
        let buf = framed(&[b"abc"]);
        assert_eq!(buf[..4], 3u32.to_le_bytes());
        assert_eq!(buf[4..8], crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&buf[8..], b"abc");
    }

    #[test]
    fn a_frame_arriving_byte_by_byte_decodes_once_complete() {
        let whole = framed(&[b"split me"]);
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert!(codec.decode(&mut buf).unwrap().is_none(), "early at {i}");
            buf.put_u8(*byte);
        }
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "split me");
    }

    #[test]
    fn a_partial_small_frame_leaves_room_for_it_and_the_frames_after_it() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(100);
        buf.put_u32_le(0);
        assert!(FrameCodec::default().decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() - buf.len() >= READ_AHEAD);
    }

    #[test]
    fn a_partial_large_frame_gets_a_buffer_of_exactly_its_size() {
        let len = 1 << 20;
        let mut buf = BytesMut::with_capacity(READ_AHEAD);
        buf.put_u32_le(len as u32);
        buf.put_u32_le(0);
        buf.put_bytes(7, 100);
        assert!(FrameCodec::default().decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), FRAME_HEADER_LEN + len);
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 100, "what was read is kept");
    }

    /// Decodes `stream` as `FramedRead` does, each read taking at most
    /// `read_len` bytes and never more than the buffer's spare capacity.
    fn read_in_chunks(stream: &[u8], read_len: usize) -> Vec<Bytes> {
        let mut codec = FrameCodec::default();
        let (mut buf, mut at, mut frames) = (BytesMut::new(), 0, Vec::new());
        loop {
            match codec.decode(&mut buf).unwrap() {
                Some(frame) => frames.push(frame),
                None if at == stream.len() => return frames,
                None => {
                    buf.reserve(1);
                    let n = (buf.capacity() - buf.len())
                        .min(read_len)
                        .min(stream.len() - at);
                    buf.extend_from_slice(&stream[at..at + n]);
                    at += n;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn large_frames_pin_an_allocation_of_exactly_their_size(
            lens in proptest::collection::vec(
                prop_oneof![0usize..300, (OWN_BUFFER_FROM - 16)..(3 * OWN_BUFFER_FROM)],
                1..8,
            ),
            read_len in prop_oneof![1usize..64, 1000usize..300_000],
        ) {
            let payloads: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, len)| vec![i as u8; *len])
                .collect();
            let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let frames = read_in_chunks(&framed(&slices), read_len);
            prop_assert_eq!(&frames, &payloads);
            for frame in frames {
                if FRAME_HEADER_LEN + frame.len() >= OWN_BUFFER_FROM {
                    let len = frame.len();
                    let own = frame.try_into_mut();
                    prop_assert!(own.is_ok(), "a {}-byte frame shares its buffer", len);
                    prop_assert_eq!(own.unwrap().capacity(), len);
                }
            }
        }
    }

    #[test]
    fn a_4_gib_length_is_refused_without_reserving() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        buf.put_u32_le(0);
        let capacity = buf.capacity();
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME_LEN
            }
        ));
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn a_length_at_the_cap_is_accepted_and_one_above_refused() {
        let mut codec = FrameCodec::new(4);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"four"), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "four");
        assert!(matches!(
            codec.encode(Bytes::from_static(b"fives"), &mut buf),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert!(buf.is_empty(), "a refused frame must write nothing");
        let mut buf = framed(&[b"fives"]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
    }

    #[test]
    fn a_bad_checksum_is_refused() {
        let mut buf = framed(&[b"payload"]);
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::BadChecksum { expected, actual }
                if expected == crc32c::crc32c(b"payload") && actual != expected
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let whole = framed(&[b"cut short"]);
        for len in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..len]);
            assert!(
                matches!(
                    FrameCodec::default().decode_eof(&mut buf),
                    Err(FrameError::Truncated { buffered }) if buffered == len
                ),
                "cut at {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut codec = FrameCodec::new(128);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = codec.decode_eof(&mut buf);
        }

        #[test]
        fn payloads_round_trip(payloads in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8)
        ) {
            let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let mut buf = framed(&slices);
            let mut codec = FrameCodec::default();
            for payload in &payloads {
                prop_assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &payload[..]);
            }
            prop_assert!(buf.is_empty());
        }
    }
}
