//! The interface every cursor offers (003's `PeekCursorBase`), and its
//! iterator forms.
//!
//! ```text
//!            ┌──────────── remote_more_available().await ◀──────────┐
//!            ▼                                                      │ no
//!   has_remaining()? ── yes ──▶ get() ──▶ next() ──▶ has_remaining()?
//!            ▲                                            │
//!            └────────── reset(): back to just after the last fetch
//! ```

use std::future::Future;

use proto::{Subsequence, Version, VersionedMutation};

use crate::error::CursorError;

/// A cursor over one or more team streams.
///
/// Between two fetches the cursor's data is local and re-iterable: after any
/// sequence of [`get`](Self::get)/[`next`](Self::next), [`reset`](Self::reset)
/// returns to the state right after the last fetch, and a full pass yields
/// exactly what the first full pass did.
///
/// [`get`](Self::get) yields real mutations only: empty-version messages are
/// consumed internally (they drive the version barrier of merged cursors).
///
/// The usual consumer loop:
///
/// ```
/// # use std::sync::Arc;
/// # use bytes::Bytes;
/// # use cursor::{BroadcastMode, Fetched, MemorySource, PeekCursor, StorageTeamPeekCursor};
/// # use proto::{Mutation, StorageTeamId, Subsequence, Version};
/// # futures::executor::block_on(async {
/// let source = Arc::new(MemorySource::new(BroadcastMode::NoBroadcast));
/// let team = StorageTeamId(1);
/// for version in 1..=3 {
///     let set = Mutation::SetValue { key: Bytes::from("k"), value: Bytes::from("v") };
///     source.commit(Version(version), &[(team, Subsequence(1), set)]).unwrap();
/// }
/// source.lock();
///
/// let mut cursor = StorageTeamPeekCursor::new(source, team, Version(1));
/// let mut versions = Vec::new();
/// loop {
///     match cursor.fetch().await? {
///         Fetched::Mutations => {}
///         // Nothing to yield yet (a real TLog long-polls before saying so).
///         Fetched::Nothing | Fetched::Progress => continue,
///         Fetched::EndOfStream => break,
///     }
///     while cursor.has_remaining() {
///         versions.push(cursor.get().version);
///         cursor.next();
///     }
/// }
/// assert_eq!(versions, [Version(1), Version(2), Version(3)]);
/// # Ok::<(), cursor::CursorError>(()) }).unwrap();
/// ```
pub trait PeekCursor {
    /// Fetches more from the source: the teams that ran dry and hold the
    /// others back. Call only when `!has_remaining()`. Says what the fetch
    /// brought; see [`Fetched`].
    ///
    /// A fetch, failed or not, starts a new batch: [`reset`](Self::reset)
    /// then rewinds to what this fetch brought, never to an earlier batch.
    /// On error, replies that did arrive are kept (and can be yielded); a
    /// retryable error ([`CursorError::is_retryable`]) is followed by simply
    /// calling again.
    fn fetch(&mut self) -> impl Future<Output = Result<Fetched, CursorError>> + Send;

    /// [`fetch`](Self::fetch), answering only whether local data is
    /// available now (003's `remoteMoreAvailable`). `Ok(false)` covers
    /// three cases [`Fetched`] tells apart: nothing new, progress without
    /// anything to yield yet, and the end of the stream.
    fn remote_more_available(&mut self) -> impl Future<Output = Result<bool, CursorError>> + Send;

    /// Whether local data remains; never fetches.
    fn has_remaining(&mut self) -> bool;

    /// The current mutation.
    ///
    /// # Panics
    ///
    /// When `!has_remaining()`: like indexing past the end of a slice.
    fn get(&mut self) -> &VersionedMutation;

    /// Moves past the current mutation (no effect when none remains).
    fn next(&mut self);

    /// Rewinds to the state right after the last fetch (or past the target
    /// of the last [`advance_to`](Self::advance_to), which stays in force).
    fn reset(&mut self);

    /// Skips every mutation before `(version, subsequence)`, fetching as
    /// needed (a merged cursor skips whole versions on the TLogs too).
    /// Returns whether a mutation at or after the target is available;
    /// `Ok(false)` means none has arrived yet or the stream ended. The
    /// target stays in force: nothing before it is yielded again, even
    /// after [`reset`](Self::reset).
    ///
    /// In [`Unordered`](crate::Unordered) order this skips the messages
    /// whose `(version, subsequence)` is below the target, so the target's
    /// version continues team by team with the messages at or above it.
    fn advance_to(
        &mut self,
        version: Version,
        subsequence: Subsequence,
    ) -> impl Future<Output = Result<bool, CursorError>> + Send;

    /// Whether nothing more can ever come: every team's TLog ended its
    /// epoch and everything fetched was yielded.
    fn is_end_of_stream(&self) -> bool;

    /// The local data as an iterator of owned mutations (cheap clones: keys
    /// and values share the fetched buffers). It stops where local data ends;
    /// it does not fetch.
    fn iter(&mut self) -> LocalMutations<'_, Self>
    where
        Self: Sized,
    {
        LocalMutations { cursor: self }
    }

    /// The next mutation, fetching once if local data ran out. `Ok(None)`
    /// when that fetch brought nothing yielding (check
    /// [`is_end_of_stream`](Self::is_end_of_stream)).
    fn next_mutation(
        &mut self,
    ) -> impl Future<Output = Result<Option<VersionedMutation>, CursorError>> + Send
    where
        Self: Send,
    {
        async move {
            if !self.has_remaining()
                && (self.is_end_of_stream() || !self.remote_more_available().await?)
            {
                return Ok(None);
            }
            let mutation = self.get().clone();
            self.next();
            Ok(Some(mutation))
        }
    }
}

/// What one [`PeekCursor::fetch`] brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// Mutations are ready to yield.
    Mutations,
    /// The streams moved (versions completed, teams added or retired) but
    /// nothing can be yielded yet, e.g. another team still holds the
    /// version barrier back: fetch again.
    Progress,
    /// Nothing new: every team asked had nothing after its position (a
    /// TLog's long poll ended empty). Fetch again.
    Nothing,
    /// Nothing more can ever come: every team's epoch ended and its tail
    /// was delivered. Fetching again brings nothing.
    EndOfStream,
}

impl Fetched {
    /// What a fetch brought, from the cursor's state after it and whether
    /// any stream moved.
    pub(crate) fn after(has_remaining: bool, end_of_stream: bool, moved: bool) -> Fetched {
        if has_remaining {
            Fetched::Mutations
        } else if end_of_stream {
            Fetched::EndOfStream
        } else if moved {
            Fetched::Progress
        } else {
            Fetched::Nothing
        }
    }
}

/// Iterator over a cursor's local data; see [`PeekCursor::iter`].
pub struct LocalMutations<'a, C> {
    cursor: &'a mut C,
}

impl<C: PeekCursor> Iterator for LocalMutations<'_, C> {
    type Item = VersionedMutation;

    fn next(&mut self) -> Option<VersionedMutation> {
        if !self.cursor.has_remaining() {
            return None;
        }
        let mutation = self.cursor.get().clone();
        self.cursor.next();
        Some(mutation)
    }
}
