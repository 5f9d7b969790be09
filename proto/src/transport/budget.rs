//! Byte budgets that bound what a server holds for its peers: frames being
//! received, and replies not yet taken by the peer.
//!
//! ```text
//!  read loop ── large frame header ──▶ input budget (process)    released when the frame is whole
//!            ── request decoded ─────▶ reply budget (connection, then process)
//!                                          released when the reply is written to the socket
//! ```
//!
//! A peer that does not read its replies stops being read once its
//! connection's share is spent, and a slow or hostile peer holds at most its
//! share for at most the frame timeout: the writer closes a connection whose
//! peer takes longer than that to take a burst of replies.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A number of bytes that may be held at once, shared by whoever holds a
/// handle.
#[derive(Clone, Debug)]
pub(super) struct ByteBudget {
    bytes: Arc<Semaphore>,
    capacity: u32,
}

impl ByteBudget {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        ByteBudget {
            bytes: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Waits until `bytes` (at most the whole budget) are free and holds
    /// them until the grant drops.
    pub(super) async fn acquire(&self, bytes: usize) -> OwnedSemaphorePermit {
        let bytes = bytes.min(self.capacity as usize) as u32;
        Arc::clone(&self.bytes)
            .acquire_many_owned(bytes)
            .await
            .expect("a byte budget is never closed")
    }

    /// Holds `bytes` if they are free now.
    pub(super) fn try_acquire(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.bytes).try_acquire_many_owned(bytes).ok()
    }

    /// Bytes free now.
    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// What one request holds until its reply is written: its place under the
/// connection's in-flight cap, and the reply bytes reserved for it on the
/// connection and in the process.
pub(super) struct ReplyGrant {
    _in_flight: OwnedSemaphorePermit,
    /// On the connection, then in the process; `None` for the transport's
    /// own short error replies.
    bytes: Option<[OwnedSemaphorePermit; 2]>,
    reserved: usize,
}

impl ReplyGrant {
    pub(super) fn new(
        in_flight: OwnedSemaphorePermit,
        bytes: [OwnedSemaphorePermit; 2],
        reserved: usize,
    ) -> Self {
        ReplyGrant {
            _in_flight: in_flight,
            bytes: Some(bytes),
            reserved,
        }
    }

    /// A grant with no reply bytes reserved, for the short error replies the
    /// transport itself sends.
    pub(super) fn unreserved(in_flight: OwnedSemaphorePermit) -> Self {
        ReplyGrant {
            _in_flight: in_flight,
            bytes: None,
            reserved: 0,
        }
    }

    /// Takes what a reply needs beyond its reservation from `budgets` (the
    /// connection's, then the process's), if they have it free now; a reply
    /// larger than its service said it would be is sent either way.
    pub(super) fn cover(&mut self, reply_len: usize, budgets: [&ByteBudget; 2]) {
        let Some(held) = &mut self.bytes else {
            return;
        };
        let extra = reply_len.saturating_sub(self.reserved);
        if extra == 0 {
            return;
        }
        let [connection, process] = budgets;
        if let (Some(on_connection), Some(in_process)) =
            (connection.try_acquire(extra), process.try_acquire(extra))
        {
            held[0].merge(on_connection);
            held[1].merge(in_process);
            self.reserved = reply_len;
        }
    }
}
