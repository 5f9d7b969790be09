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
    /// The gauge that shows the bytes held, for a process-wide budget.
    gauge: Option<&'static str>,
}

/// Bytes held from a [`ByteBudget`]; they go back when this drops.
pub(super) struct Held {
    /// `None` once merged into another.
    permit: Option<OwnedSemaphorePermit>,
    gauge: Option<&'static str>,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit, gauge: Option<&'static str>) -> Self {
        if let Some(name) = gauge {
            metrics::gauge!(name).increment(permit.num_permits() as f64);
        }
        Held {
            permit: Some(permit),
            gauge,
        }
    }

    /// Adds `more`, held from the same budget (its bytes stay counted).
    fn merge(&mut self, mut more: Held) {
        if let (Some(mine), Some(theirs)) = (self.permit.as_mut(), more.permit.take()) {
            mine.merge(theirs);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(name), Some(permit)) = (self.gauge, &self.permit) {
            metrics::gauge!(name).decrement(permit.num_permits() as f64);
        }
    }
}

impl ByteBudget {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        ByteBudget {
            bytes: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            gauge: None,
        }
    }

    /// The same budget, its bytes held shown in the gauge `name`.
    pub(super) fn counted_as(self, name: &'static str) -> Self {
        ByteBudget {
            gauge: Some(name),
            ..self
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Waits until `bytes` (at most the whole budget) are free and holds
    /// them until the grant drops.
    pub(super) async fn acquire(&self, bytes: usize) -> Held {
        let bytes = bytes.min(self.capacity as usize) as u32;
        let permit = Arc::clone(&self.bytes)
            .acquire_many_owned(bytes)
            .await
            .expect("a byte budget is never closed");
        Held::new(permit, self.gauge)
    }

    /// Holds `bytes` if they are free now.
    pub(super) fn try_acquire(&self, bytes: usize) -> Option<Held> {
        let bytes = u32::try_from(bytes).ok()?;
        let permit = Arc::clone(&self.bytes).try_acquire_many_owned(bytes).ok()?;
        Some(Held::new(permit, self.gauge))
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
    bytes: Option<[Held; 2]>,
    reserved: usize,
}

impl ReplyGrant {
    pub(super) fn new(in_flight: OwnedSemaphorePermit, bytes: [Held; 2], reserved: usize) -> Self {
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
