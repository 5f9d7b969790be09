//! `MutableTeamPeekCursor`: a storage server's cursor. It reads the
//! server's private team and the storage teams of its team set, and follows
//! the team-set changes that arrive on the private team.
//!
//! ```text
//!  private team ──▶ TeamStream ──┐            team-set SetValue at V (key = prefix + server id)
//!  team A       ──▶ TeamStream ──┼─▶ merge ─▶ get/next        │ applied in the refill, below the barrier:
//!  team B       ──▶ TeamStream ──┘    ▲                        │  added   → new stream from V+1 (fetched at once)
//!                                     └────────────────────────┘  removed → stream cut after V, retired
//! ```
//!
//! A change is applied when the refill's barrier passes its version, before
//! anything past that version is merged: the structure the merge iterates
//! is fixed between two refills, so `reset()` needs no record of the
//! streams a change removed or added (003 keeps deleted cursors for that).
//! An added team holds the barrier at `V + 1` until its first fetch, which
//! the same refill performs.

use std::collections::BTreeSet;
use std::future::Future;

use bytes::Bytes;
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, Version, VersionedMutation};

use crate::error::{CorruptData, CursorError};
use crate::group::{peek_cursor_over_group, MergeOrder, Ordered, StreamGroup};
use crate::peek_cursor::{Fetched, PeekCursor};
use crate::source::PeekSource;
use crate::stream::TeamStream;
use crate::DEFAULT_MAX_BYTES;
use proto::team_set::{team_set_key, TeamSet, TeamSetError};

/// Follows a storage server's team set.
///
/// ```
/// # use std::sync::Arc;
/// # use bytes::Bytes;
/// # use cursor::{BroadcastMode, MemorySource, MutableTeamPeekCursor, Ordered, PeekCursor, TeamSet};
/// # use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, Version};
/// # futures::executor::block_on(async {
/// let server = StorageServerId(1);
/// let (private, a, b) = (StorageTeamId(100), StorageTeamId(1), StorageTeamId(2));
/// let source = Arc::new(MemorySource::new(BroadcastMode::NoBroadcast));
/// let set = |k: &'static str| Mutation::SetValue { key: Bytes::from(k), value: Bytes::new() };
/// source.add_team(private);
/// source.commit(Version(1), &[(a, Subsequence(1), set("a1")), (b, Subsequence(2), set("b1"))]).unwrap();
/// // At version 2 the server's team set becomes {b}: a's data stops after 2, b's starts at 3.
/// let change = TeamSet::new(private, [b]).mutation(server);
/// source.commit(Version(2), &[(private, Subsequence(1), change), (a, Subsequence(2), set("a2"))]).unwrap();
/// source.commit(Version(3), &[(a, Subsequence(1), set("a3")), (b, Subsequence(2), set("b3"))]).unwrap();
/// source.lock();
///
/// let initial = TeamSet::new(private, [a]);
/// let mut cursor = MutableTeamPeekCursor::<_, Ordered>::new(source, server, initial, Version(1));
/// let mut keys = Vec::new();
/// while !cursor.is_end_of_stream() {
///     cursor.remote_more_available().await?;
///     keys.extend(cursor.iter().map(|m| m.mutation.first_key().clone()));
/// }
/// assert_eq!(keys.len(), 4); // a1, the team-set change, a2, b3
/// assert_eq!(&keys[3][..], b"b3");
/// # Ok::<(), cursor::CursorError>(()) }).unwrap();
/// ```
pub struct MutableTeamPeekCursor<S, O = Ordered> {
    group: StreamGroup<S, O>,
}

