//! The machinery under the merged cursors: several team streams, the
//! version barrier, the k-way merge, refills and the re-iteration snapshot.
//!
//! ```text
//!  refill: retire finished streams
//!          fetch the dry streams that hold the barrier, in parallel ──▶ ingest
//!          settle: barrier = min over streams of their frontier
//!                  (+ apply team-set changes below it, which may add streams:
//!                   fetch those too, settle again)
//!          snapshot: every stream's pos; heap of streams with a head below the barrier
//!
//!  iterate: heap top ─get─▶ &VersionedMutation
//!           next: advance that stream; replace the top in place (peek_mut),
//!                 or pop it when its next message is at/after the barrier
//! ```
//!
//! The barrier (`safe_end`) is the lowest frontier of the streams that can
//! still deliver something: every stream has every version below it, so a
//! version below it can be merged completely. A stream's frontier rises with
//! its stream content (a message or an empty version at V completes V) and
//! with the peek replies' `end`, so the same code serves both broadcast and
//! non-broadcast TLogs.
//!
//! The structure (streams, their buffers, the barrier) only changes in a
//! refill, so the snapshot for `reset()` is just each stream's position.

/// Implements `PeekCursor` for a cursor whose reading all happens in its
/// `group: StreamGroup` field: the broadcasted and the mutable cursor.
macro_rules! peek_cursor_over_group {
    ($cursor:ident) => {
        impl<S: PeekSource, O: MergeOrder> PeekCursor for $cursor<S, O> {
            async fn remote_more_available(&mut self) -> Result<bool, CursorError> {
                Ok(self.fetch().await? == Fetched::Mutations)
            }

            async fn fetch(&mut self) -> Result<Fetched, CursorError> {
                let moved = self.group.refill().await?;
                Ok(Fetched::after(
                    self.group.has_remaining(),
                    self.group.is_end_of_stream(),
                    moved,
                ))
            }

            fn has_remaining(&mut self) -> bool {
                self.group.has_remaining()
            }

            #[inline]
            fn get(&mut self) -> &VersionedMutation {
                self.group.get()
            }

            #[inline]
            fn next(&mut self) {
                self.group.next()
            }

            fn reset(&mut self) {
                self.group.reset()
            }

            fn advance_to(
                &mut self,
                version: Version,
                subsequence: Subsequence,
            ) -> impl Future<Output = Result<bool, CursorError>> + Send {
                self.group.advance_to((version, subsequence))
            }

            fn is_end_of_stream(&self) -> bool {
                self.group.is_end_of_stream()
            }
        }
    };
}
pub(crate) use peek_cursor_over_group;

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::marker::PhantomData;

use futures::future::join_all;
use proto::{Subsequence, Version, VersionedMutation};

use crate::error::CursorError;
use crate::mutable::TeamSetTracker;
use crate::source::PeekSource;
use crate::stream::{Position, TeamStream};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Ordered {}
    impl Sealed for super::Unordered {}
}

/// The order in which a merged cursor yields a version's mutations.
pub trait MergeOrder: sealed::Sealed + Send + Sync + 'static {
    /// A key ordering heap entries: the version in the high 64 bits, then
    /// what orders a version's messages, then the stream's index (which
    /// follows team-id order) to break ties.
    fn key(message: &VersionedMutation, stream: usize) -> u128;
}

/// By `(version, subsequence)` across teams: the commit order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ordered;

/// Version by version; inside a version, team by team in team-id order,
/// each team's messages by subsequence.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unordered;

impl MergeOrder for Ordered {
    #[inline]
    fn key(message: &VersionedMutation, stream: usize) -> u128 {
        (u128::from(message.version.0) << 64)
            | (u128::from(message.subsequence.0) << 32)
            | stream as u128
    }
}

impl MergeOrder for Unordered {
    #[inline]
    fn key(message: &VersionedMutation, stream: usize) -> u128 {
        (u128::from(message.version.0) << 64) | stream as u128
    }
}

