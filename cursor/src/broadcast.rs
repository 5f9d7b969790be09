//! `BroadcastedStorageTeamPeekCursor`: a fixed set of teams merged behind
//! the version barrier, in [`Ordered`] or [`Unordered`] order.
//!
//! ```text
//!  team 1 ──▶ TeamStream ─┐
//!  team 2 ──▶ TeamStream ─┼─▶ barrier (min frontier) ─▶ k-way merge ─▶ get/next
//!  team 3 ──▶ TeamStream ─┘
//! ```
//!
//! The barrier and merge are described in the crate docs. Despite the name (003's), the
//! cursor reads non-broadcast TLogs as well: there the barrier moves on the
//! peek replies' `end` instead of on empty-version messages.

use std::future::Future;

use proto::{StorageTeamId, Subsequence, Version, VersionedMutation};

use crate::error::CursorError;
use crate::group::{peek_cursor_over_group, MergeOrder, Ordered, StreamGroup};
use crate::peek_cursor::{Fetched, PeekCursor};
use crate::source::PeekSource;
use crate::stream::TeamStream;
use crate::DEFAULT_MAX_BYTES;

/// Merges a fixed set of teams; a version is yielded only once every team
/// has it.
///
/// ```
/// # use std::sync::Arc;
/// # use bytes::Bytes;
/// # use cursor::{BroadcastMode, BroadcastedStorageTeamPeekCursor, MemorySource, Ordered, PeekCursor};
/// # use proto::{Mutation, StorageTeamId, Subsequence, Version};
/// # futures::executor::block_on(async {
/// let (a, b) = (StorageTeamId(1), StorageTeamId(2));
/// let source = Arc::new(MemorySource::new(BroadcastMode::Broadcast));
/// source.add_team(a);
/// source.add_team(b);
/// let set = |k: &'static str| Mutation::SetValue { key: Bytes::from(k), value: Bytes::new() };
/// source.commit(Version(1), &[(b, Subsequence(1), set("x")), (a, Subsequence(2), set("y"))]).unwrap();
/// source.commit(Version(2), &[(a, Subsequence(1), set("z"))]).unwrap(); // b gets an empty version
///
/// let mut cursor = BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source, [a, b], Version(1));
/// assert!(cursor.remote_more_available().await?);
/// let order: Vec<_> = cursor.iter().map(|m| (m.version.0, m.subsequence.0, m.team.0)).collect();
/// assert_eq!(order, [(1, 1, 2), (1, 2, 1), (2, 1, 1)]);
/// # Ok::<(), cursor::CursorError>(()) }).unwrap();
/// ```
pub struct BroadcastedStorageTeamPeekCursor<S, O = Ordered> {
    group: StreamGroup<S, O>,
}

impl<S: PeekSource, O: MergeOrder> BroadcastedStorageTeamPeekCursor<S, O> {
    /// Reads `teams` (duplicates ignored) from `begin` on.
    pub fn new(source: S, teams: impl IntoIterator<Item = StorageTeamId>, begin: Version) -> Self {
        let mut teams: Vec<StorageTeamId> = teams.into_iter().collect();
        teams.sort();
        teams.dedup();
        let streams = teams
            .into_iter()
            .map(|team| TeamStream::new(team, begin))
            .collect();
        BroadcastedStorageTeamPeekCursor {
            group: StreamGroup::new(source, streams, DEFAULT_MAX_BYTES),
        }
    }

    /// Bounds each team's fetch to about `max_bytes` of blocks.
    pub fn with_max_bytes(mut self, max_bytes: u32) -> Self {
        self.group.max_bytes = max_bytes;
        self
    }

    /// Bounds each batch to at most `max_versions` versions with mutations
    /// (at least one); what a fetch brings beyond stays buffered, and the
    /// next [`fetch`](PeekCursor::fetch) serves it before asking the TLogs
    /// again. [`complete_below`](Self::complete_below) follows the batch.
    pub fn with_max_versions(mut self, max_versions: usize) -> Self {
        self.group.max_versions = Some(max_versions.max(1));
        self
    }

    /// The teams still read (a team is dropped once its TLog ended the
    /// epoch and its tail was delivered).
    pub fn teams(&self) -> impl Iterator<Item = StorageTeamId> + '_ {
        self.group
            .streams
            .iter()
            .filter(|s| !s.is_finished())
            .map(|s| s.team)
    }

    /// The version barrier: every version below it was fetched from every
    /// team, so once `has_remaining()` is false the consumer has seen all
    /// mutations below it.
    pub fn complete_below(&self) -> Version {
        self.group.complete_below()
    }

    /// The highest version a TLog said is committed cluster-wide: versions
    /// above it may still be rolled back by a recovery.
    pub fn known_committed(&self) -> Version {
        self.group.known_committed()
    }
}

peek_cursor_over_group!(BroadcastedStorageTeamPeekCursor);
