//! The RPC messages as owned Rust types, so that role code never handles
//! flatbuffers lifetimes.
//!
//! ```text
//!  Envelope { request_id, Message } ──encode──▶ flatbuffer bytes (schema/rpc.fbs)
//!  Envelope { request_id, Message } ◀─decode─── frame payload (verified first)
//! ```
//!
//! Decoding verifies the buffer before reading it, so hostile input yields a
//! [`DecodeError`], never a panic. Team block payloads are not copied: the
//! decoded [`TeamBlockData::data`] is a slice of the received frame.

use std::fmt;

use bytes::Bytes;

use crate::block::{BlockError, TeamBlock};
use crate::frame::FramePayload;
use crate::types::{Mutation, ProxyId, StorageServerId, StorageTeamId, Version};

mod wire;
mod workers;

pub use workers::{
    ClusterInfoReply, HostedRole, Recruit, RecruitRequest, RegisterWorkerRequest, RoleKind,
    WorkerStatusReply,
};

/// The raw bytes of one team's message block (see [`crate::block`]); parse
/// them with [`crate::block::TeamBlock::parse`] where the content matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamBlockData {
    pub team: StorageTeamId,
    pub data: Bytes,
}

impl TeamBlockData {
    /// Validates the bytes as a block. The team inside the block is the one
    /// that counts; a caller that cares compares it with `self.team`.
    pub fn parse(&self) -> Result<TeamBlock, BlockError> {
        TeamBlock::parse(self.data.clone())
    }
}

