//! A frame's appendix: large blocks sent after the envelope, each written
//! from its own buffer, instead of being copied into the flatbuffer by the
//! sender (which would also zero-fill a builder as large as the block).
//!
//! ```text
//!  frame payload := Envelope { appendix: n, .. } flatbuffer | block | block | ...
//!                                                           └──── n bytes ────┘
//!  TeamBlock { data: absent, attached: len } takes the next `len` bytes, in message order
//! ```
//!
//! The receiver's frame is one buffer either way: an attached block is a
//! slice of it, as an inline one is.

use bytes::Bytes;

use super::DecodeError;

/// Blocks at least this long are attached; shorter ones are copied into the
/// flatbuffer, as a write would copy them into its send buffer anyway.
pub(super) const ATTACH_FROM: usize = 2 << 10;

/// Attached blocks on their way out, in message order.
#[derive(Default)]
pub(super) struct Outgoing {
    pub blocks: Vec<Bytes>,
    pub len: usize,
}

impl Outgoing {
    /// Attaches `block`; returns the length to record in its `TeamBlock`.
    pub fn attach(&mut self, block: &Bytes) -> u32 {
        self.blocks.push(block.clone());
        self.len += block.len();
        // A block past 4 GiB makes a frame far over any cap, refused before
        // it is sent.
        u32::try_from(block.len()).unwrap_or(u32::MAX)
    }
}

/// The appendix of a received frame, taken block by block.
pub(super) struct Incoming<'a> {
    frame: &'a Bytes,
    next: usize,
    request_id: u64,
}

impl<'a> Incoming<'a> {
    /// The last `len` bytes of `frame`.
    pub fn of(frame: &'a Bytes, len: u32, request_id: u64) -> Result<Incoming<'a>, DecodeError> {
        let start = frame.len().checked_sub(len as usize).ok_or_else(|| {
            invalid(
                request_id,
                format!("appendix of {len} bytes in a frame of {}", frame.len()),
            )
        })?;
        Ok(Incoming {
            frame,
            next: start,
            request_id,
        })
    }

    /// The next attached block, of `len` bytes.
    pub fn take(&mut self, len: u32) -> Result<Bytes, DecodeError> {
        let end = self
            .next
            .checked_add(len as usize)
            .filter(|end| *end <= self.frame.len())
            .ok_or_else(|| {
                invalid(
                    self.request_id,
                    format!(
                        "an attached block of {len} bytes runs past the appendix ({} bytes left)",
                        self.frame.len() - self.next
                    ),
                )
            })?;
        let block = self.frame.slice(self.next..end);
        self.next = end;
        Ok(block)
    }

    /// The error for a block that breaks the appendix's rules.
    pub fn invalid(&self, reason: &str) -> DecodeError {
        invalid(self.request_id, reason.to_string())
    }

    /// Checks that every byte of the appendix belonged to a block.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.frame.len() - self.next {
            0 => Ok(()),
            left => Err(invalid(
                self.request_id,
                format!("{left} bytes of the appendix belong to no block"),
            )),
        }
    }
}

fn invalid(request_id: u64, reason: String) -> DecodeError {
    DecodeError::InvalidContent { request_id, reason }
}

#[cfg(test)]
mod tests {
    use flatbuffers::FlatBufferBuilder;

    use super::*;
    use crate::frame::FramePayload;
    use crate::generated::rpc as fb;
    use crate::rpc::{Envelope, Message, PeekReply, TLogCommitRequest, TeamBlockData};
    use crate::types::{StorageTeamId, Version};

