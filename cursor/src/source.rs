//! The RPC part of a cursor, decoupled from iteration (003's "further
//! developments"): a [`PeekSource`] answers `peek(team, begin, max_bytes)`
//! and knows nothing about merging, barriers or team sets.
//!
//! ```text
//!  cursor ── peek(team, begin, max_bytes) ──▶ PeekSource ──▶ TLogSource ──TCP──▶ TLog replicas
//!     ▲                                           │      └─▶ MemorySource (tests, benches)
//!     └──────────── PeekReply { blocks, end, end_of_stream, .. } ◀┘
//! ```

use std::future::Future;
use std::sync::Arc;

use proto::{PeekReply, StorageTeamId, Version};

use crate::error::SourceError;

mod generations;
mod memory;
mod tlog;

pub use generations::{GenerationRoute, GenerationSource};
pub use memory::{BroadcastMode, MemorySource};
pub use tlog::{TLogSource, TLogSourceConfig};

/// Where a cursor's data comes from.
///
/// A reply carries the team's blocks from `begin` on, at most about
/// `max_bytes` of them (at least one block when there is one), with the
/// TLog's meaning of `end`: every version below `end` is complete for the
/// team. `end_of_stream` says nothing at or after `end` will ever come.
/// A source may wait (long-poll) when it has nothing at or after `begin`.
pub trait PeekSource: Send + Sync {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send;
}

/// Cursors of one process usually share a source.
impl<S: PeekSource> PeekSource for Arc<S> {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        S::peek(self, team, begin, max_bytes)
    }
}
