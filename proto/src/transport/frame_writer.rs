//! Writes frames with vectored writes, so a large payload goes from where
//! it is to the socket without being copied into a send buffer first.
//!
//! ```text
//!  push(payload) ─▶ staged: [header|small payload|header|header|small ...]
//!                   parts:  Staged(0..a), Payload(large), Staged(a..b), ...
//!  flush()       ─▶ write_vectored(parts as IoSlices), resuming after a short write
//! ```
//!
//! Small payloads are copied next to their headers: for them a copy is
//! cheaper than an extra I/O vector entry.

use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frame::{frame_header, FrameError};

/// Payloads up to this size are copied next to their header.
const COPY_UP_TO: usize = 2048;
/// I/O vector entries per write (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 1024;

pub(super) struct FrameWriter<W> {
    io: W,
    max_frame_len: u32,
    queued: Queued,
}

/// Frames waiting to be written, as I/O vector parts.
#[derive(Default)]
struct Queued {
    staged: Vec<u8>,
    parts: Vec<Part>,
    /// The first part not fully written, and how much of it was.
    front: usize,
    front_written: usize,
}

enum Part {
    Staged(Range<usize>),
    Payload(Bytes),
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(super) fn new(io: W, max_frame_len: u32) -> Self {
        FrameWriter {
            io,
            max_frame_len,
            queued: Queued::default(),
        }
    }

    /// Queues one frame; nothing is written until [`FrameWriter::flush`].
    pub(super) fn push(&mut self, payload: Bytes) -> Result<(), FrameError> {
        let header = frame_header(&payload, self.max_frame_len)?;
        self.queued.push(&header, payload);
        Ok(())
    }

    /// Writes everything queued.
    pub(super) async fn flush(&mut self) -> Result<(), FrameError> {
        while !self.queued.is_written() {
            let written = self.io.write_vectored(&self.queued.slices()).await?;
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.queued.advance(written);
        }
        self.queued.clear();
        self.io.flush().await?;
        Ok(())
    }

    pub(super) async fn close(mut self) -> Result<(), FrameError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

impl Queued {
    fn push(&mut self, header: &[u8], payload: Bytes) {
        let start = self.staged.len();
        self.staged.extend_from_slice(header);
        if payload.len() <= COPY_UP_TO {
            self.staged.extend_from_slice(&payload);
            self.stage_from(start);
        } else {
            self.stage_from(start);
            self.parts.push(Part::Payload(payload));
        }
    }

    /// Extends the last part when it is staged and ends at `start`.
    fn stage_from(&mut self, start: usize) {
        let end = self.staged.len();
        match self.parts.last_mut() {
            Some(Part::Staged(range)) if range.end == start => range.end = end,
            _ => self.parts.push(Part::Staged(start..end)),
        }
    }

    fn is_written(&self) -> bool {
        self.front == self.parts.len()
    }

    fn clear(&mut self) {
        self.parts.clear();
        self.staged.clear();
        self.front = 0;
        self.front_written = 0;
    }

    fn part(&self, index: usize) -> &[u8] {
        match &self.parts[index] {
            Part::Staged(range) => &self.staged[range.clone()],
            Part::Payload(payload) => payload,
        }
    }

    /// What is left to write, from the first unwritten byte.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let end = self.parts.len().min(self.front + MAX_SLICES);
        (self.front..end)
            .map(|index| {
                let part = self.part(index);
                let skip = if index == self.front {
                    self.front_written
                } else {
                    0
                };
                IoSlice::new(&part[skip..])
            })
            .collect()
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let left = self.part(self.front).len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front += 1;
            self.front_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::frame::FrameCodec;

    /// A sink that takes at most `chunk` bytes per write, as a full socket
    /// buffer does.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for slice in slices {
                let take = slice.len().min(self.chunk - n);
                self.out.extend_from_slice(&slice[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<Bytes> {
        let mut buf = bytes::BytesMut::from(bytes);
        let mut codec = FrameCodec::default();
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn write_through(payloads: &[Vec<u8>], chunk: usize, flush_every: usize) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut writer = FrameWriter::new(
                Trickle {
                    out: Vec::new(),
                    chunk,
                },
                u32::MAX,
            );
            for (i, payload) in payloads.iter().enumerate() {
                writer.push(Bytes::copy_from_slice(payload)).unwrap();
                if (i + 1) % flush_every == 0 {
                    writer.flush().await.unwrap();
                }
            }
            writer.flush().await.unwrap();
            writer.io.out
        })
    }

    proptest! {
        #[test]
        fn frames_survive_short_writes(
            sizes in proptest::collection::vec(0usize..6000, 0..40),
            chunk in 1usize..9000,
            flush_every in 1usize..50,
        ) {
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (0..*n).map(|j| (i * 31 + j) as u8).collect())
                .collect();
            let out = write_through(&payloads, chunk, flush_every);
            let decoded: Vec<Vec<u8>> = decode_all(&out).iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(decoded, payloads);
        }
    }

    #[test]
    fn a_payload_over_the_cap_is_refused_and_nothing_is_queued() {
        let mut writer = FrameWriter::new(
            Trickle {
                out: Vec::new(),
                chunk: 64,
            },
            4,
        );
        assert!(matches!(
            writer.push(Bytes::from_static(b"fives")),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert!(writer.queued.parts.is_empty() && writer.queued.staged.is_empty());
    }
}
