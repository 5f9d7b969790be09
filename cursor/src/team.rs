//! `StorageTeamPeekCursor`: one team's stream from a begin version, in
//! bounded batches.
//!
//! ```text
//! PeekSource ──peek(team, frontier, max_bytes)──▶ TeamStream ──get/next──▶ consumer
//!                                                  (one batch, re-iterable until the next fetch)
//! ```
//!
//! A TLog never splits a version across replies, so every fetched message
//! can be yielded at once: a single team needs no version barrier.

use proto::{StorageTeamId, Subsequence, Version, VersionedMutation};

use crate::error::CursorError;
use crate::peek_cursor::{Fetched, PeekCursor};
use crate::source::PeekSource;
use crate::stream::{Position, TeamStream};
use crate::DEFAULT_MAX_BYTES;

/// Reads one team.
///
/// ```
/// # use std::sync::Arc;
/// # use bytes::Bytes;
/// # use cursor::{BroadcastMode, MemorySource, PeekCursor, StorageTeamPeekCursor};
/// # use proto::{Mutation, StorageTeamId, Subsequence, Version};
/// # futures::executor::block_on(async {
/// let source = Arc::new(MemorySource::new(BroadcastMode::NoBroadcast));
/// let team = StorageTeamId(7);
/// let set = |k: &'static str| Mutation::SetValue { key: Bytes::from(k), value: Bytes::new() };
/// source.commit(Version(10), &[(team, Subsequence(1), set("a")), (team, Subsequence(2), set("b"))]).unwrap();
///
/// let mut cursor = StorageTeamPeekCursor::new(source, team, Version(1)).with_max_bytes(64 << 10);
/// assert!(cursor.remote_more_available().await?);
/// let first_pass: Vec<_> = cursor.iter().collect();
/// cursor.reset(); // re-iterable until the next fetch
/// assert_eq!(cursor.iter().collect::<Vec<_>>(), first_pass);
/// assert_eq!(first_pass.len(), 2);
/// # Ok::<(), cursor::CursorError>(()) }).unwrap();
/// ```
pub struct StorageTeamPeekCursor<S> {
    source: S,
    stream: TeamStream,
    max_bytes: u32,
    /// At most this many versions per batch.
    max_versions: Option<usize>,
    /// The batch ends below this version; later messages stay buffered.
    batch_end: Version,
    floor: Position,
}

impl<S: PeekSource> StorageTeamPeekCursor<S> {
    /// A cursor over `team` from `begin` on; nothing is fetched until
    /// [`remote_more_available`](PeekCursor::remote_more_available).
    pub fn new(source: S, team: StorageTeamId, begin: Version) -> Self {
        StorageTeamPeekCursor {
            source,
            stream: TeamStream::new(team, begin),
            max_bytes: DEFAULT_MAX_BYTES,
            max_versions: None,
            batch_end: Version::MAX,
            floor: (Version::ZERO, Subsequence(0)),
        }
    }

    /// Bounds each fetch to about `max_bytes` of blocks (at least one
    /// version's block is always returned).
    pub fn with_max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Bounds each batch to at most `max_versions` versions (at least
    /// one); what a fetch brings beyond stays buffered, and the next
    /// [`fetch`](PeekCursor::fetch) serves it before peeking again.
    pub fn with_max_versions(mut self, max_versions: usize) -> Self {
        self.max_versions = Some(max_versions.max(1));
        self
    }

    pub fn team(&self) -> StorageTeamId {
        self.stream.team
    }

    /// Every version below this was fetched: once `has_remaining()` is
    /// false, the consumer has seen all of the team's mutations below it.
    pub fn complete_below(&self) -> Version {
        self.stream.frontier.min(self.batch_end)
    }

    /// The highest version a TLog said is committed cluster-wide: versions
    /// above it may still be rolled back by a recovery.
    pub fn known_committed(&self) -> Version {
        self.stream.known_committed
    }

    /// Where the batch starting at the stream's position ends: after
    /// `max_versions` versions, or never.
    fn batch_end(&self) -> Version {
        let Some(limit) = self.max_versions else {
            return Version::MAX;
        };
        let mut versions = self.stream.messages[self.stream.pos..]
            .iter()
            .map(|m| m.version);
        let mut distinct = 0;
        let mut last = None;
        for version in versions.by_ref() {
            if last != Some(version) {
                if distinct == limit {
                    return version;
                }
                distinct += 1;
                last = Some(version);
            }
        }
        Version::MAX
    }

    fn batch_has_remaining(&self) -> bool {
        self.stream
            .head()
            .is_some_and(|m| m.version < self.batch_end)
    }

    /// One peek, or, when the last batch stopped at the version limit, the
    /// next batch from what is buffered; returns whether the stream moved.
    /// Failed or not, it starts a new batch for `reset`.
    async fn peek_once(&mut self) -> Result<bool, CursorError> {
        if self.max_versions.is_some() && self.stream.has_remaining() {
            self.stream.snapshot_pos = self.stream.pos;
            self.batch_end = self.batch_end();
            return Ok(true);
        }
        let team = self.stream.team;
        let begin = self.stream.fetch_begin(self.floor);
        let moved = match self.source.peek(team, begin, self.max_bytes).await {
            Ok(reply) => self.stream.ingest(begin, reply),
            Err(source) => Err(CursorError::Source {
                team,
                begin,
                source,
            }),
        };
        self.stream.snapshot_pos = self.stream.pos;
        self.stream.skip_below(self.floor, Version::MAX);
        self.batch_end = self.batch_end();
        moved
    }
}

impl<S: PeekSource> PeekCursor for StorageTeamPeekCursor<S> {
    async fn remote_more_available(&mut self) -> Result<bool, CursorError> {
        Ok(self.fetch().await? == Fetched::Mutations)
    }

    async fn fetch(&mut self) -> Result<Fetched, CursorError> {
        let moved = self.peek_once().await?;
        Ok(Fetched::after(
            self.batch_has_remaining(),
            self.is_end_of_stream(),
            moved,
        ))
    }

    fn has_remaining(&mut self) -> bool {
        self.batch_has_remaining()
    }

    fn get(&mut self) -> &VersionedMutation {
        assert!(
            self.batch_has_remaining(),
            "PeekCursor::get called with nothing remaining"
        );
        &self.stream.messages[self.stream.pos]
    }

    fn next(&mut self) {
        if self.batch_has_remaining() {
            self.stream.pos += 1;
        }
    }

    fn reset(&mut self) {
        self.stream.pos = self.stream.snapshot_pos;
        self.stream.skip_below(self.floor, Version::MAX);
    }

    async fn advance_to(
        &mut self,
        version: Version,
        subsequence: Subsequence,
    ) -> Result<bool, CursorError> {
        self.floor = self.floor.max((version, subsequence));
        self.stream.skip_below(self.floor, Version::MAX);
        while !self.batch_has_remaining() && !self.is_end_of_stream() {
            if !self.peek_once().await? {
                break;
            }
        }
        Ok(self.batch_has_remaining())
    }

    fn is_end_of_stream(&self) -> bool {
        self.stream.is_finished()
    }
}