    fn data(len: usize) -> Bytes {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    fn commit(blocks: &[Bytes]) -> Envelope {
        Envelope {
            request_id: 11,
            message: Message::TLogCommit(TLogCommitRequest {
                prev_version: Version(1),
                version: Version(2),
                known_committed_version: Version(0),
                teams: blocks
                    .iter()
                    .enumerate()
                    .map(|(i, data)| TeamBlockData {
                        team: StorageTeamId(i as u64),
                        data: data.clone(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn large_blocks_travel_after_the_envelope_from_their_own_buffers() {
        let small = data(ATTACH_FROM - 1);
        let (large, larger) = (data(ATTACH_FROM), data(70_000));
        let envelope = commit(&[large.clone(), small.clone(), larger.clone()]);
        let FramePayload::Parts(parts) = envelope.encode() else {
            panic!("large blocks are attached");
        };
        assert_eq!(parts.len(), 3, "the envelope, then the two large blocks");
        assert_eq!(parts[1].as_ptr(), large.as_ptr(), "not copied");
        assert_eq!(parts[2].as_ptr(), larger.as_ptr(), "not copied");
        assert!(
            parts[0].len() < small.len() + 512,
            "only the small block is inline"
        );

        let frame = FramePayload::Parts(parts).into_bytes();
        let decoded = Envelope::decode(frame.clone()).unwrap();
        assert_eq!(decoded, envelope);
        let Message::TLogCommit(commit) = decoded.message else {
            unreachable!()
        };
        let range = frame.as_ptr_range();
        for block in &commit.teams {
            assert!(range.contains(&block.data.as_ptr()), "a slice of the frame");
        }
    }

    #[test]
    fn a_message_without_large_blocks_is_one_part() {
        let envelope = commit(&[data(10)]);
        assert!(matches!(envelope.encode(), FramePayload::Whole(_)));
        let reply = Envelope {
            request_id: 3,
            message: Message::PeekReply(PeekReply {
                blocks: vec![],
                end: Version(1),
                popped: Version(0),
                max_known_version: Version(1),
                known_committed_version: Version(0),
                end_of_stream: false,
            }),
        };
        assert!(matches!(reply.encode(), FramePayload::Whole(_)));
    }

    /// A commit whose blocks say `(inline data, attached length)`, with
    /// `appendix` declared and `trailer` bytes after the envelope.
    fn crafted(blocks: &[(Option<&[u8]>, u32)], appendix: u32, trailer: &[u8]) -> Bytes {
        let mut fbb = FlatBufferBuilder::new();
        let tables: Vec<_> = blocks
            .iter()
            .map(|(inline, attached)| {
                let data = inline.map(|d| fbb.create_vector(d));
                fb::TeamBlock::create(
                    &mut fbb,
                    &fb::TeamBlockArgs {
                        team: 1,
                        data,
                        attached: *attached,
                    },
                )
            })
            .collect();
        let teams = fbb.create_vector(&tables);
        let commit = fb::TLogCommitRequest::create(
            &mut fbb,
            &fb::TLogCommitRequestArgs {
                prev_version: 1,
                version: 2,
                known_committed_version: 0,
                teams: Some(teams),
            },
        );
        let root = fb::Envelope::create(
            &mut fbb,
            &fb::EnvelopeArgs {
                request_id: 9,
                payload_type: fb::Payload::TLogCommitRequest,
                payload: Some(commit.as_union_value()),
                appendix,
            },
        );
        fbb.finish(root, None);
        [fbb.finished_data(), trailer].concat().into()
    }

    fn refusal(frame: Bytes) -> String {
        match Envelope::decode(frame) {
            Err(DecodeError::InvalidContent { request_id, reason }) => {
                assert_eq!(request_id, 9);
                reason
            }
            other => panic!("expected the request refused, got {other:?}"),
        }
    }

    #[test]
    fn an_appendix_that_does_not_add_up_refuses_the_request() {
        let tail = [7u8; 100];
        assert!(Envelope::decode(crafted(&[(None, 60), (None, 40)], 100, &tail)).is_ok());
        let cases = [
            (
                crafted(&[(None, 60)], 100_000, &tail),
                "appendix of 100000 bytes",
            ),
            (
                crafted(&[(None, 60), (None, 41)], 100, &tail),
                "runs past the appendix",
            ),
            (crafted(&[(None, 60)], 100, &tail), "belong to no block"),
            (
                crafted(&[(None, 60)], u32::MAX, &tail),
                "appendix of 4294967295",
            ),
            (
                crafted(&[(None, u32::MAX)], 100, &tail),
                "runs past the appendix",
            ),
            (
                crafted(&[(Some(b"x"), 100)], 100, &tail),
                "both inline and attached",
            ),
        ];
        for (frame, expected) in cases {
            let reason = refusal(frame);
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }
}
