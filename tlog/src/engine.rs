//! The TLog's state machine: no I/O, no clocks. Events go in, actions come out.
//!
//! ```text
//!  commit/pop/lock/register ──▶ TLogCore ──Action::Append──▶ writer (log + fdatasync)
//!                                  ▲                              │
//!                                  └────── on_durable(seq, locs) ◀┘
//!  peek ──▶ plan_peek ──▶ Ready (memory) | Wait (long poll) | Disk (read from the log)
//! ```
//!
//! Commits are chained by `prev_version`: one whose predecessor has not
//! arrived waits in `pending`; a duplicate of a remembered commit is
//! acknowledged once durable and not appended again. Data becomes visible to
//! peeks only once durable. Recent blocks stay in memory up to the budget;
//! older ones are evicted and served from the log through sparse checkpoints.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use proto::{StorageTeamId, Version};

use crate::log::{ChecksummedPayload, LogPosition, RecordLocation};
use crate::record::{CommitRecord, Metadata, Record};
use crate::store::SegmentId;
use crate::team::TeamState;

pub use prepared::PreparedCommit;

mod peek;
mod prepared;
mod retention;
#[cfg(test)]
mod tests;

pub use peek::finish_disk_peek;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Bytes of blocks kept in memory (durable and not yet durable).
    pub memory_budget: u64,
    /// How long a commit waits for its predecessor before failing.
    pub commit_wait_timeout_ms: u64,
    /// Bytes of commits allowed to wait for predecessors.
    pub max_pending_bytes: u64,
    /// How many recent commits are remembered to recognise duplicates.
    pub dedup_window: usize,
    /// Log bytes between two disk checkpoints of the spilled-data index.
    pub checkpoint_interval: u64,
    /// Log bytes one disk peek may read.
    pub disk_scan_limit: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            memory_budget: 256 << 20,
            commit_wait_timeout_ms: 10_000,
            max_pending_bytes: 64 << 20,
            dedup_window: 100_000,
            checkpoint_interval: 256 << 10,
            disk_scan_limit: 4 << 20,
        }
    }
}

/// Why the core refused a request; the server maps each to a wire error code.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("tlog stopped: its epoch was ended by a lock")]
    TLogStopped,
    #[error("tlog poisoned by a failed write or sync; it accepts no commits")]
    Poisoned,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid block for {team}: {reason}")]
    InvalidBlock { team: StorageTeamId, reason: String },
    #[error("commit {prev}->{version} conflicts with this tlog's chain at {last}")]
    VersionConflict {
        prev: Version,
        version: Version,
        last: Version,
    },
    #[error("commit {version} is older than the duplicates this tlog remembers")]
    CommitTooOld { version: Version },
    #[error("commit {prev}->{version} waited too long for its predecessor (tlog is at {last})")]
    MissingPredecessor {
        prev: Version,
        version: Version,
        last: Version,
    },
    #[error("too many commits wait for predecessors")]
    Overloaded,
    #[error("commit of {bytes} bytes does not fit a log segment (at most {max})")]
    CommitTooLarge { bytes: u64, max: u64 },
    /// Spilled data failed verification when read back for a peek.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("peek at {begin} is below popped version {popped}")]
    PeekBeforePopped { begin: Version, popped: Version },
    #[error("unknown team {0}")]
    UnknownTeam(StorageTeamId),
    #[error("cannot begin a generation at {asked}: this tlog's chain is already at {last}")]
    AlreadyBegun { asked: Version, last: Version },
}

