//! An in-memory model of the TLogs, for tests and benches: commits become
//! per-team blocks, and peeks answer with the TLog's rules (`end`,
//! `max_bytes`, popped, end of stream after a lock).
//!
//! ```text
//! commit(version, [(team, subsequence, mutation)])
//!    │ one block per involved team; in Broadcast mode an empty-version
//!    ▼ block for every other registered team
//! teams: team ─▶ { version ─▶ block bytes }, popped, visible end
//!    │
//!    ▼ peek(team, begin, max_bytes) ─▶ PeekReply
//! ```
//!
//! `set_visible_end` makes one team lag (as if its TLog were behind), which
//! is how tests hold a team back from the version barrier.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use proto::{
    BlockError, Mutation, PeekReply, StorageTeamId, Subsequence, TeamBlockBuilder, TeamBlockData,
    Version,
};

use super::PeekSource;
use crate::error::SourceError;

/// Whether uninvolved teams hear of every version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastMode {
    /// Every commit adds an empty-version message to each registered team
    /// it does not touch (003's broadcasting model).
    Broadcast,
    /// Uninvolved teams get nothing; their peek replies' `end` still moves
    /// with every commit.
    NoBroadcast,
}

/// The TLogs of a test cluster, in memory. Share it behind an `Arc`.
///
/// ```
/// use bytes::Bytes;
/// use cursor::{BroadcastMode, MemorySource};
/// use proto::{Mutation, StorageTeamId, Subsequence, Version};
///
/// let source = MemorySource::new(BroadcastMode::NoBroadcast);
/// let team = StorageTeamId(1);
/// source.add_team(team);
/// let set = Mutation::SetValue { key: Bytes::from("k"), value: Bytes::from("v") };
/// source.commit(Version(5), &[(team, Subsequence(1), set)]).unwrap();
/// assert_eq!(source.last_version(), Version(5));
/// ```
pub struct MemorySource {
    state: Mutex<State>,
}

struct State {
    mode: BroadcastMode,
    last_version: Version,
    locked: bool,
    teams: BTreeMap<StorageTeamId, TeamLog>,
}

#[derive(Default)]
struct TeamLog {
    blocks: BTreeMap<Version, Bytes>,
    popped: Version,
    /// Replies show nothing at or above this version (a lagging TLog).
    visible_end: Option<Version>,
    peeks: u64,
}

impl MemorySource {
    pub fn new(mode: BroadcastMode) -> MemorySource {
        MemorySource {
            state: Mutex::new(State {
                mode,
                last_version: Version::ZERO,
                locked: false,
                teams: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mode(&self) -> BroadcastMode {
        self.state().mode
    }

    /// Makes `team` known, so peeks of it succeed and, in broadcast mode,
    /// later commits send it empty versions.
    pub fn add_team(&self, team: StorageTeamId) {
        self.state().teams.entry(team).or_default();
    }

    /// The last committed version.
    pub fn last_version(&self) -> Version {
        self.state().last_version
    }

    /// Commits `mutations` at `version`, above every earlier commit. Each
    /// team's mutations are sorted by subsequence; the teams named are
    /// registered if they were not. A commit with no mutations still moves
    /// `end` (and broadcasts an empty version to every team).
    pub fn commit(
        &self,
        version: Version,
        mutations: &[(StorageTeamId, Subsequence, Mutation)],
    ) -> Result<(), BlockError> {
        let mut by_team: BTreeMap<StorageTeamId, Vec<(Subsequence, &Mutation)>> = BTreeMap::new();
        for (team, subsequence, mutation) in mutations {
            by_team
                .entry(*team)
                .or_default()
                .push((*subsequence, mutation));
        }
        let mut blocks = Vec::with_capacity(by_team.len());
        for (team, mut list) in by_team {
            list.sort_by_key(|(subsequence, _)| *subsequence);
            let mut builder = TeamBlockBuilder::new(team);
            for (subsequence, mutation) in list {
                builder.push(version, subsequence, mutation)?;
            }
            blocks.push((team, builder.finish()));
        }
        self.commit_blocks(version, blocks)
    }

    /// Commits prebuilt block bytes at `version` (not validated, so tests
    /// can hand a cursor corrupt data). Broadcast mode still adds empty
    /// versions for the teams not named.
    pub fn commit_blocks(
        &self,
        version: Version,
        blocks: Vec<(StorageTeamId, Bytes)>,
    ) -> Result<(), BlockError> {
        let mut state = self.state();
        if version <= state.last_version {
            return Err(BlockError::VersionNotIncreasing {
                previous: state.last_version,
                version,
            });
        }
        for (team, bytes) in blocks {
            state
                .teams
                .entry(team)
                .or_default()
                .blocks
                .insert(version, bytes);
        }
        if state.mode == BroadcastMode::Broadcast {
            for (team, log) in state.teams.iter_mut() {
                if let Entry::Vacant(slot) = log.blocks.entry(version) {
                    let mut builder = TeamBlockBuilder::new(*team);
                    builder.push_empty_version(version)?;
                    slot.insert(builder.finish());
                }
            }
        }
        state.last_version = version;
        Ok(())
    }

    /// Makes `team`'s replies stop below `end` (`None` lifts the limit).
    pub fn set_visible_end(&self, team: StorageTeamId, end: Option<Version>) {
        self.state().teams.entry(team).or_default().visible_end = end;
    }

    /// Ends the epoch: from now on a reply that reaches the last committed
    /// version reports end of stream.
    pub fn lock(&self) {
        self.state().locked = true;
    }

    /// Discards `team`'s versions below `version`.
    pub fn pop(&self, team: StorageTeamId, version: Version) {
        let mut state = self.state();
        let log = state.teams.entry(team).or_default();
        log.popped = log.popped.max(version);
        log.blocks = log.blocks.split_off(&log.popped);
    }

    /// How many peeks of `team` were answered or refused so far.
    pub fn peek_count(&self, team: StorageTeamId) -> u64 {
        self.state().teams.get(&team).map_or(0, |log| log.peeks)
    }

    fn answer(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> Result<PeekReply, SourceError> {
        let mut state = self.state();
        let top = state.last_version.next();
        let locked = state.locked;
        let log = state.teams.get_mut(&team).ok_or(SourceError::UnknownTeam)?;
        log.peeks += 1;
        if begin < log.popped {
            return Err(SourceError::Popped {
                begin,
                popped: Some(log.popped),
            });
        }
        let limit = log.visible_end.map_or(top, |end| end.min(top));
        let mut reply = PeekReply {
            blocks: Vec::new(),
            end: limit,
            popped: log.popped,
            max_known_version: limit.0.checked_sub(1).map_or(Version::ZERO, Version),
            // Everything a memory source holds counts as committed.
            known_committed_version: limit.0.checked_sub(1).map_or(Version::ZERO, Version),
            end_of_stream: false,
        };
        let mut bytes = 0usize;
        let wanted = if begin < limit {
            log.blocks.range(begin..limit)
        } else {
            log.blocks.range(..Version::ZERO)
        };
        for (version, block) in wanted {
            if bytes > 0 && bytes + block.len() > max_bytes as usize {
                reply.end = *version;
                break;
            }
            bytes += block.len();
            reply.blocks.push(TeamBlockData {
                team,
                data: block.clone(),
            });
        }
        if locked && log.visible_end.is_none() && reply.end >= top {
            reply.end_of_stream = true;
            reply.end = reply.end.max(begin);
        }
        Ok(reply)
    }
}

impl PeekSource for MemorySource {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        std::future::ready(self.answer(team, begin, max_bytes))
    }
}
