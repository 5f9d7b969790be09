//! Writes frames with vectored writes, so a large payload goes from where
//! it is to the socket without being copied into a send buffer first.
//!
//! ```text
//!  push(payload) ─▶ Scatter: [header|small payload|header] [large payload] [header|...]
//!  flush()       ─▶ write_vectored(slices), resuming after a short write
//! ```

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frame::{FrameError, FramePayload};
use crate::scatter::{Scatter, MAX_SLICES};

pub(super) struct FrameWriter<W> {
    io: W,
    max_frame_len: u32,
    queued: Scatter,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(super) fn new(io: W, max_frame_len: u32) -> Self {
        FrameWriter {
            io,
            max_frame_len,
            queued: Scatter::default(),
        }
    }

    /// Queues one frame; nothing is written until [`FrameWriter::flush`].
    pub(super) fn push(&mut self, payload: FramePayload) -> Result<(), FrameError> {
        let header = payload.header(self.max_frame_len)?;
        self.queued.extend_from_slice(&header);
        match payload {
            FramePayload::Whole(bytes) => self.queued.push(bytes),
            FramePayload::Parts(parts) => parts.into_iter().for_each(|p| self.queued.push(p)),
        }
        Ok(())
    }

    /// Writes everything queued.
    pub(super) async fn flush(&mut self) -> Result<(), FrameError> {
        let mut slices = self.queued.slices();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let batch = rest.len().min(MAX_SLICES);
            let written = self.io.write_vectored(&rest[..batch]).await?;
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        drop(slices);
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
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
                // Every other payload in parts: what the receiver gets must
                // not tell them apart.
                let frame = if i % 2 == 0 {
                    FramePayload::Whole(Bytes::copy_from_slice(payload))
                } else {
                    let (a, b) = payload.split_at(payload.len() / 3);
                    let (b, c) = b.split_at(b.len() / 2);
                    FramePayload::Parts([a, b, c].map(Bytes::copy_from_slice).to_vec())
                };
                writer.push(frame).unwrap();
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
            writer.push(Bytes::from_static(b"fives").into()),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert!(writer.queued.is_empty());
    }
}