pub struct CommitRequest {
    pub prev_version: Version,
    pub version: Version,
    pub known_committed_version: Version,
    pub blocks: Vec<(StorageTeamId, Bytes)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOutcome {
    pub end_version: Version,
    pub known_committed_version: Version,
}

#[derive(Debug)]
pub enum Action<T> {
    /// Write this record to the log; `seq` orders appends.
    Append {
        seq: u64,
        record: Record,
        payload: ChecksummedPayload,
    },
    RemoveSegmentsBefore(SegmentId),
    CommitDone(T, Result<Version, CoreError>),
    LockDone(T, Result<LockOutcome, CoreError>),
    RegisterDone(T, Result<(), CoreError>),
    BeginDone(T, Result<(), CoreError>),
}

enum Route {
    Accept,
    Park,
    Duplicate,
}

enum Barrier<T> {
    Lock(T),
    Register(T),
    Begin(T),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekResult {
    pub blocks: Vec<Bytes>,
    pub end: Version,
    pub popped: Version,
    pub max_known_version: Version,
    pub known_committed_version: Version,
    pub end_of_stream: bool,
}

/// A peek that must read spilled data from the log.
#[derive(Clone, Debug)]
pub struct DiskPeek {
    pub team: StorageTeamId,
    pub begin: Version,
    pub from: LogPosition,
    /// Versions at or above this are in memory: the scan stops there.
    pub memory_floor: Version,
    pub max_bytes: usize,
    pub scan_limit: usize,
    pub popped: Version,
    pub durable_version: Version,
    pub known_committed_version: Version,
}

#[derive(Debug)]
pub enum PeekPlan {
    Ready(PeekResult),
    /// Nothing at or after `begin` yet: wait for durability or a lock.
    Wait,
    Disk(DiskPeek),
}

struct Pending<T> {
    commit: PreparedCommit,
    waiters: Vec<T>,
    deadline_ms: u64,
    bytes: u64,
}

struct Unsynced<T> {
    seq: u64,
    commit: CommitRecord,
    waiters: Vec<T>,
}

#[derive(Default)]
struct SegmentSummary {
    /// Per team: block bytes in the segment and its last version there.
    teams: BTreeMap<StorageTeamId, (u64, Version)>,
}

pub struct TLogCore<T> {
    config: CoreConfig,
    meta: Metadata,
    durable_version: Version,
    poisoned: bool,
    teams: BTreeMap<StorageTeamId, TeamState>,
    next_seq: u64,
    pending: BTreeMap<Version, Pending<T>>,
    pending_bytes: u64,
    unsynced: VecDeque<Unsynced<T>>,
    /// Answers waiting for the record with their sequence number (and so
    /// everything appended before it) to be durable.
    barriers: Vec<(u64, Barrier<T>)>,
    recent: BTreeMap<Version, Version>,
    /// Durable commits in memory, oldest first, for eviction.
    memory_order: VecDeque<(Version, Vec<StorageTeamId>)>,
    memory_bytes: u64,
    memory_floor: Version,
    checkpoints: BTreeMap<Version, LogPosition>,
    last_checkpoint: Option<LogPosition>,
    segments: BTreeMap<SegmentId, SegmentSummary>,
    /// The last commit past the log's end that could not join the chain:
    /// it gave up waiting for its predecessor, or it named a team this TLog
    /// does not host (a TLog back without its registrations). While the log
    /// still ends where it ended then, its chain has a gap: every commit
    /// after it waits in vain until the missing version comes after all or
    /// a recovery ends the generation.
    chain_gap: Option<ChainGap>,
}

/// A commit that could not join the chain, and where the log ended then.
struct ChainGap {
    log_end: Version,
    why: String,
}

impl<T> TLogCore<T> {
    /// An empty TLog, or the start of a recovery: feed it every record of
    /// the log in order with `recover_record`.
    pub fn new(config: CoreConfig) -> Self {
        TLogCore {
            config,
            meta: Metadata::default(),
            durable_version: Version::ZERO,
            poisoned: false,
            teams: BTreeMap::new(),
            next_seq: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            unsynced: VecDeque::new(),
            barriers: Vec::new(),
            recent: BTreeMap::new(),
            memory_order: VecDeque::new(),
            memory_bytes: 0,
            memory_floor: Version::ZERO,
            checkpoints: BTreeMap::new(),
            last_checkpoint: None,
            segments: BTreeMap::new(),
            chain_gap: None,
        }
    }

    /// Applies one durable record found by recovery.
    pub fn recover_record(&mut self, location: RecordLocation, record: Record) {
        match record {
            Record::Commit(commit) => {
                for (team, _) in &commit.blocks {
                    self.teams.entry(*team).or_default();
                }
                self.meta.apply_commit(&commit);
                self.durable_version = commit.version;
                self.remember(commit.prev_version, commit.version);
                self.note_location(location, &commit);
                self.make_visible(commit);
            }
            other => {
                if let Record::Register { team, .. } | Record::Pop { team, .. } = &other {
                    self.teams.entry(*team).or_default();
                }
                self.meta.apply(&other);
            }
        }
        self.evict_to_budget();
    }

