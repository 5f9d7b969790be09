//! One recovery, as a pure state machine: it says what to do next
//! ([`Command`]) and learns from what happened ([`Event`]); the
//! controller's runtime carries the commands out. A recovery that fails
//! anywhere is abandoned whole and a new one starts from the core state:
//! every step is safe to repeat.
//!
//! ```text
//!  read core state ─▶ lock the current generation's TLogs ─▶ recovery version (covering set)
//!        │ (no commit path: it never acknowledged a commit, nothing to lock)
//!        │                 read its shard-map changes up to the recovery version
//!        ▼                 from a locked TLog holding the metadata team
//!  recruit the new TLogs, begun at the recovery version ─▶ record the generation (conditional write)
//!        ▼
//!  recruit sequencer + proxies ─▶ record them (conditional write) ─▶ open the sequencer ─▶ recovered
//! ```
//!
//! Why the order: the new generation is recorded before anything can
//! commit in it, and its commit path is recorded before the sequencer
//! hands out a version, so a recovery that reads a generation without a
//! commit path may drop it; one with a commit path is locked and ended at
//! a recovery version that keeps every acknowledged commit
//! (`cluster::core_state::recovery_version`). The shard map the new
//! generation's proxies start from is the core state's, carried to the
//! recovery version by the changes at or below it, and recorded with the
//! generation: changes above it never committed, so they are dropped with
//! the versions that carried them.

use std::net::SocketAddr;

use cluster::core_state::{
    recovery_version, CommitPath, CoreState, GenerationEnd, RecoveryVersionError,
};
use cluster::placement::tlogs_for_team;
use cluster::shard_snapshot::{ShardMapSnapshot, ShardSnapshotError};
use proto::rpc::LockReply;
use proto::shard_map::ShardMap;
use proto::system_keys::METADATA_TEAM;
use proto::{Mutation, Version};

use crate::exclusion::Exclusion;

/// What a new generation gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    pub tlogs: usize,
    pub replication: usize,
    pub proxies: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    ReadingCoreState,
    LockingTLogs,
    ReadingShardMap,
    RecruitingTLogs,
    RecordingGeneration,
    RecruitingCommitPath,
    RecordingCommitPath,
    OpeningCommitPath,
    Recovered,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::ReadingCoreState => "reading_core_state",
            Phase::LockingTLogs => "locking_tlogs",
            Phase::ReadingShardMap => "reading_shard_map",
            Phase::RecruitingTLogs => "recruiting_tlogs",
            Phase::RecordingGeneration => "recording_generation",
            Phase::RecruitingCommitPath => "recruiting_commit_path",
            Phase::RecordingCommitPath => "recording_commit_path",
            Phase::OpeningCommitPath => "opening_commit_path",
            Phase::Recovered => "recovered",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    ReadCoreState,
    /// Lock each of these TLogs of generation `epoch` (index, address),
    /// and report every lock as it comes ([`Event::TLogLocked`]).
    LockTLogs {
        epoch: u64,
        tlogs: Vec<(usize, SocketAddr)>,
    },
    /// Read the system mutations of versions `(after, through]` from the
    /// metadata team on one of these locked TLogs of generation `epoch`
    /// ([`Event::ShardChangesRead`]).
    ReadShardChanges {
        epoch: u64,
        tlogs: Vec<SocketAddr>,
        after: Version,
        through: Version,
    },
    /// Recruit `count` TLogs for generation `epoch`, each begun at `begin`.
    RecruitTLogs {
        epoch: u64,
        begin: Version,
        count: usize,
    },
    /// A conditional write of the core state register.
    WriteCoreState {
        expected_revision: u64,
        state: CoreState,
    },
    /// Recruit a sequencer chaining on from `start_after` with versions
    /// above `floor`, and `proxies` proxies pushing to `tlogs`; nothing
    /// may commit until opened.
    RecruitCommitPath {
        epoch: u64,
        start_after: Version,
        floor: Version,
        tlogs: Vec<SocketAddr>,
        proxies: usize,
    },
    /// Let the recorded sequencer hand out versions.
    OpenCommitPath {
        epoch: u64,
        sequencer: SocketAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    CoreStateRead {
        revision: u64,
        state: CoreState,
    },
    TLogLocked {
        epoch: u64,
        index: usize,
        reply: LockReply,
    },
    /// Each version's system mutations, in version order.
    ShardChangesRead {
        epoch: u64,
        changes: Vec<(Version, Vec<Mutation>)>,
    },
    TLogsRecruited {
        epoch: u64,
        tlogs: Vec<SocketAddr>,
    },
    CoreStateWritten {
        revision: u64,
    },
    CommitPathRecruited {
        epoch: u64,
        path: CommitPath,
    },
    CommitPathOpened {
        epoch: u64,
    },
}