impl From<TeamBlock> for TeamBlockData {
    fn from(block: TeamBlock) -> Self {
        TeamBlockData {
            team: block.team(),
            data: block.bytes().clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TLogCommitRequest {
    pub prev_version: Version,
    pub version: Version,
    pub known_committed_version: Version,
    pub teams: Vec<TeamBlockData>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TLogCommitReply {
    pub version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeekRequest {
    pub team: StorageTeamId,
    pub begin: Version,
    pub max_bytes: u32,
    /// How long to wait for new data when there is none; 0 answers at once.
    pub timeout_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekReply {
    pub blocks: Vec<TeamBlockData>,
    /// Every version below `end` is complete for the team on this TLog.
    pub end: Version,
    pub popped: Version,
    pub max_known_version: Version,
    /// The TLog is locked and nothing at or after `end` will ever come.
    pub end_of_stream: bool,
    /// Every version at or below this is committed cluster-wide, as the
    /// proxies told this TLog: a lower bound of the committed version.
    pub known_committed_version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PopRequest {
    pub team: StorageTeamId,
    pub server: StorageServerId,
    pub version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockReply {
    /// The last durable version of the ended epoch.
    pub end_version: Version,
    pub known_committed_version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterTeamRequest {
    pub team: StorageTeamId,
    pub servers: Vec<StorageServerId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TeamStatus {
    pub team: StorageTeamId,
    pub popped: Version,
    /// Bytes of the team's data its servers have not yet popped (by
    /// segment: a segment's data of the team counts until all is popped).
    pub bytes: u64,
    pub servers: Vec<StorageServerId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TLogStatusReply {
    pub durable_version: Version,
    pub known_committed_version: Version,
    pub locked: bool,
    pub poisoned: bool,
    pub memory_bytes: u64,
    pub memory_budget: u64,
    pub disk_bytes: u64,
    /// The team whose unpopped data holds back truncation of the oldest
    /// segment.
    pub truncation_blocker: Option<StorageTeamId>,
    pub teams: Vec<TeamStatus>,
    /// Why commits are not being made durable now: the TLog waits for
    /// what it needs (disk space) and retries, or its chain has a gap (a
    /// commit gave up waiting for its predecessor) that only the
    /// predecessor or a recovery closes.
    pub stalled: Option<String>,
}

/// A batch's one call to the sequencer's process: commit versions from the
/// sequencer, then resolution at them by the resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceRequest {
    pub proxy: ProxyId,
    /// Counts the proxy's requests: a retry gets the same versions, and
    /// the same resolution.
    pub request_num: u64,
    /// One per client commit of the batch, in order.
    pub transactions: Vec<ResolveTransaction>,
    /// A report of a committed version carried by this call, as
    /// [`ReportCommittedRequest`] would make it (`Version::ZERO`: none):
    /// it is recorded before the versions are handed out, so a reply
    /// means the sequencer heard it.
    pub committed: Version,
}

/// The versions handed out for a batch, and how resolving it went. The
/// versions are spent either way: a batch whose resolving failed is pushed
/// empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceReply {
    pub versions: GetCommitVersionReply,
    pub resolved: Result<ResolveReply, ErrorReply>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetCommitVersionReply {
    pub prev_version: Version,
    pub version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportCommittedRequest {
    pub proxy: ProxyId,
    pub version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetReadVersionReply {
    pub version: Version,
}

/// Keys in `[begin, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub begin: Bytes,
    pub end: Bytes,
}

impl KeyRange {
    /// Whether the two ranges share a key.
    pub fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}

/// What the resolver checks of one client commit: whether a key of
/// `read_ranges` was written after `read_version` (system keys only), and
/// the system-key mutations every proxy applies when it was not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveTransaction {
    pub read_version: Version,
    pub read_ranges: Vec<KeyRange>,
    pub write_ranges: Vec<KeyRange>,
    pub metadata: Vec<Mutation>,
}

/// What the resolver takes: a [`SequenceRequest`] at the versions the
/// sequencer handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveRequest {
    pub proxy: ProxyId,
    pub prev_version: Version,
    pub version: Version,
    pub transactions: Vec<ResolveTransaction>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedMetadata {
    pub version: Version,
    pub mutations: Vec<Mutation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveReply {
    /// Other proxies' metadata since this proxy's previous batch, by version.
    pub metadata: Vec<VersionedMetadata>,
    /// One per transaction of the request: true when it conflicts.
    pub conflicts: Vec<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCommitRequest {
    pub mutations: Vec<Mutation>,
    /// Admin tools may write system keys; clients may not.
    pub allow_system_keys: bool,
    /// With `read_ranges`, a conditional commit: refused `not_committed`,
    /// whole, when a key of them was written after `read_version`. The
    /// ranges must lie in the system key space (admin tools only).
    pub read_version: Version,
    pub read_ranges: Vec<KeyRange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCommitReply {
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetValueRequest {
    pub key: Bytes,
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetValueReply {
    pub value: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRangeRequest {
    pub begin: Bytes,
    pub end: Bytes,
    pub limit: u32,
    pub reverse: bool,
    pub version: Version,
    /// Read for a copy (a move or a rebuild), which yields to the server's
    /// foreground reads and may end its page early to do so (`more` says
    /// so). Only forward reads are served this way.
    pub copy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRangeReply {
    pub pairs: Vec<(Bytes, Bytes)>,
    /// More pairs exist in the range beyond the limit.
    pub more: bool,
}

impl GetRangeReply {
    /// Where the part of a forward read ending at `end` that this reply
    /// answers for ends: past its last key when there are more pairs,
    /// else `end`.
    pub fn forward_end(&self, end: &Bytes) -> Bytes {
        match self.pairs.last() {
            Some((key, _)) if self.more => crate::key_after(key),
            _ => end.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StorageStatusReply {
    pub server: StorageServerId,
    pub applied_version: Version,
    pub durable_version: Version,
    pub oldest_readable_version: Version,
    /// The cluster's committed version when the status was taken.
    pub committed_version: Version,
    pub window_bytes: u64,
    pub teams: Vec<StorageTeamId>,
    /// Why the server stopped applying, when it did.
    pub stopped: Option<String>,
    /// Why the server cannot make versions durable now, while it waits
    /// for what it needs (disk space) and retries.
    pub stalled: Option<String>,
    /// What the server is copying from its teammates while it rebuilds
    /// (the log no longer held what it needed); it serves no reads
    /// meanwhile.
    pub rebuilding: Option<String>,
    /// The key ranges it is adding (a move named one of its teams a
    /// destination), in key order.
    pub adding: Vec<AddingRangeStatus>,
    /// The newest generation the server follows: it knows that every
    /// older one ended, and where (0 while it knows none, and where the
    /// cluster file pins the TLogs). Old generations retire only once
    /// every server follows a newer one.
    pub following_epoch: u64,
}

/// A key range a storage server is adding, copied page by page from a
/// server of its source teams.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AddingRangeStatus {
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_key"))]
    pub begin: Bytes,
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_key"))]
    pub end: Bytes,
    /// Where the installed part of the range ends.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_key"))]
    pub installed_to: Bytes,
    pub pairs_copied: u64,
    pub bytes_copied: u64,
    /// Every page installed and durable: the range may flip to this server.
    pub ready: bool,
    /// The last failure of the copy, while it retries.
    pub problem: Option<String>,
    /// Milliseconds since the copy last got a page (or began).
    pub idle_ms: u64,
    /// The stored size still to copy (keys, values and a per-pair
    /// overhead), estimated from a source's byte sample; `None` until a
    /// source has answered.
    pub size_left: Option<u64>,
    /// The stored size copied a second, over the last few seconds.
    pub size_per_sec: u64,
}

/// The most ranges one [`Message::ShardMetrics`] request may ask about.
pub const MAX_SHARD_METRICS_RANGES: usize = 256;

/// Bytes a pair counts for beyond its key and value in a stored size: the
/// measure of [`ShardMetrics::bytes`], of a copy's size left and rate, and
/// of the move rate limit.
pub const STORED_PAIR_OVERHEAD: u64 = 32;

/// The stored size of a pair: its key, its value and the overhead of
/// storing them.
pub fn stored_size(key_len: usize, value_len: usize) -> u64 {
    key_len as u64 + value_len as u64 + STORED_PAIR_OVERHEAD
}

/// What a storage server holds and takes in one key range, estimated from
/// its samples (`storage_server::sample`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMetrics {
    /// The stored size of the pairs held in the range.
    pub bytes: u64,
    /// Writes applied in the range per second, over the last seconds.
    pub write_ops_per_sec: u64,
    pub write_bytes_per_sec: u64,
    /// A key cutting the range into halves by bytes held.
    pub split_by_bytes: Option<Bytes>,
    /// A key cutting the range into halves by writes.
    pub split_by_writes: Option<Bytes>,
}

/// Keys in status JSON: their escaped text (`key_text`).
#[cfg(feature = "serde")]
fn serialize_key<S: serde::Serializer>(key: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::key_text::escape(key))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SequencerStatusReply {
    /// The last commit version handed out.
    pub last_version: Version,
    /// The highest version the proxies reported durable on every TLog.
    pub committed_version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ProxyStatusReply {
    pub proxy: ProxyId,
    /// The highest version this proxy saw durable on every TLog.
    pub known_committed_version: Version,
    /// Client commits this proxy acknowledged since it started.
    pub commits: u64,
    /// Which teams' commits the proxy refuses while their storage servers
    /// fall behind, and why.
    pub throttling: Option<String>,
    /// How fast the proxy lets new commits into batches while storage
    /// servers fall behind, and why; queued commits wait, none is refused.
    pub delaying: Option<String>,
}

/// A coordinated register: a named value whose revision every write raises
/// by one. A register never written reads as revision 0 with no value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CoordinatedRegister {
    pub name: String,
    pub revision: u64,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub value: Bytes,
}

/// Reads a register once its revision passes `seen_revision`, or once
/// `wait_ms` passed (bounded by the coordinator), whichever is first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatedWatchRequest {
    pub name: String,
    pub seen_revision: u64,
    pub wait_ms: u32,
}

/// Writes a register only if its revision is still `expected_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatedWriteRequest {
    pub name: String,
    pub expected_revision: u64,
    pub value: Bytes,
}

/// The register after a read or a write; `written` says whether a write
/// took (if not, the register holds what another writer put there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatedReply {
    pub register: CoordinatedRegister,
    pub written: bool,
}

/// A coordinator's answer to a status request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CoordinatorStatusReply {
    pub id: u64,
    /// The coordinator it believes leads, if it knows one.
    pub leader: Option<u64>,
    pub term: u64,
    /// The index of the last entry applied to its registers.
    pub last_applied: u64,
    /// Why it cannot serve, if it cannot.
    pub problem: Option<String>,
    /// The cluster controller (the id of the coordinator hosting it) as
    /// this coordinator's candidate last saw it, if it knows one.
    pub controller: Option<u64>,
    /// When this coordinator hosts the controller: every process it
    /// watches, and whether it takes it for failed.
    pub watched: Vec<WatchedProcess>,
    /// When this coordinator hosts the controller: its recoveries and the
    /// workers it hears from.
    pub recovery: Option<RecoveryReport>,
}

/// What a cluster controller says of its recoveries and workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RecoveryReport {
    /// The generation it recovered or adopted last; 0 before any.
    pub epoch: u64,
    /// The phase under way and what it waits for, while it recovers.
    pub recovering: Option<String>,
    /// The last recovery's phases and how long each took, in ms.
    pub phases: Vec<(String, u64)>,
    /// Why the last recovery was abandoned, if it was.
    pub last_failure: Option<String>,
    pub workers: Vec<WorkerReport>,
    /// The live generations, oldest first, one line each, then the
    /// version the recorded shard map is as of and its moves in flight.
    pub generations: Vec<String>,
    /// What the data distributor last found and did, one line each.
    pub distribution: Vec<String>,
    /// Why the data distributor is stuck: its rounds or moves keep failing.
    pub distribution_problem: Option<String>,
    /// Why the storage servers the configuration excludes are not left
    /// out: a team would have no server.
    pub configuration_problem: Option<String>,
}

/// A worker as the controller hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WorkerReport {
    pub address: String,
    /// Milliseconds since its last registration.
    pub silent_ms: u64,
    /// `kind epoch/id`, one per hosted role.
    pub roles: Vec<String>,
}

/// A process the cluster controller watches, and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WatchedProcess {
    pub role: String,
    pub id: u64,
    pub address: String,
    /// How long it has been failed, if it is.
    pub failed_for_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetKeyLocationRequest {
    pub key: Bytes,
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetKeyLocationReply {
    /// The shard holding the key: `[begin, end)`.
    pub begin: Bytes,
    pub end: Bytes,
    /// The shard's source teams and their servers: who answers reads.
    pub teams: Vec<(StorageTeamId, Vec<StorageServerId>)>,
    /// The teams the shard is moving to, while a move is under way.
    pub moving_to: Vec<StorageTeamId>,
    /// Every shard-map change up to this version is in the answer (a
    /// proxy may not have seen another's changes of the version asked
    /// for yet): what a commit conditional on it gives as read version.
    pub as_of: Version,
}

/// A request's failure, sent back in place of its reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// The version the refusal concerns, when it has one: for
    /// `peek_before_popped`, the team's popped version.
    pub version: Option<Version>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            version: None,
        }
    }

    /// The same refusal, naming the version it concerns.
    pub fn at_version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }
}

/// What went wrong with a request, in a form the caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unknown,
    MalformedRequest,
    UnknownMessage,
    FrameTooLarge,
    TLogStopped,
    Poisoned,
    PeekBeforePopped,
    UnknownTeam,
    InvalidBlock,
    VersionConflict,
    CommitTooOld,
    MissingPredecessor,
    Overloaded,
    Timeout,
    SystemKey,
    EmptyCommit,
    KeyTooLarge,
    ValueTooLarge,
    CommitTooLarge,
    InvalidRange,
    /// The commit may or may not have been applied.
    CommitUnknownResult,
    Unavailable,
    FutureVersion,
    TransactionTooOld,
    WrongShardServer,
    /// Stored data failed verification: asking again will not help.
    Corrupt,
    /// A cluster-internal request from a peer that has not authenticated
    /// as a cluster member.
    Unauthorized,
    /// A conditional commit's read ranges were written after its read
    /// version; nothing of it was applied.
    NotCommitted,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::Unknown,
        ErrorCode::MalformedRequest,
        ErrorCode::UnknownMessage,
        ErrorCode::FrameTooLarge,
        ErrorCode::TLogStopped,
        ErrorCode::Poisoned,
        ErrorCode::PeekBeforePopped,
        ErrorCode::UnknownTeam,
        ErrorCode::InvalidBlock,
        ErrorCode::VersionConflict,
        ErrorCode::CommitTooOld,
        ErrorCode::MissingPredecessor,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::SystemKey,
        ErrorCode::EmptyCommit,
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::CommitTooLarge,
        ErrorCode::InvalidRange,
        ErrorCode::CommitUnknownResult,
        ErrorCode::Unavailable,
        ErrorCode::FutureVersion,
        ErrorCode::TransactionTooOld,
        ErrorCode::WrongShardServer,
        ErrorCode::Corrupt,
        ErrorCode::Unauthorized,
        ErrorCode::NotCommitted,
    ];

    /// The snake_case name used in logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "unknown",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TLogStopped => "tlog_stopped",
            ErrorCode::Poisoned => "poisoned",
            ErrorCode::PeekBeforePopped => "peek_before_popped",
            ErrorCode::UnknownTeam => "unknown_team",
            ErrorCode::InvalidBlock => "invalid_block",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::CommitTooOld => "commit_too_old",
            ErrorCode::MissingPredecessor => "missing_predecessor",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::SystemKey => "system_key",
            ErrorCode::EmptyCommit => "empty_commit",
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::CommitTooLarge => "commit_too_large",
            ErrorCode::InvalidRange => "invalid_range",
            ErrorCode::CommitUnknownResult => "commit_unknown_result",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::FutureVersion => "future_version",
            ErrorCode::TransactionTooOld => "transaction_too_old",
            ErrorCode::WrongShardServer => "wrong_shard_server",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotCommitted => "not_committed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every request and reply the processes exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    TLogCommit(TLogCommitRequest),
    TLogCommitReply(TLogCommitReply),
    Peek(PeekRequest),
    PeekReply(PeekReply),
    Pop(PopRequest),
    PopReply,
    Lock,
    LockReply(LockReply),
    RegisterTeam(RegisterTeamRequest),
    RegisterTeamReply,
    Status,
    TLogStatus(TLogStatusReply),
    Error(ErrorReply),
    Sequence(SequenceRequest),
    SequenceReply(SequenceReply),
    ReportCommitted(ReportCommittedRequest),
    ReportCommittedReply,
    GetReadVersion,
    GetReadVersionReply(GetReadVersionReply),
    ClientCommit(ClientCommitRequest),
    ClientCommitReply(ClientCommitReply),
    GetValue(GetValueRequest),
    GetValueReply(GetValueReply),
    GetRange(GetRangeRequest),
    GetRangeReply(GetRangeReply),
    StorageStatus(StorageStatusReply),
    GetKeyLocation(GetKeyLocationRequest),
    GetKeyLocationReply(GetKeyLocationReply),
    SequencerStatus(SequencerStatusReply),
    ProxyStatus(ProxyStatusReply),
    /// Between coordinators: one of openraft's messages, serialized by the
    /// coordinator crate.
    Raft(Bytes),
    RaftReply(Bytes),
    /// Reads a coordinated register by name.
    CoordinatedRead(String),
    /// Waits for a coordinated register to change, then reads it.
    CoordinatedWatch(CoordinatedWatchRequest),
    CoordinatedWrite(CoordinatedWriteRequest),
    CoordinatedReply(CoordinatedReply),
    CoordinatorStatus(CoordinatorStatusReply),
    /// From a worker to the cluster controller.
    RegisterWorker(RegisterWorkerRequest),
    RegisterWorkerReply,
    /// From the cluster controller to a worker; answered with the new
    /// role's address.
    Recruit(RecruitRequest),
    RecruitReply(std::net::SocketAddr),
    /// From the cluster controller to a recruited sequencer: the epoch
    /// whose commit path is recorded.
    OpenCommits(u64),
    OpenCommitsReply,
    /// To a coordinator, from anyone: where the commit path is.
    GetClusterInfo,
    ClusterInfo(ClusterInfoReply),
    WorkerStatus(WorkerStatusReply),
    /// From the data distributor to a storage server: the metrics of each
    /// of the ranges (at most [`MAX_SHARD_METRICS_RANGES`]).
    ShardMetrics(Vec<KeyRange>),
    /// One entry per range asked about, in order.
    ShardMetricsReply(Vec<ShardMetrics>),
}

impl Message {
    /// A snake_case name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::TLogCommit(_) => "tlog_commit",
            Message::TLogCommitReply(_) => "tlog_commit_reply",
            Message::Peek(_) => "peek",
            Message::PeekReply(_) => "peek_reply",
            Message::Pop(_) => "pop",
            Message::PopReply => "pop_reply",
            Message::Lock => "lock",
            Message::LockReply(_) => "lock_reply",
            Message::RegisterTeam(_) => "register_team",
            Message::RegisterTeamReply => "register_team_reply",
            Message::Status => "status",
            Message::TLogStatus(_) => "tlog_status",
            Message::Error(_) => "error",
            Message::Sequence(_) => "sequence",
            Message::SequenceReply(_) => "sequence_reply",
            Message::ReportCommitted(_) => "report_committed",
            Message::ReportCommittedReply => "report_committed_reply",
            Message::GetReadVersion => "get_read_version",
            Message::GetReadVersionReply(_) => "get_read_version_reply",
            Message::ClientCommit(_) => "client_commit",
            Message::ClientCommitReply(_) => "client_commit_reply",
            Message::GetValue(_) => "get_value",
            Message::GetValueReply(_) => "get_value_reply",
            Message::GetRange(_) => "get_range",
            Message::GetRangeReply(_) => "get_range_reply",
            Message::StorageStatus(_) => "storage_status",
            Message::GetKeyLocation(_) => "get_key_location",
            Message::GetKeyLocationReply(_) => "get_key_location_reply",
            Message::SequencerStatus(_) => "sequencer_status",
            Message::ProxyStatus(_) => "proxy_status",
            Message::Raft(_) => "raft",
            Message::RaftReply(_) => "raft_reply",
            Message::CoordinatedRead(_) => "coordinated_read",
            Message::CoordinatedWatch(_) => "coordinated_watch",
            Message::CoordinatedWrite(_) => "coordinated_write",
            Message::CoordinatedReply(_) => "coordinated_reply",
            Message::CoordinatorStatus(_) => "coordinator_status",
            Message::RegisterWorker(_) => "register_worker",
            Message::RegisterWorkerReply => "register_worker_reply",
            Message::Recruit(_) => "recruit",
            Message::RecruitReply(_) => "recruit_reply",
            Message::OpenCommits(_) => "open_commits",
            Message::OpenCommitsReply => "open_commits_reply",
            Message::GetClusterInfo => "get_cluster_info",
            Message::ClusterInfo(_) => "cluster_info",
            Message::WorkerStatus(_) => "worker_status",
            Message::ShardMetrics(_) => "shard_metrics",
            Message::ShardMetricsReply(_) => "shard_metrics_reply",
        }
    }

    /// Whether a server should answer this message; replies sent as requests
    /// are answered with `unknown_message`.
    /// Whether a peer that is not a cluster member may send this: the
    /// requests of applications (commits, read versions, reads, locating
    /// keys) and status. Everything else steers the cluster or reads its
    /// log, and only members may send it.
    pub fn is_client_request(&self) -> bool {
        matches!(
            self,
            Message::ClientCommit(_)
                | Message::GetReadVersion
                | Message::GetValue(_)
                | Message::GetRange(_)
                | Message::GetKeyLocation(_)
                | Message::GetClusterInfo
                | Message::Status
        )
    }

    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::TLogCommit(_)
                | Message::Peek(_)
                | Message::Pop(_)
                | Message::Lock
                | Message::RegisterTeam(_)
                | Message::Status
                | Message::Sequence(_)
                | Message::ReportCommitted(_)
                | Message::GetReadVersion
                | Message::ClientCommit(_)
                | Message::GetValue(_)
                | Message::GetRange(_)
                | Message::GetKeyLocation(_)
                | Message::Raft(_)
                | Message::CoordinatedRead(_)
                | Message::CoordinatedWatch(_)
                | Message::CoordinatedWrite(_)
                | Message::RegisterWorker(_)
                | Message::Recruit(_)
                | Message::OpenCommits(_)
                | Message::GetClusterInfo
                | Message::ShardMetrics(_)
        )
    }
}

/// One frame's content: a message and the id that pairs a reply with its
/// request. Request id 0 is reserved for errors about the connection itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub request_id: u64,
    pub message: Message,
}

/// Why a frame's payload is not a message this code understands.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid flatbuffer: {0}")]
    InvalidFlatbuffer(#[from] flatbuffers::InvalidFlatbuffer),
    /// A well-formed envelope whose message type this code does not know
    /// (none, or one from a newer schema).
    #[error("unknown message type in request {request_id}")]
    UnknownMessage { request_id: u64 },
    /// A well-formed message whose content is invalid (e.g. an unknown
    /// mutation kind): the request is refused, the connection stays.
    #[error("invalid request {request_id}: {reason}")]
    InvalidContent { request_id: u64, reason: String },
}

impl Envelope {
    /// The frame payload: the envelope, then the large blocks it attaches.
    pub fn encode(&self) -> FramePayload {
        wire::encode(self)
    }

    /// Verifies the flatbuffer first, so hostile input never panics.
    pub fn decode(frame: Bytes) -> Result<Envelope, DecodeError> {
        wire::decode(frame)
    }
}

#[cfg(test)]
mod tests;
