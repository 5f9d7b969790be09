//! The core state: the cluster's epoch, every TLog generation that may
//! still hold data a storage server has not popped, and the shard map as
//! of a version of the newest generation. The cluster controller
//! writes it at each recovery, with a conditional write on the
//! coordinators' register [`CORE_STATE_REGISTER`]; storage servers read it
//! to find the TLogs of each generation, and clients the proxies.
//!
//! ```text
//!  generation 3: TLogs a b c, versions (100, 900], ended by a recovery that locked a, b
//!  generation 4: TLogs d e f, versions (900, ..), proxies p q: the current one
//!  a storage server reads (…, 900] of its teams from a or b, then (900, …) from d e f
//! ```
//!
//! A generation's versions are `(begin_version, end]`: it chains from the
//! version its predecessor ended at. It is recorded before its proxies are
//! recruited and gets its [`CommitPath`] once they are, so a generation
//! without one never acknowledged a commit and needs no data kept.
//!
//! The shard map is as of a version at or after the newest generation's
//! begin: a recovery ends a generation at its recovery version with the
//! map as of it, and the controller moves it on (a checkpoint) while the
//! generation runs, so that the metadata team may be popped.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use proto::rpc::LockReply;
use proto::{Version, MAX_VERSIONS_AHEAD};
use serde::{Deserialize, Serialize};

use crate::shard_snapshot::ShardMapSnapshot;

/// The coordinators' register that holds the core state.
pub const CORE_STATE_REGISTER: &str = "core_state";

/// What every encoded core state starts with, so that a register holding
/// something else, or a later format, is refused instead of misread.
const FORMAT: &str = "teamlog-core-state 1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreStateError {
    #[error("core state is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("core state has format {found:?}, this build reads {FORMAT:?}")]
    Format { found: String },
    #[error("core state is inconsistent: {0}")]
    Inconsistent(String),
}