impl<S: PeekSource, O: MergeOrder> MutableTeamPeekCursor<S, O> {
    /// Reads from `begin` for `server`, whose team set in effect at `begin`
    /// (the latest one committed before it) is `team_set`.
    pub fn new(source: S, server: StorageServerId, team_set: TeamSet, begin: Version) -> Self {
        let private_team = team_set.private_team;
        let mut teams = team_set.teams;
        teams.remove(&private_team);
        let mut private = TeamStream::new(private_team, begin);
        // Its team-set changes count even below an advance_to target.
        private.may_skip = false;
        let streams = std::iter::once(private)
            .chain(teams.iter().map(|team| TeamStream::new(*team, begin)))
            .collect();
        let mut group = StreamGroup::new(source, streams, DEFAULT_MAX_BYTES);
        group.team_set = Some(TeamSetTracker {
            key: team_set_key(server),
            private_team,
            current: teams,
            applied_below: begin,
        });
        MutableTeamPeekCursor { group }
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

    /// The team set as of the newest change applied, which may be ahead of
    /// the mutation the consumer is at (changes are applied when fetched).
    pub fn team_set(&self) -> TeamSet {
        let tracker = self.tracker();
        TeamSet {
            private_team: tracker.private_team,
            teams: tracker.current.clone(),
        }
    }

    /// The version barrier: every version below it was fetched from every
    /// team subscribed at that version.
    pub fn complete_below(&self) -> Version {
        self.group.complete_below()
    }

    /// The highest version a TLog said is committed cluster-wide: versions
    /// above it may still be rolled back by a recovery.
    pub fn known_committed(&self) -> Version {
        self.group.known_committed()
    }

    fn tracker(&self) -> &TeamSetTracker {
        self.group
            .team_set
            .as_ref()
            .expect("a mutable cursor always tracks its team set")
    }
}

peek_cursor_over_group!(MutableTeamPeekCursor);

/// Reads team-set changes off the private team's stream and applies them
/// to the merge's streams.
pub(crate) struct TeamSetTracker {
    key: Bytes,
    private_team: StorageTeamId,
    /// The storage teams in effect after the last applied change.
    current: BTreeSet<StorageTeamId>,
    /// Every change at a version below this was applied.
    applied_below: Version,
}

impl TeamSetTracker {
    /// Every change at a version below this was applied.
    pub fn applied_below(&self) -> Version {
        self.applied_below
    }

    /// Applies the first change at a version in `[applied_below, safe_end)`.
    /// Returns `None` when there is none, else whether it added teams.
    pub fn apply_next_change(
        &mut self,
        streams: &mut Vec<TeamStream>,
        safe_end: Version,
    ) -> Result<Option<bool>, CursorError> {
        let Some((version, value)) = self.next_change(streams, safe_end) else {
            self.applied_below = self.applied_below.max(safe_end);
            return Ok(None);
        };
        // Changes below `version` are applied even if this one fails.
        self.applied_below = version;
        let corrupt = |error| CursorError::Corrupt {
            team: self.private_team,
            source: CorruptData::TeamSet { version, error },
        };
        let set = TeamSet::decode(&value).map_err(corrupt)?;
        if set.private_team != self.private_team {
            return Err(corrupt(TeamSetError::OtherPrivateTeam {
                expected: self.private_team,
                found: set.private_team,
            }));
        }
        let mut next = set.teams;
        next.remove(&self.private_team);

        for team in self.current.difference(&next) {
            let live = streams
                .iter_mut()
                .find(|s| s.team == *team && s.stop_after.is_none());
            if let Some(stream) = live {
                stream.stop_after = Some(version);
                // Nothing past `version` was merged yet: the barrier was
                // below it until now.
                let keep = stream.messages.partition_point(|m| m.version <= version);
                stream.messages.truncate(keep);
                stream.pos = stream.pos.min(keep);
                stream.snapshot_pos = stream.snapshot_pos.min(keep);
            }
        }
        let added: Vec<StorageTeamId> = next.difference(&self.current).copied().collect();
        for team in &added {
            let start = version.next();
            let at = streams.partition_point(|s| (s.team, s.start) < (*team, start));
            streams.insert(at, TeamStream::new(*team, start));
        }
        self.current = next;
        self.applied_below = version.next();
        Ok(Some(!added.is_empty()))
    }

    /// The first version in `[applied_below, safe_end)` with a team-set
    /// write on the private team, and the last value written there.
    fn next_change(&self, streams: &[TeamStream], safe_end: Version) -> Option<(Version, Bytes)> {
        let private = streams
            .iter()
            .find(|s| s.team == self.private_team && s.stop_after.is_none())?;
        let from = private
            .messages
            .partition_point(|m| m.version < self.applied_below);
        let mut change: Option<(Version, Bytes)> = None;
        for message in &private.messages[from..] {
            let past_change = change.as_ref().is_some_and(|(v, _)| message.version > *v);
            if message.version >= safe_end || past_change {
                break;
            }
            if let Mutation::SetValue { key, value } = &message.mutation {
                if *key == self.key {
                    change = Some((message.version, value.clone()));
                }
            }
        }
        change
    }
}