    /// Ends recovery: applies pops to what was loaded and evicts to budget.
    pub fn finish_recovery(&mut self) -> Vec<Action<T>> {
        let known = self
            .meta
            .registered
            .keys()
            .chain(self.meta.pops.keys().map(|(t, _)| t));
        for team in known {
            self.teams.entry(*team).or_default();
        }
        let ids: Vec<StorageTeamId> = self.teams.keys().copied().collect();
        for team in ids {
            self.refresh_popped(team);
        }
        self.durable_version = self.meta.last_version;
        self.evict_to_budget();
        self.truncation_actions()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    pub fn durable_version(&self) -> Version {
        self.durable_version
    }

    pub fn is_locked(&self) -> bool {
        self.meta.locked
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    fn append(&mut self, record: Record, actions: &mut Vec<Action<T>>) -> u64 {
        let payload = ChecksummedPayload::new(record.encode());
        self.append_encoded(record, payload, actions)
    }

    fn append_encoded(
        &mut self,
        record: Record,
        payload: ChecksummedPayload,
        actions: &mut Vec<Action<T>>,
    ) -> u64 {
        self.next_seq += 1;
        actions.push(Action::Append {
            seq: self.next_seq,
            record,
            payload,
        });
        self.next_seq
    }

    fn remember(&mut self, prev: Version, version: Version) {
        self.recent.insert(version, prev);
        while self.recent.len() > self.config.dedup_window {
            self.recent.pop_first();
        }
    }

    /// A commit, checked on its own by [`PreparedCommit::new`].
    pub fn commit(&mut self, commit: PreparedCommit, token: T, now_ms: u64) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        match self.route(&commit) {
            Err(e) => {
                // No retry of this commit can succeed here, and the chain
                // needs its version: the gap is there at once.
                if matches!(e, CoreError::UnknownTeam(_))
                    && commit.version() > self.meta.last_version
                {
                    self.chain_gap = Some(ChainGap {
                        log_end: self.meta.last_version,
                        why: format!(
                            "commit {}->{} refused: {e}",
                            commit.prev_version(),
                            commit.version()
                        ),
                    });
                }
                actions.push(Action::CommitDone(token, Err(e)));
            }
            Ok(Route::Duplicate) => self.ack_duplicate(commit.version(), token, &mut actions),
            Ok(Route::Accept) => {
                self.accept(commit, vec![token], &mut actions);
                self.accept_chained(&mut actions);
            }
            Ok(Route::Park) => self.park(commit, token, now_ms, &mut actions),
        }
        actions
    }

    /// Where a commit goes in the chain, or why it is refused.
    fn route(&self, commit: &PreparedCommit) -> Result<Route, CoreError> {
        if self.poisoned {
            return Err(CoreError::Poisoned);
        }
        if self.meta.locked {
            return Err(CoreError::TLogStopped);
        }
        // Team state exists only for the teams the proxies registered from
        // the topology: a commit naming another team is refused whole.
        if let Some((team, _)) = commit
            .record
            .blocks
            .iter()
            .find(|(team, _)| !self.meta.registered.contains_key(team))
        {
            return Err(CoreError::UnknownTeam(*team));
        }
        let last = self.meta.last_version;
        let (prev, version) = (commit.prev_version(), commit.version());
        let conflict = || CoreError::VersionConflict {
            prev,
            version,
            last,
        };
        if version <= last {
            let too_old = self
                .recent
                .first_key_value()
                .is_some_and(|(v, _)| version < *v);
            return match self.recent.get(&version) {
                Some(p) if *p == prev => Ok(Route::Duplicate),
                None if too_old => Err(CoreError::CommitTooOld { version }),
                _ => Err(conflict()),
            };
        }
        if let Some(p) = self.pending.get(&prev) {
            if p.commit.version() != version {
                return Err(conflict());
            }
        }
        match prev.cmp(&last) {
            std::cmp::Ordering::Less => Err(conflict()),
            std::cmp::Ordering::Equal => Ok(Route::Accept),
            std::cmp::Ordering::Greater => Ok(Route::Park),
        }
    }

    fn ack_duplicate(&mut self, version: Version, token: T, actions: &mut Vec<Action<T>>) {
        if version <= self.durable_version {
            actions.push(Action::CommitDone(token, Ok(version)));
        } else if let Some(u) = self
            .unsynced
            .iter_mut()
            .find(|u| u.commit.version == version)
        {
            u.waiters.push(token);
        } else {
            actions.push(Action::CommitDone(
                token,
                Err(CoreError::VersionConflict {
                    prev: Version::ZERO,
                    version,
                    last: self.meta.last_version,
                }),
            ));
        }
    }

    fn park(
        &mut self,
        commit: PreparedCommit,
        token: T,
        now_ms: u64,
        actions: &mut Vec<Action<T>>,
    ) {
        let prev = commit.prev_version();
        if let Some(p) = self.pending.get_mut(&prev) {
            // The same commit again, still waiting for its predecessor.
            p.waiters.push(token);
            return;
        }
        let bytes = commit.pending_bytes();
        if self.pending_bytes + bytes > self.config.max_pending_bytes {
            actions.push(Action::CommitDone(token, Err(CoreError::Overloaded)));
            return;
        }
        self.pending_bytes += bytes;
        self.pending.insert(
            prev,
            Pending {
                commit,
                waiters: vec![token],
                deadline_ms: now_ms.saturating_add(self.config.commit_wait_timeout_ms),
                bytes,
            },
        );
    }

    fn accept(&mut self, prepared: PreparedCommit, waiters: Vec<T>, actions: &mut Vec<Action<T>>) {
        let PreparedCommit {
            payload,
            record: commit,
        } = prepared;
        for (team, _) in &commit.blocks {
            self.teams.entry(*team).or_default();
        }
        self.memory_bytes += commit_cost(&commit);
        self.meta.apply_commit(&commit);
        self.remember(commit.prev_version, commit.version);
        let seq = self.append_encoded(Record::Commit(commit.clone()), payload, actions);
        self.unsynced.push_back(Unsynced {
            seq,
            commit,
            waiters,
        });
    }

    fn accept_chained(&mut self, actions: &mut Vec<Action<T>>) {
        while let Some(p) = self.pending.remove(&self.meta.last_version) {
            self.pending_bytes -= p.bytes;
            self.accept(p.commit, p.waiters, actions);
        }
    }

    /// Fails commits whose predecessor did not come in time.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let expired: Vec<Version> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let p = self.pending.remove(&key).expect("listed above");
            self.pending_bytes -= p.bytes;
            let err = CoreError::MissingPredecessor {
                prev: p.commit.prev_version(),
                version: p.commit.version(),
                last: self.meta.last_version,
            };
            for w in p.waiters {
                actions.push(Action::CommitDone(w, Err(err.clone())));
            }
            self.chain_gap = Some(ChainGap {
                log_end: self.meta.last_version,
                why: err.to_string(),
            });
        }
        actions
    }