/// Why the TLogs that answered a lock cannot end their generation.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryVersionError {
    /// Some team may have all its copies on TLogs that did not answer.
    #[error("the teams placed from TLogs {uncovered:?} on have no locked copy")]
    Uncovered { uncovered: Vec<usize> },
    /// A TLog says a version is committed that another locked TLog lacks:
    /// the acknowledgement rule (every TLog has every committed version)
    /// was broken somewhere.
    #[error("TLog {index} knows {known_committed} committed, above the recovery version {recovery_version}")]
    CommittedAboveRecovery {
        index: usize,
        known_committed: Version,
        recovery_version: Version,
    },
    #[error("TLog index {index} is not in a generation of {count} TLogs")]
    NoSuchTLog { index: usize, count: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreState {
    format: String,
    /// The epoch of the newest generation; 0 before the first recovery.
    pub epoch: u64,
    /// Oldest first; every one but the last has ended.
    pub generations: Vec<Generation>,
    /// The shard map as of a version of the newest generation; before the
    /// first recovery, none (the cluster file's map, at version 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_map: Option<ShardMapSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub epoch: u64,
    /// Placement indexes refer to this list (`cluster::placement`).
    pub tlogs: Vec<SocketAddr>,
    pub replication: usize,
    /// The version the generation chains from; it holds only later ones.
    pub begin_version: Version,
    /// Its sequencer hands out versions above this: above anything an
    /// earlier generation left uncommitted (see [`CoreState::recovered`]).
    #[serde(default)]
    pub floor: Version,
    /// Set once the generation's sequencer and proxies were recruited: from
    /// then on it may have acknowledged commits.
    pub commit_path: Option<CommitPath>,
    /// Set by the recovery that ended it.
    pub end: Option<GenerationEnd>,
    /// The storage servers its proxies and TLogs leave out of their teams
    /// (`Configuration::excluded_servers` when it was recruited).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub excluded_servers: BTreeSet<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitPath {
    pub sequencer: SocketAddr,
    pub proxies: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationEnd {
    /// The recovery version: every acknowledged commit is at or below it,
    /// and nothing above it ever committed in this generation.
    pub version: Version,
    /// The TLogs that were locked and hold every version up to `version`
    /// for their teams; readers use only these.
    pub locked: Vec<usize>,
}

impl Generation {
    /// One line for status: epoch, versions, TLogs, and how it ended.
    pub fn summary(&self) -> String {
        let end = self
            .end
            .as_ref()
            .map_or_else(|| "…".to_owned(), |e| e.version.to_string());
        let state = match (&self.end, &self.commit_path) {
            (Some(end), _) => format!("ended, read from TLogs {:?}", end.locked),
            (None, Some(_)) => "current".to_owned(),
            (None, None) => "recovering".to_owned(),
        };
        let left_out = match self.excluded_servers.is_empty() {
            true => String::new(),
            false => format!(", leaves out storage servers {:?}", self.excluded_servers),
        };
        format!(
            "generation {}: versions ({}, {end}], {} TLogs, {state}{left_out}",
            self.epoch,
            self.begin_version,
            self.tlogs.len()
        )
    }

    /// The oldest version whose state a read at `version` sees: the
    /// generation hands out versions above its floor, so none of the
    /// versions it skipped, `(begin_version, floor]`, carries a commit, and
    /// they all read as `begin_version`. Any other version is itself.
    pub fn unskipped(&self, version: Version) -> Version {
        if version > self.begin_version && version <= self.floor {
            self.begin_version
        } else {
            version
        }
    }

    /// Whether the generation holds `version`.
    pub fn holds(&self, version: Version) -> bool {
        version > self.begin_version && self.end.as_ref().is_none_or(|e| version <= e.version)
    }

    /// The TLogs a reader may use: all of them while it is current, the
    /// locked ones once it ended.
    pub fn readable_tlogs(&self) -> Vec<(usize, SocketAddr)> {
        let all = self.tlogs.iter().copied().enumerate();
        match &self.end {
            None => all.collect(),
            Some(end) => all.filter(|(i, _)| end.locked.contains(i)).collect(),
        }
    }
}

impl CoreState {
    /// The state of a cluster that never recovered: no generation yet.
    pub fn initial() -> Self {
        CoreState {
            format: FORMAT.to_owned(),
            epoch: 0,
            generations: Vec::new(),
            shard_map: None,
        }
    }

    pub fn current(&self) -> Option<&Generation> {
        self.generations.last().filter(|g| g.end.is_none())
    }

    /// The generation that holds `version`, if any still does.
    pub fn generation_for(&self, version: Version) -> Option<&Generation> {
        self.generations.iter().find(|g| g.holds(version))
    }

    /// The state after a recovery: the current generation ended as `end`
    /// (dropped whole if it never had a commit path, since then it never
    /// acknowledged anything), and `next` recorded as the new current one,
    /// chaining from the recovery version, leaving `excluded_servers` out
    /// of its teams.
    pub fn recovered(
        &self,
        end: GenerationEnd,
        tlogs: Vec<SocketAddr>,
        replication: usize,
        excluded_servers: BTreeSet<u64>,
    ) -> Self {
        let mut generations = self.generations.clone();
        let mut begin_version = Version::ZERO;
        let mut floor = Version::ZERO;
        // A generation that handed out versions ran them at most
        // MAX_VERSIONS_AHEAD past its committed version, which is at most
        // its end or its floor: the next one's versions start above that.
        let above_tail =
            |g: &Generation, end: Version| Version(g.floor.max(end).0 + MAX_VERSIONS_AHEAD + 1);
        if let Some(current) = generations.last_mut().filter(|g| g.end.is_none()) {
            if current.commit_path.is_some() {
                begin_version = end.version;
                floor = above_tail(current, end.version);
                current.end = Some(end);
            } else {
                // Its sequencer, never opened, handed out nothing.
                begin_version = current.begin_version;
                floor = current.floor;
                generations.pop();
            }
        } else if let Some(last) = generations.last() {
            if let Some(end) = &last.end {
                begin_version = end.version;
                floor = above_tail(last, end.version);
            }
        }
        let epoch = self.epoch + 1;
        generations.push(Generation {
            epoch,
            tlogs,
            replication,
            begin_version,
            floor: floor.max(begin_version),
            commit_path: None,
            end: None,
            excluded_servers,
        });
        CoreState {
            format: FORMAT.to_owned(),
            epoch,
            generations,
            shard_map: self.shard_map.clone(),
        }
    }

    /// The state with the shard map as of a later version.
    pub fn with_shard_map(&self, snapshot: ShardMapSnapshot) -> Self {
        CoreState {
            shard_map: Some(snapshot),
            ..self.clone()
        }
    }

    /// The state with the current generation's commit path recorded.
    pub fn with_commit_path(&self, path: CommitPath) -> Self {
        let mut next = self.clone();
        if let Some(current) = next.generations.last_mut().filter(|g| g.end.is_none()) {
            current.commit_path = Some(path);
        }
        next
    }

    /// The state without the ended generations that storage servers no
    /// longer need: every version of them is at or below `popped`, and
    /// they are older than `followed`, the oldest generation a server
    /// follows. A server that read an open generation past where a
    /// recovery ended it learns of the end only from a state that still
    /// lists it; until then, its durable version may hold versions that
    /// never committed.
    pub fn retired_below(&self, popped: Version, followed: u64) -> Self {
        let mut next = self.clone();
        next.generations
            .retain(|g| g.epoch >= followed || g.end.as_ref().is_none_or(|e| e.version > popped));
        next
    }

    /// The core state a coordinated register holds: the initial state
    /// while nothing was written there.
    pub fn from_register(value: &[u8]) -> Result<Self, CoreStateError> {
        if value.is_empty() {
            return Ok(CoreState::initial());
        }
        CoreState::decode(value)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a core state always serializes"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CoreStateError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| CoreStateError::Malformed(e.to_string()))?;
        if head.format != FORMAT {
            return Err(CoreStateError::Format { found: head.format });
        }
        let state: CoreState =
            serde_json::from_slice(bytes).map_err(|e| CoreStateError::Malformed(e.to_string()))?;
        state.check()?;
        Ok(state)
    }

    fn check(&self) -> Result<(), CoreStateError> {
        let inconsistent = |s: String| Err(CoreStateError::Inconsistent(s));
        let mut previous: Option<&Generation> = None;
        for (i, g) in self.generations.iter().enumerate() {
            if g.tlogs.is_empty() || g.replication == 0 || g.replication > g.tlogs.len() {
                return inconsistent(format!(
                    "generation {} has {} TLogs at replication {}",
                    g.epoch,
                    g.tlogs.len(),
                    g.replication
                ));
            }
            let last = i + 1 == self.generations.len();
            match (&g.end, last) {
                (None, false) => {
                    return inconsistent(format!(
                        "generation {} is not the last and did not end",
                        g.epoch
                    ))
                }
                (Some(end), _) => {
                    if end.version < g.begin_version {
                        return inconsistent(format!(
                            "generation {} ends before it begins",
                            g.epoch
                        ));
                    }
                    if let Err(e) = covering_check(g.tlogs.len(), g.replication, &end.locked) {
                        return inconsistent(format!("generation {}: {e}", g.epoch));
                    }
                }
                (None, true) => {}
            }
            if let Some(p) = previous {
                let chained = p.end.as_ref().map(|e| e.version) == Some(g.begin_version);
                if g.epoch <= p.epoch || !chained {
                    return inconsistent(format!(
                        "generation {} does not follow generation {}",
                        g.epoch, p.epoch
                    ));
                }
            }
            previous = Some(g);
        }
        if self
            .generations
            .last()
            .is_some_and(|g| g.epoch != self.epoch)
        {
            return inconsistent(format!(
                "epoch {} is not the newest generation's",
                self.epoch
            ));
        }
        if let Some(snapshot) = &self.shard_map {
            if let Some(newest) = self.generations.last() {
                if snapshot.version < newest.begin_version {
                    return inconsistent(format!(
                        "the shard map is as of {}, before generation {} began at {}",
                        snapshot.version, newest.epoch, newest.begin_version
                    ));
                }
            }
            if let Err(e) = snapshot.map() {
                return inconsistent(e.to_string());
            }
        }
        Ok(())
    }
}

/// Ends a generation of `tlog_count` TLogs at `replication` from the lock
/// replies of some of them (index, reply).
///
/// A commit is acknowledged only once every TLog of the generation made
/// it durable, and a locked TLog accepts no more; so every acknowledged
/// commit is at or below each locked TLog's end, and the lowest of those
/// ends is a recovery version that keeps them all. The locked TLogs must
/// cover every team: among any `replication` consecutive TLogs (a team's
/// placement), one must have answered.
pub fn recovery_version(
    tlog_count: usize,
    replication: usize,
    locked: &[(usize, LockReply)],
) -> Result<GenerationEnd, RecoveryVersionError> {
    if let Some((index, _)) = locked.iter().find(|(i, _)| *i >= tlog_count) {
        return Err(RecoveryVersionError::NoSuchTLog {
            index: *index,
            count: tlog_count,
        });
    }
    let indexes: Vec<usize> = locked
        .iter()
        .map(|(i, _)| *i)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    covering_check(tlog_count, replication, &indexes)?;
    let version = locked
        .iter()
        .map(|(_, r)| r.end_version)
        .min()
        .expect("a covering set is not empty");
    if let Some((index, reply)) = locked
        .iter()
        .find(|(_, r)| r.known_committed_version > version)
    {
        return Err(RecoveryVersionError::CommittedAboveRecovery {
            index: *index,
            known_committed: reply.known_committed_version,
            recovery_version: version,
        });
    }
    Ok(GenerationEnd {
        version,
        locked: indexes,
    })
}

/// Whether every run of `replication` consecutive TLogs (cyclically, as
/// placement puts teams) has one in `locked`.
fn covering_check(
    tlog_count: usize,
    replication: usize,
    locked: &[usize],
) -> Result<(), RecoveryVersionError> {
    let replication = replication.clamp(1, tlog_count.max(1));
    let uncovered: Vec<usize> = (0..tlog_count)
        .filter(|start| !(0..replication).any(|k| locked.contains(&((start + k) % tlog_count))))
        .collect();
    if uncovered.is_empty() && tlog_count > 0 {
        Ok(())
    } else {
        let uncovered = if tlog_count == 0 {
            Vec::new()
        } else {
            uncovered
        };
        Err(RecoveryVersionError::Uncovered { uncovered })
    }
}

#[cfg(test)]
mod tests;
