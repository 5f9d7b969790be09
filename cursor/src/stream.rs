//! One team's fetched data and fetch state, shared by every cursor kind.
//!
//! ```text
//!  PeekReply ──ingest──▶ messages: [m m m m m m]   frontier: every version below
//!  (blocks parsed,                ▲     ▲            it is complete locally
//!   empty versions                │     └ pos (next to yield)
//!   folded into frontier)         └ snapshot_pos (where reset() returns)
//! ```
//!
//! Empty-version entries are not stored: they only move the frontier, which
//! is what the version barrier reads. A stream is *dry* when everything
//! fetched was yielded, and *finished* when it is dry and nothing more can
//! come (its TLog ended the epoch, or the team left the server's team set
//! and the stream reached the version where it left).

use proto::{BlockEntry, PeekReply, StorageTeamId, Subsequence, Version, VersionedMutation};

use crate::error::{CorruptData, CursorError};

/// A position in the total order of mutations.
pub(crate) type Position = (Version, Subsequence);

pub(crate) struct TeamStream {
    pub team: StorageTeamId,
    /// The first version this stream covers; orders two streams of one team
    /// (a team removed from the team set and added back later).
    pub start: Version,
    pub messages: Vec<VersionedMutation>,
    pub pos: usize,
    pub snapshot_pos: usize,
    /// Every version below is complete in `messages` (or was consumed).
    pub frontier: Version,
    /// The team left the team set at this version: later versions are not
    /// this stream's to deliver.
    pub stop_after: Option<Version>,
    /// The source said nothing at or after `frontier` will ever come.
    pub end_of_stream: bool,
    /// Whether the stream may skip versions below the cursor's floor when
    /// it fetches (a private team may not: its team-set changes count even
    /// below the floor).
    pub may_skip: bool,
    pub fetched: bool,
    /// The highest committed version a reply vouched for.
    pub known_committed: Version,
}

impl TeamStream {
    pub fn new(team: StorageTeamId, start: Version) -> TeamStream {
        TeamStream {
            team,
            start,
            messages: Vec::new(),
            pos: 0,
            snapshot_pos: 0,
            frontier: start,
            stop_after: None,
            end_of_stream: false,
            may_skip: true,
            fetched: false,
            known_committed: Version::ZERO,
        }
    }

    pub fn has_remaining(&self) -> bool {
        self.pos < self.messages.len()
    }

    /// The current message, if any.
    pub fn head(&self) -> Option<&VersionedMutation> {
        self.messages.get(self.pos)
    }

    /// The version below which this stream holds the barrier back:
    /// `Version::MAX` once nothing more can come from it.
    pub fn barrier(&self) -> Version {
        let past_stop = self.stop_after.is_some_and(|stop| self.frontier > stop);
        if self.end_of_stream || past_stop {
            Version::MAX
        } else {
            self.frontier
        }
    }

    pub fn is_finished(&self) -> bool {
        !self.has_remaining() && self.barrier() == Version::MAX
    }

    /// Where the next peek starts.
    pub fn fetch_begin(&self, floor: Position) -> Version {
        if self.may_skip {
            self.frontier.max(floor.0)
        } else {
            self.frontier
        }
    }

    /// Adds a reply fetched from `begin`, dropping what was already yielded.
    /// Returns whether the stream moved (new messages, a higher frontier, or
    /// the end of the stream).
    pub fn ingest(&mut self, begin: Version, reply: PeekReply) -> Result<bool, CursorError> {
        let team = self.team;
        let corrupt = move |source| CursorError::Corrupt { team, source };
        // Check every block before touching the stream, so that a bad reply
        // leaves it as it was and the same peek can be retried.
        let mut blocks = Vec::with_capacity(reply.blocks.len());
        let mut last: Option<Version> = None;
        for data in &reply.blocks {
            let block = data.parse().map_err(|e| corrupt(CorruptData::Block(e)))?;
            if block.team() != team {
                return Err(corrupt(CorruptData::WrongTeam {
                    found: block.team(),
                }));
            }
            // Parsing checked the order inside the block; across blocks
            // each must start above the previous one's last version.
            if let Some(first) = block.first_version() {
                if first < begin {
                    return Err(corrupt(CorruptData::BelowBegin {
                        begin,
                        version: first,
                    }));
                }
                if let Some(previous) = last.filter(|previous| first <= *previous) {
                    return Err(corrupt(CorruptData::VersionNotIncreasing {
                        previous,
                        version: first,
                    }));
                }
                last = block.last_version();
            }
            blocks.push(block);
        }

        self.messages.drain(..self.pos);
        self.pos = 0;
        let (before_messages, before_frontier) = (self.messages.len(), self.frontier);
        let stop = self.stop_after.unwrap_or(Version::MAX);
        for block in &blocks {
            self.messages.reserve(block.message_count());
            for entry in block.entries() {
                if let BlockEntry::Message(message) = entry {
                    if message.version <= stop {
                        self.messages.push(message);
                    }
                }
            }
        }
        let reached = last.map_or(Version::ZERO, Version::next);
        self.frontier = self.frontier.max(begin).max(reply.end).max(reached);
        let ended = reply.end_of_stream && !self.end_of_stream;
        self.end_of_stream |= reply.end_of_stream;
        self.fetched = true;
        self.known_committed = self.known_committed.max(reply.known_committed_version);
        Ok(self.messages.len() > before_messages || self.frontier > before_frontier || ended)
    }

    /// Moves `pos` past messages below `floor`, but only among those below
    /// `limit`: later ones may not be looked at yet (a private team's
    /// team-set changes are read there first).
    pub fn skip_below(&mut self, floor: Position, limit: Version) {
        let rest = &self.messages[self.pos..];
        let skip =
            rest.partition_point(|m| (m.version, m.subsequence) < floor && m.version < limit);
        self.pos += skip;
    }
}