    /// Why commits cannot go on, if a commit could not join the chain and
    /// the log has not moved since.
    pub fn chain_gap(&self) -> Option<String> {
        self.chain_gap
            .as_ref()
            .filter(|gap| gap.log_end == self.meta.last_version)
            .map(|gap| format!("{}: its chain has a gap", gap.why))
    }

    /// The writer made every append up to `through_seq` durable; `commits`
    /// says where each commit record landed.
    pub fn on_durable(
        &mut self,
        through_seq: u64,
        commits: &[(Version, RecordLocation)],
    ) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let mut locations = commits.iter().peekable();
        while self.unsynced.front().is_some_and(|u| u.seq <= through_seq) {
            let u = self.unsynced.pop_front().expect("front checked");
            self.memory_bytes -= commit_cost(&u.commit);
            while let Some((version, location)) = locations.peek() {
                if *version > u.commit.version {
                    break;
                }
                if *version == u.commit.version {
                    self.note_location(*location, &u.commit);
                }
                locations.next();
            }
            self.durable_version = u.commit.version;
            let version = u.commit.version;
            self.make_visible(u.commit);
            for w in u.waiters {
                actions.push(Action::CommitDone(w, Ok(version)));
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.barriers)
            .into_iter()
            .partition(|(seq, _)| *seq <= through_seq);
        self.barriers = waiting;
        for (_, barrier) in done {
            actions.push(match barrier {
                Barrier::Lock(token) => Action::LockDone(token, Ok(self.lock_outcome())),
                Barrier::Register(token) => Action::RegisterDone(token, Ok(())),
                Barrier::Begin(token) => Action::BeginDone(token, Ok(())),
            });
        }
        self.evict_to_budget();
        actions.extend(self.truncation_actions());
        actions
    }

    /// A write or sync failed: nothing appended since the last success is
    /// durable, and the TLog never accepts another commit.
    pub fn on_poisoned(&mut self) -> Vec<Action<T>> {
        self.poisoned = true;
        let mut actions = Vec::new();
        for u in self.unsynced.drain(..) {
            for w in u.waiters {
                actions.push(Action::CommitDone(w, Err(CoreError::Poisoned)));
            }
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            for w in p.waiters {
                actions.push(Action::CommitDone(w, Err(CoreError::Poisoned)));
            }
        }
        for (_, barrier) in self.barriers.drain(..) {
            actions.push(match barrier {
                Barrier::Lock(token) => Action::LockDone(token, Err(CoreError::Poisoned)),
                Barrier::Register(token) => Action::RegisterDone(token, Err(CoreError::Poisoned)),
                Barrier::Begin(token) => Action::BeginDone(token, Err(CoreError::Poisoned)),
            });
        }
        self.pending_bytes = 0;
        actions
    }

