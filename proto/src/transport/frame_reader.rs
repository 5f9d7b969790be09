//! A server connection's frame reader: [`FrameCodec`] over a byte stream,
//! taking the bytes of a large frame from the process's input budget before
//! reading its body.
//!
//! ```text
//!  [hdr: len=40 MiB] ──▶ wait for 40 MiB of the input budget ──▶ read the body ──▶ frame (budget back)
//!  [hdr: len=200 B]  ──▶ read on (small frames share the read buffer)
//! ```
//!
//! So connections that each send the start of a large frame and stall hold
//! at most the budget between them, not a frame's worth each.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use super::budget::{ByteBudget, Held};
use crate::frame::{FrameCodec, FrameError, FRAME_HEADER_LEN, OWN_BUFFER_FROM};

pub(super) struct FrameReader<R> {
    io: R,
    buffer: BytesMut,
    codec: FrameCodec,
    budget: ByteBudget,
    /// The input bytes held for the large frame at the front of the buffer.
    held: Option<Held>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(io: R, codec: FrameCodec, budget: ByteBudget) -> Self {
        FrameReader {
            io,
            buffer: BytesMut::new(),
            codec,
            budget,
            held: None,
        }
    }

    /// What has been read but not yet handed on as a frame.
    pub(super) fn read_buffer(&self) -> &[u8] {
        &self.buffer
    }

    pub(super) fn into_inner(self) -> R {
        self.io
    }

    /// The next frame, or `None` when the stream ends between frames.
    /// Cancel-safe: what was read, and the budget held, stay for the next
    /// call.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes, FrameError>> {
        loop {
            // Before the codec sets a buffer aside for the frame.
            if self.held.is_none() {
                if let Some(total) = unread_large_frame(&self.buffer, self.codec.max_frame_len) {
                    self.held = Some(self.budget.acquire(total).await);
                }
            }
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(frame)) => {
                    self.held = None;
                    return Some(Ok(frame));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.io.read_buf(&mut self.buffer).await {
                Ok(0) => return self.codec.decode_eof(&mut self.buffer).transpose(),
                Ok(_) => {}
                Err(e) => return Some(Err(FrameError::Io(e))),
            }
        }
    }
}

/// The whole length of the large frame whose header starts `buffer`, while
/// its body is still to come. A length over the cap is none: the codec
/// refuses it at once.
fn unread_large_frame(buffer: &[u8], max_frame_len: u32) -> Option<usize> {
    let header = buffer.first_chunk::<FRAME_HEADER_LEN>()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let total = FRAME_HEADER_LEN + len as usize;
    (len <= max_frame_len && total >= OWN_BUFFER_FROM && buffer.len() < total).then_some(total)
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let payload = vec![7u8; len];
        let mut out = Vec::new();
        out.put_slice(&crate::frame::frame_header(&payload, u32::MAX).unwrap());
        out.put_slice(&payload);
        out
    }

    #[tokio::test]
    async fn a_large_frame_waits_for_the_budget_and_gives_it_back_when_whole() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let budget = ByteBudget::new(200 << 10);
        let mut reader = FrameReader::new(rx, FrameCodec::default(), budget.clone());
        let large = frame(100 << 10);
        let hold = budget.acquire(150 << 10).await;

        tx.write_all(&large[..FRAME_HEADER_LEN]).await.unwrap();
        tx.write_all(&large[FRAME_HEADER_LEN..]).await.unwrap();
        let mut next = Box::pin(reader.next());
        // The budget is short: the reader waits before reading the rest.
        assert!(futures::poll!(next.as_mut()).is_pending());
        drop(hold);
        let got = next.await.unwrap().unwrap();
        assert_eq!(got.len(), 100 << 10);
        assert_eq!(budget.available(), 200 << 10);
    }

    #[tokio::test]
    async fn small_frames_take_nothing_from_the_budget() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let budget = ByteBudget::new(1);
        let mut reader = FrameReader::new(rx, FrameCodec::default(), budget.clone());
        let _all = budget.acquire(1).await;
        tx.write_all(&frame(100)).await.unwrap();
        tx.write_all(&frame(OWN_BUFFER_FROM - FRAME_HEADER_LEN - 1))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(reader.next().await.unwrap().unwrap().len(), 100);
        assert!(reader.next().await.unwrap().is_ok());
        assert!(reader.next().await.is_none());
    }
}