/// Keys keep the stream index in their low 32 bits.
const STREAM_INDEX_MASK: u128 = u32::MAX as u128;

pub(crate) struct StreamGroup<S, O> {
    source: S,
    /// Sorted by `(team, start)`, so indices follow team-id order.
    pub streams: Vec<TeamStream>,
    heap: BinaryHeap<Reverse<u128>>,
    /// Versions below are complete on every stream.
    safe_end: Version,
    /// Kept here, not only per stream: retired streams count too.
    known_committed: Version,
    floor: Position,
    pub max_bytes: u32,
    /// At most this many versions (with mutations) per batch.
    pub max_versions: Option<usize>,
    pub team_set: Option<TeamSetTracker>,
    order: PhantomData<O>,
}

impl<S: PeekSource, O: MergeOrder> StreamGroup<S, O> {
    pub fn new(source: S, mut streams: Vec<TeamStream>, max_bytes: u32) -> Self {
        streams.sort_by_key(|s| (s.team, s.start));
        StreamGroup {
            source,
            streams,
            heap: BinaryHeap::new(),
            safe_end: Version::ZERO,
            known_committed: Version::ZERO,
            floor: (Version::ZERO, Subsequence(0)),
            max_bytes,
            max_versions: None,
            team_set: None,
            order: PhantomData,
        }
    }

    pub fn complete_below(&self) -> Version {
        self.safe_end
    }

    /// The highest version any TLog said is committed cluster-wide.
    pub fn known_committed(&self) -> Version {
        self.known_committed
    }

    pub fn has_remaining(&self) -> bool {
        !self.heap.is_empty()
    }

    #[inline]
    pub fn get(&self) -> &VersionedMutation {
        let Reverse(key) = self
            .heap
            .peek()
            .expect("PeekCursor::get called with nothing remaining");
        let stream = &self.streams[(key & STREAM_INDEX_MASK) as usize];
        &stream.messages[stream.pos]
    }

    #[inline]
    pub fn next(&mut self) {
        let Some(mut top) = self.heap.peek_mut() else {
            return;
        };
        let index = (top.0 & STREAM_INDEX_MASK) as usize;
        let stream = &mut self.streams[index];
        stream.pos += 1;
        match stream.messages.get(stream.pos) {
            Some(message) if message.version < self.safe_end => {
                *top = Reverse(O::key(message, index));
            }
            _ => {
                PeekMut::pop(top);
            }
        }
    }

    pub fn reset(&mut self) {
        for stream in &mut self.streams {
            stream.pos = stream.snapshot_pos;
        }
        self.skip_to_floor();
    }

    pub fn is_end_of_stream(&self) -> bool {
        self.streams.iter().all(TeamStream::is_finished)
    }