    fn note_location(&mut self, location: RecordLocation, commit: &CommitRecord) {
        let position = LogPosition {
            segment: location.segment,
            offset: location.offset,
        };
        let due = match self.last_checkpoint {
            None => true,
            Some(last) => {
                last.segment != position.segment
                    || position.offset >= last.offset + self.config.checkpoint_interval
            }
        };
        if due {
            self.checkpoints.insert(commit.version, position);
            self.last_checkpoint = Some(position);
        }
        let summary = self.segments.entry(location.segment).or_default();
        for (team, block) in &commit.blocks {
            let entry = summary.teams.entry(*team).or_default();
            entry.0 += block.len() as u64;
            entry.1 = commit.version;
        }
    }

    fn make_visible(&mut self, commit: CommitRecord) {
        let mut teams = Vec::with_capacity(commit.blocks.len());
        for (team, block) in commit.blocks {
            let state = self.teams.entry(team).or_default();
            if commit.version < state.popped {
                continue;
            }
            self.memory_bytes += state.push(commit.version, block);
            teams.push(team);
        }
        self.memory_order.push_back((commit.version, teams));
    }

    fn evict_to_budget(&mut self) {
        while self.memory_bytes > self.config.memory_budget {
            let Some((version, teams)) = self.memory_order.pop_front() else {
                break;
            };
            for team in teams {
                if let Some(state) = self.teams.get_mut(&team) {
                    self.memory_bytes -= state.evict(version);
                }
            }
            self.memory_floor = version.next();
        }
    }

    /// Ends the epoch. The answer comes once every accepted commit and the
    /// lock itself are durable.
    pub fn lock(&mut self, token: T) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        if self.poisoned {
            actions.push(Action::LockDone(token, Err(CoreError::Poisoned)));
            return actions;
        }
        if !self.meta.locked {
            self.meta.locked = true;
            for (_, p) in std::mem::take(&mut self.pending) {
                for w in p.waiters {
                    actions.push(Action::CommitDone(w, Err(CoreError::TLogStopped)));
                }
            }
            self.pending_bytes = 0;
            let seq = self.append(Record::Lock, &mut actions);
            self.barriers.push((seq, Barrier::Lock(token)));
        } else if self.unsynced.is_empty() && self.barriers.is_empty() {
            actions.push(Action::LockDone(token, Ok(self.lock_outcome())));
        } else {
            self.barriers.push((self.next_seq, Barrier::Lock(token)));
        }
        actions
    }

    /// Starts this TLog's chain after `version`, the recovery version that
    /// ended the generation before: the first commit it accepts names
    /// `version` as its predecessor, and everything up to it counts as
    /// committed. Answered once durable (a metadata snapshot in the log, so
    /// a restart keeps it); asked again with the same version, it answers
    /// once that is durable. A TLog whose chain already moved refuses.
    pub fn begin_at(&mut self, version: Version, token: T) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        if self.poisoned {
            actions.push(Action::BeginDone(token, Err(CoreError::Poisoned)));
            return actions;
        }
        let last = self.meta.last_version;
        if self.meta.locked
            || (last != version && (last != Version::ZERO || !self.pending.is_empty()))
        {
            actions.push(Action::BeginDone(
                token,
                Err(CoreError::AlreadyBegun {
                    asked: version,
                    last,
                }),
            ));
            return actions;
        }
        if last == version {
            if self.unsynced.is_empty() && self.barriers.is_empty() {
                actions.push(Action::BeginDone(token, Ok(())));
            } else {
                self.barriers.push((self.next_seq, Barrier::Begin(token)));
            }
            return actions;
        }
        self.meta.last_version = version;
        self.meta.known_committed_version = self.meta.known_committed_version.max(version);
        self.durable_version = version;
        let seq = self.append(Record::Snapshot(self.meta.clone()), &mut actions);
        self.barriers.push((seq, Barrier::Begin(token)));
        actions
    }

    fn lock_outcome(&self) -> LockOutcome {
        LockOutcome {
            end_version: self.durable_version,
            known_committed_version: self.meta.known_committed_version,
        }
    }
}

fn commit_cost(commit: &CommitRecord) -> u64 {
    commit.block_bytes() as u64 + commit.blocks.len() as u64 * crate::team::BLOCK_OVERHEAD
}