/// Why a recovery was abandoned; a new one starts from the core state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error("the locked TLogs disagree: {0}")]
    Inconsistent(#[from] RecoveryVersionError),
    #[error("the shard map cannot be carried to the recovery version: {0}")]
    ShardMap(#[from] ShardSnapshotError),
    #[error("{event} arrived while {phase}")]
    Unexpected { event: String, phase: &'static str },
}

/// When a phase started and ended, in the controller's clock (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTime {
    pub phase: Phase,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
}

pub struct Recovery {
    config: RecoveryConfig,
    exclusion: Option<Exclusion>,
    phase: Phase,
    times: Vec<PhaseTime>,
    revision: u64,
    /// The core state as read, then as last written.
    state: CoreState,
    /// The generation being ended, while its TLogs are locked.
    locking: Option<Locking>,
    /// How the generation being replaced ends, once its locks cover it.
    pending_end: Option<GenerationEnd>,
    /// The cluster file's shard map, for a core state that has none yet.
    initial_shards: ShardMap,
    /// The shard map as of the core state, then as of the recovery version.
    shards: Option<ShardMapSnapshot>,
    /// The recovery version the new generation begins at.
    begin: Version,
    /// The epoch of the generation being recruited.
    epoch: u64,
    tlogs: Vec<SocketAddr>,
    sequencer: Option<SocketAddr>,
}

struct Locking {
    epoch: u64,
    tlogs: Vec<SocketAddr>,
    tlog_count: usize,
    replication: usize,
    locked: Vec<(usize, LockReply)>,
}

impl Recovery {
    /// A recovery that starts by reading the core state; `initial_shards`
    /// is the shard map of a cluster never recovered. The new generation
    /// leaves `exclusion`'s servers out of its teams; `None` (the
    /// configuration could not be read) keeps the current generation's.
    pub fn start(
        config: RecoveryConfig,
        initial_shards: ShardMap,
        exclusion: Option<Exclusion>,
        now_ms: u64,
    ) -> (Recovery, Vec<Command>) {
        let recovery = Recovery {
            config,
            exclusion,
            phase: Phase::ReadingCoreState,
            times: vec![PhaseTime {
                phase: Phase::ReadingCoreState,
                started_ms: now_ms,
                ended_ms: None,
            }],
            revision: 0,
            state: CoreState::initial(),
            locking: None,
            pending_end: None,
            initial_shards,
            shards: None,
            begin: Version::ZERO,
            epoch: 0,
            tlogs: Vec::new(),
            sequencer: None,
        };
        (recovery, vec![Command::ReadCoreState])
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn phase_times(&self) -> &[PhaseTime] {
        &self.times
    }

    /// The epoch being recovered into, once known.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The core state as last read or written, and its revision.
    pub fn core_state(&self) -> (&CoreState, u64) {
        (&self.state, self.revision)
    }

    /// What the recovery waits for, for status.
    pub fn waiting_for(&self) -> String {
        match (&self.phase, &self.locking) {
            (Phase::LockingTLogs, Some(l)) => {
                let answered: Vec<usize> = l.locked.iter().map(|(i, _)| *i).collect();
                let missing = match recovery_version(l.tlog_count, l.replication, &l.locked) {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                };
                format!(
                    "locks from generation {}'s TLogs (answered: {answered:?}; {missing})",
                    l.epoch
                )
            }
            (phase, _) => phase.name().replace('_', " "),
        }
    }

    fn enter(&mut self, phase: Phase, now_ms: u64) {
        if let Some(last) = self.times.last_mut() {
            last.ended_ms = Some(now_ms);
        }
        self.times.push(PhaseTime {
            phase,
            started_ms: now_ms,
            ended_ms: if phase == Phase::Recovered {
                Some(now_ms)
            } else {
                None
            },
        });
        self.phase = phase;
    }

    /// Takes one event. Events of another epoch (an earlier recovery's
    /// late answers) are ignored; an event the phase does not expect
    /// abandons the recovery.
    pub fn handle(&mut self, event: Event, now_ms: u64) -> Result<Vec<Command>, RecoveryError> {
        match (self.phase, event) {
            (Phase::ReadingCoreState, Event::CoreStateRead { revision, state }) => {
                Ok(self.on_core_state(revision, state, now_ms))
            }
            (
                Phase::LockingTLogs,
                Event::TLogLocked {
                    epoch,
                    index,
                    reply,
                },
            ) => self.on_locked(epoch, index, reply, now_ms),
            (Phase::ReadingShardMap, Event::ShardChangesRead { epoch, changes }) => {
                if self.state.current().is_none_or(|g| g.epoch != epoch) {
                    return Ok(Vec::new());
                }
                let end = self.pending_end.as_ref().expect("read after the locks");
                let through = end.version;
                let shards = self.shards.as_ref().expect("read with the core state");
                self.shards = Some(shards.advanced(through, &changes)?);
                Ok(self.recruit_tlogs(through, now_ms))
            }
            (Phase::RecruitingTLogs, Event::TLogsRecruited { epoch, tlogs }) => {
                if epoch != self.epoch {
                    return Ok(Vec::new());
                }
                Ok(self.on_tlogs(tlogs, now_ms))
            }
            (Phase::RecordingGeneration, Event::CoreStateWritten { revision }) => {
                self.revision = revision;
                self.enter(Phase::RecruitingCommitPath, now_ms);
                Ok(vec![Command::RecruitCommitPath {
                    epoch: self.epoch,
                    start_after: self.begin,
                    floor: self.state.current().map_or(self.begin, |g| g.floor),
                    tlogs: self.tlogs.clone(),
                    proxies: self.config.proxies,
                }])
            }
            (Phase::RecruitingCommitPath, Event::CommitPathRecruited { epoch, path }) => {
                if epoch != self.epoch {
                    return Ok(Vec::new());
                }
                self.sequencer = Some(path.sequencer);
                self.state = self.state.with_commit_path(path);
                self.enter(Phase::RecordingCommitPath, now_ms);
                Ok(vec![Command::WriteCoreState {
                    expected_revision: self.revision,
                    state: self.state.clone(),
                }])
            }
            (Phase::RecordingCommitPath, Event::CoreStateWritten { revision }) => {
                self.revision = revision;
                self.enter(Phase::OpeningCommitPath, now_ms);
                let sequencer = self.sequencer.expect("recorded with the commit path");
                Ok(vec![Command::OpenCommitPath {
                    epoch: self.epoch,
                    sequencer,
                }])
            }
            (Phase::OpeningCommitPath, Event::CommitPathOpened { epoch }) => {
                if epoch == self.epoch {
                    self.enter(Phase::Recovered, now_ms);
                }
                Ok(Vec::new())
            }
            (_, Event::TLogLocked { .. }) => Ok(Vec::new()),
            (phase, event) => Err(RecoveryError::Unexpected {
                event: format!("{event:?}"),
                phase: phase.name(),
            }),
        }
    }

    fn on_core_state(&mut self, revision: u64, state: CoreState, now_ms: u64) -> Vec<Command> {
        self.revision = revision;
        self.epoch = state.epoch + 1;
        let current = state.current().cloned();
        self.shards = Some(
            state
                .shard_map
                .clone()
                .unwrap_or_else(|| ShardMapSnapshot::new(Version::ZERO, &self.initial_shards)),
        );
        self.state = state;
        match current {
            Some(current) if current.commit_path.is_some() => {
                self.locking = Some(Locking {
                    epoch: current.epoch,
                    tlogs: current.tlogs.clone(),
                    tlog_count: current.tlogs.len(),
                    replication: current.replication,
                    locked: Vec::new(),
                });
                self.enter(Phase::LockingTLogs, now_ms);
                vec![Command::LockTLogs {
                    epoch: current.epoch,
                    tlogs: current.tlogs.iter().copied().enumerate().collect(),
                }]
            }
            // Never opened: nothing committed in it, so it ends where it began.
            Some(current) => self.recruit_tlogs(current.begin_version, now_ms),
            None => {
                let begin = self
                    .state
                    .generations
                    .last()
                    .and_then(|g| g.end.as_ref())
                    .map_or(Version::ZERO, |e| e.version);
                self.recruit_tlogs(begin, now_ms)
            }
        }
    }

    fn on_locked(
        &mut self,
        epoch: u64,
        index: usize,
        reply: LockReply,
        now_ms: u64,
    ) -> Result<Vec<Command>, RecoveryError> {
        let Some(locking) = self.locking.as_mut().filter(|l| l.epoch == epoch) else {
            return Ok(Vec::new());
        };
        if locking.locked.iter().any(|(i, _)| *i == index) {
            return Ok(Vec::new());
        }
        locking.locked.push((index, reply));
        match recovery_version(locking.tlog_count, locking.replication, &locking.locked) {
            Ok(end) => {
                let through = end.version;
                let holding =
                    tlogs_for_team(METADATA_TEAM, locking.tlog_count, locking.replication);
                let tlogs = holding
                    .into_iter()
                    .filter(|i| end.locked.contains(i))
                    .map(|i| locking.tlogs[i])
                    .collect();
                let epoch = locking.epoch;
                self.locking = None;
                self.pending_end = Some(end);
                let after = self
                    .shards
                    .as_ref()
                    .expect("read with the core state")
                    .version;
                if after >= through {
                    return Ok(self.recruit_tlogs(through, now_ms));
                }
                self.enter(Phase::ReadingShardMap, now_ms);
                Ok(vec![Command::ReadShardChanges {
                    epoch,
                    tlogs,
                    after,
                    through,
                }])
            }
            Err(RecoveryVersionError::Uncovered { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn recruit_tlogs(&mut self, begin: Version, now_ms: u64) -> Vec<Command> {
        self.begin = begin;
        self.enter(Phase::RecruitingTLogs, now_ms);
        vec![Command::RecruitTLogs {
            epoch: self.epoch,
            begin,
            count: self.config.tlogs,
        }]
    }

    fn on_tlogs(&mut self, tlogs: Vec<SocketAddr>, now_ms: u64) -> Vec<Command> {
        let end = self.pending_end.take().unwrap_or(GenerationEnd {
            version: self.begin,
            locked: Vec::new(),
        });
        self.tlogs = tlogs.clone();
        let shards = self.shards.clone().expect("read with the core state");
        let excluded = match &self.exclusion {
            Some(exclusion) => exclusion.servers_for(&shards),
            None => {
                let last = self.state.generations.last();
                last.map(|g| g.excluded_servers.clone()).unwrap_or_default()
            }
        };
        self.state = self
            .state
            .recovered(end, tlogs, self.config.replication, excluded)
            .with_shard_map(shards);
        self.enter(Phase::RecordingGeneration, now_ms);
        vec![Command::WriteCoreState {
            expected_revision: self.revision,
            state: self.state.clone(),
        }]
    }
}

#[cfg(test)]
mod tests;