    /// Fetches, settles the barrier and takes the re-iteration snapshot.
    /// Returns whether anything moved.
    pub async fn refill(&mut self) -> Result<bool, CursorError> {
        self.streams.retain(|s| !s.is_finished());
        if self.max_versions.is_some() && self.buffered_below_barrier() {
            // The last batch stopped at the version limit: the next one is
            // already here, and asking the TLogs could wait a long poll.
            let settled = self.settle();
            self.take_snapshot();
            return settled.map(|_| true);
        }
        let mut error = None;
        let mut moved = false;
        let mut first_round = true;
        loop {
            let barrier = self.lowest_barrier();
            let wanted: Vec<(usize, Version)> = self
                .streams
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    !s.has_remaining()
                        && s.barrier() == barrier
                        && barrier != Version::MAX
                        && (first_round || !s.fetched)
                })
                .map(|(index, s)| (index, s.fetch_begin(self.floor)))
                .collect();
            if wanted.is_empty() && !first_round {
                break;
            }
            first_round = false;
            let source = &self.source;
            let max_bytes = self.max_bytes;
            let streams = &self.streams;
            let replies = join_all(
                wanted
                    .iter()
                    .map(|&(index, begin)| source.peek(streams[index].team, begin, max_bytes)),
            )
            .await;
            for ((index, begin), reply) in wanted.into_iter().zip(replies) {
                let stream = &mut self.streams[index];
                let ingested = reply
                    .map_err(|source| CursorError::Source {
                        team: stream.team,
                        begin,
                        source,
                    })
                    .and_then(|reply| stream.ingest(begin, reply));
                self.known_committed = self.known_committed.max(stream.known_committed);
                match ingested {
                    Ok(stream_moved) => moved |= stream_moved,
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            // Streams added by a team-set change start dry at the barrier:
            // fetch them in another round rather than returning with nothing.
            match self.settle() {
                Ok(true) if error.is_none() => moved = true,
                Ok(_) => break,
                Err(e) => {
                    error.get_or_insert(e);
                    break;
                }
            }
        }
        self.take_snapshot();
        match error {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// Where `reset` returns to: every stream's position now.
    fn take_snapshot(&mut self) {
        for stream in &mut self.streams {
            stream.snapshot_pos = stream.pos;
        }
        self.skip_to_floor();
    }

    /// Whether a message below the barrier waits that the last batch did
    /// not include (it stopped at the version limit).
    fn buffered_below_barrier(&self) -> bool {
        let barrier = self.lowest_barrier();
        self.streams
            .iter()
            .any(|s| s.head().is_some_and(|m| m.version < barrier))
    }

    /// Recomputes the barrier and applies the team-set changes below it,
    /// one at a time (each may move the barrier). Returns whether streams
    /// were added (they need a fetch before the barrier can pass them).
    fn settle(&mut self) -> Result<bool, CursorError> {
        let mut added = false;
        loop {
            self.safe_end = self.capped(self.lowest_barrier());
            let Some(tracker) = self.team_set.as_mut() else {
                return Ok(added);
            };
            match tracker.apply_next_change(&mut self.streams, self.safe_end) {
                Ok(Some(change_added)) => added |= change_added,
                Ok(None) => return Ok(added),
                Err(e) => {
                    // Stop before the unapplied change: later versions would
                    // be merged with the wrong team set, and the change must
                    // stay unconsumed so that a retry meets it again.
                    self.safe_end = self.safe_end.min(tracker.applied_below());
                    return Err(e);
                }
            }
        }
    }

    /// `barrier`, lowered under a version limit to the end of the first
    /// `max_versions` versions that have messages below it. What lies
    /// beyond stays buffered for the next batch.
    fn capped(&self, barrier: Version) -> Version {
        let Some(limit) = self.max_versions else {
            return barrier;
        };
        let mut versions: Vec<Version> = self
            .streams
            .iter()
            .flat_map(|s| s.messages[s.pos..].iter().map(|m| m.version))
            .filter(|v| *v < barrier)
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
            .get(limit)
            .map_or(barrier, |cap| (*cap).min(barrier))
    }

    fn lowest_barrier(&self) -> Version {
        self.streams
            .iter()
            .map(TeamStream::barrier)
            .min()
            .unwrap_or(Version::MAX)
    }

    pub async fn advance_to(&mut self, target: Position) -> Result<bool, CursorError> {
        self.floor = self.floor.max(target);
        self.skip_to_floor();
        while !self.has_remaining() && !self.is_end_of_stream() {
            if !self.refill().await? {
                break;
            }
        }
        Ok(self.has_remaining())
    }

    /// Skips what lies below the floor and rebuilds the heap.
    fn skip_to_floor(&mut self) {
        let mut items = std::mem::take(&mut self.heap).into_vec();
        items.clear();
        for (index, stream) in self.streams.iter_mut().enumerate() {
            stream.skip_below(self.floor, self.safe_end);
            if let Some(head) = stream.head().filter(|m| m.version < self.safe_end) {
                items.push(Reverse(O::key(head, index)));
            }
        }
        self.heap = BinaryHeap::from(items);
    }
}
