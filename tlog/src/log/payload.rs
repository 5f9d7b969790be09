//! A record's payload with its crc32c, computed by whoever made the payload:
//! the writer is the log's one serial stage, so it should not pass over a
//! large payload again.
//!
//! A payload is one buffer, or parts written back to back: a large commit's
//! record is its header followed by the blocks where they arrived, so the
//! blocks are neither copied nor read twice.
//!
//! ```text
//!  parts:  [record header | team table] [block 1 ..........] [block 2 ...]
//!  crc:    crc32c over the parts in order, as if they were one buffer
//! ```

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksummedPayload {
    parts: Parts,
    len: usize,
    crc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Parts {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl ChecksummedPayload {
    pub fn new(bytes: Bytes) -> ChecksummedPayload {
        ChecksummedPayload {
            crc: crc32c::crc32c(&bytes),
            len: bytes.len(),
            parts: Parts::One(bytes),
        }
    }

    /// The payload made of `parts`, back to back.
    pub fn from_parts(parts: Vec<Bytes>) -> ChecksummedPayload {
        let crc = parts
            .iter()
            .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
        ChecksummedPayload {
            crc,
            len: parts.iter().map(Bytes::len).sum(),
            parts: Parts::Many(parts),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn crc(&self) -> u32 {
        self.crc
    }

    pub fn into_parts(self) -> impl Iterator<Item = Bytes> {
        let (one, many) = match self.parts {
            Parts::One(bytes) => (Some(bytes), Vec::new()),
            Parts::Many(parts) => (None, parts),
        };
        one.into_iter().chain(many)
    }

    /// The payload in one buffer (copied when it is in parts).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts {
            Parts::One(bytes) => bytes.clone(),
            Parts::Many(parts) => {
                let mut whole = bytes::BytesMut::with_capacity(self.len);
                for part in parts {
                    whole.extend_from_slice(part);
                }
                whole.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_checksum_and_concatenate_as_one_buffer() {
        let whole = Bytes::from_static(b"header|first block|second block");
        let parts = vec![whole.slice(..7), whole.slice(7..19), whole.slice(19..)];
        let split = ChecksummedPayload::from_parts(parts.clone());
        let one = ChecksummedPayload::new(whole.clone());
        assert_eq!((split.len(), split.crc()), (one.len(), one.crc()));
        assert_eq!(split.to_bytes(), whole);
        assert_eq!(split.into_parts().collect::<Vec<_>>(), parts);
        assert_eq!(one.into_parts().collect::<Vec<_>>(), vec![whole]);
    }
}
