//! The commit proxy's core: batching, version order, tagging, metadata and
//! failure handling as a state machine. It does no I/O and reads no clock:
//! events come in (a client commit, a reply from the sequencer, the
//! resolver or the TLogs, a timer), and [`Command`]s come out for the
//! driver (`proxy.rs`) to carry out.
//!
//! ```text
//!  commit(waiter, request) ─▶ validate ─▶ queue
//!  queue ─form a batch─▶ Sequence (versions, then resolution, in one call)
//!      (one at a time, so batch order is version order)
//!  on_sequenced ─▶ apply other proxies' metadata to the shard map, tag,
//!                  apply own metadata ─▶ Push (one request per TLog)
//!  on_pushed ─▶ report the version to the sequencer ─▶ Answer every waiter
//!      carried by the next batch's Sequence, formed at once when commits
//!      wait (on_sequenced answers), or alone: ReportCommitted (on_reported)
//! ```
//!
//! A batch holds its slot in flight from its Sequence until its push is
//! durable: under load the next batch starts as the last one's push ends,
//! and its call to the sequencer carries the last one's report, so a
//! version costs two round trips of the proxy, not three.
//!
//! Every version the sequencer hands out reaches every TLog, so the TLogs'
//! chains have no gaps: a batch whose resolve or tagging fails is pushed as
//! an empty version and its commits are refused. A failed push leaves the
//! outcome unknown (some TLogs may hold it): `commit_unknown_result`.
//! Clients are answered only after the sequencer has heard the version is
//! committed, so a read version taken after the answer includes it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use cluster::topology::Topology;
use proto::rpc::{
    ClientCommitRequest, ErrorCode, ErrorReply, GetCommitVersionReply, GetKeyLocationReply,
    GetKeyLocationRequest, KeyRange, ProxyStatusReply, ReportCommittedRequest, ResolveReply,
    ResolveTransaction, SequenceReply, SequenceRequest, TLogCommitRequest, TeamBlockData,
};
use proto::shard_map::{ShardMap, VersionedShardMap};
use proto::{is_system_key, Mutation, ProxyId, StorageTeamId, TeamBlockBuilder, Version};

use crate::pacing::{Pace, Pacer};
use crate::proxy::ProxyConfig;
use crate::tagging::{tag_version, TaggedVersion};
use crate::validate::{validate, Limits};

/// Names a batch from the moment it is formed until its commits are answered.
pub type BatchId = u64;

/// What the driver must do. `W` is whatever the driver needs to answer a
/// client (a responder); the core only hands it back.
#[derive(Debug)]
pub enum Command<W> {
    /// Ask the sequencer's process for the batch's `(prev_version,
    /// version)` and its resolution at them, carrying `request.committed`
    /// to it; report the reply with [`ProxyCore::on_sequenced`].
    Sequence {
        batch: BatchId,
        request: SequenceRequest,
        commits: usize,
        bytes: usize,
    },
    /// Send TLog `i` `requests[i]` (all of them, at once); report with
    /// [`ProxyCore::on_pushed`] once every TLog holds its request durably,
    /// or as soon as one failed.
    Push {
        batch: BatchId,
        requests: Vec<TLogCommitRequest>,
    },
    /// Tell the sequencer the version is committed; report with
    /// [`ProxyCore::on_reported`] whether or not that worked.
    ReportCommitted {
        batch: BatchId,
        request: ReportCommittedRequest,
    },
    /// Call [`ProxyCore::wake`] at this time (µs on the driver's clock):
    /// the batch interval of a waiting batch ends.
    WakeAt { at_us: u64 },
    /// Answer one client commit.
    Answer {
        waiter: W,
        result: Result<Version, ErrorReply>,
    },
}

/// The most client commits queued for a batch; beyond it commits are
/// refused as `overloaded` rather than held without bound.
pub const MAX_QUEUED_COMMITS: usize = 16_384;

struct Queued<W> {
    waiter: W,
    mutations: Vec<Mutation>,
    read: Read,
    bytes: usize,
    received_us: u64,
}

/// What a conditional commit read, and at which version (no ranges: an
/// unconditional commit).
#[derive(Default)]
struct Read {
    version: Version,
    ranges: Vec<KeyRange>,
}

struct Batch<W> {
    waiters: Vec<W>,
    commits: Vec<Vec<Mutation>>,
    /// One per commit.
    reads: Vec<Read>,
    /// How many of the commits the resolver was asked about.
    resolving: usize,
    versions: Option<GetCommitVersionReply>,
    /// Set when the batch's version is spent without its commits.
    refused: Option<ErrorReply>,
    /// Durable on every TLog: only the report to the sequencer is left,
    /// and the batch no longer holds a slot in flight.
    pushed: bool,
    /// Pushed batches whose report this batch's Sequence carries: they are
    /// answered when it is.
    carries: Vec<BatchId>,
}

pub struct ProxyCore<W> {
    id: ProxyId,
    topology: Topology,
    limits: Limits,
    batch_interval_us: u64,
    max_batch_bytes: usize,
    max_batches_in_flight: usize,
    teams_by_tlog: Vec<Vec<StorageTeamId>>,
    map: VersionedShardMap,
    known_committed: Version,
    /// The known committed version the last push told the TLogs.
    told_known_committed: Version,
    /// The last version with commits that is durable on every TLog: the
    /// TLogs must be told of it (empty batches need no telling).
    last_written_committed: Version,
    /// When the proxy is idle and the TLogs have not been told that its
    /// last commits committed, an empty batch tells them this long after
    /// the last batch.
    idle_push_interval_us: u64,
    /// When the last batch was formed.
    last_batch_us: u64,
    /// Whether a batch of this proxy reached every TLog. Until one has,
    /// the idle proxy pushes an empty one: a recovered generation's read
    /// versions start at its floor, above the version its TLogs begin at,
    /// and storage servers reach a read version only through a version
    /// pushed after it, so without this first push every read would wait
    /// for the generation's first commit.
    pushed: bool,
    /// Client commits acknowledged since the start, for the status.
    commits: u64,
    queue: VecDeque<Queued<W>>,
    queued_bytes: usize,
    batches: BTreeMap<BatchId, Batch<W>>,
    next_batch: BatchId,
    request_num: u64,
    /// The batch whose versions are being asked for: one at a time.
    awaiting_versions: Option<BatchId>,
    /// Batches just pushed whose report the next batch formed may carry;
    /// those it does not are reported alone.
    to_report: Vec<BatchId>,
    /// The wake-up already asked for, so it is asked for once.
    wake_at_us: Option<u64>,
    /// Teams whose commits are refused while their servers fall behind,
    /// and why (see `admission`).
    throttled: BTreeMap<StorageTeamId, String>,
    /// Holds queued commits back while storage servers fall behind (see
    /// `rate_control`).
    pacer: Pacer,
    /// Commit bytes let into batches since the start.
    released_bytes: u64,
    /// Set when the proxy is stopping: new commits are refused, and what is
    /// queued or in flight goes on.
    stopping: bool,
}

impl<W> ProxyCore<W> {
    /// `first_request_num` must lie above every request number an earlier
    /// life of this proxy sent the sequencer (the driver derives it from the
    /// wall clock).
    pub fn new(config: &ProxyConfig, first_request_num: u64) -> Self {
        ProxyCore {
            id: config.id,
            topology: config.topology.clone(),
            limits: config.limits,
            batch_interval_us: duration_us(config.batch_interval),
            max_batch_bytes: config.max_batch_bytes,
            max_batches_in_flight: config.max_batches_in_flight.max(1),
            teams_by_tlog: config.topology.teams_by_tlog(),
            map: VersionedShardMap::new(
                config.shards.clone(),
                config.shards_version,
                config.shard_history,
            ),
            known_committed: Version::ZERO,
            told_known_committed: Version::ZERO,
            last_written_committed: Version::ZERO,
            idle_push_interval_us: duration_us(config.idle_push_interval),
            last_batch_us: 0,
            pushed: false,
            commits: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            batches: BTreeMap::new(),
            next_batch: 1,
            request_num: first_request_num,
            awaiting_versions: None,
            to_report: Vec::new(),
            wake_at_us: None,
            throttled: BTreeMap::new(),
            pacer: Pacer::default(),
            released_bytes: 0,
            stopping: false,
        }
    }

    /// Refuses new commits from now on; what is queued or in flight goes
    /// on, and so does the empty batch that tells the TLogs the last
    /// commits committed.
    pub fn stop_taking_commits(&mut self) {
        self.stopping = true;
    }

    /// Whether nothing is queued or in flight and the TLogs know every
    /// commit of this proxy committed: a proxy that stops now leaves no
    /// version out and nothing for storage servers to wait for.
    pub fn is_settled(&self) -> bool {
        self.queue.is_empty()
            && self.batches.is_empty()
            && self.awaiting_versions.is_none()
            && self.told_known_committed >= self.last_written_committed
    }

    /// The teams whose commits are refused from now on, and why.
    pub fn set_throttled(&mut self, teams: BTreeMap<StorageTeamId, String>) {
        self.throttled = teams;
    }

    pub fn throttled(&self) -> &BTreeMap<StorageTeamId, String> {
        &self.throttled
    }

    /// The limit on commit bytes let into batches from now on (`None`
    /// lifts it); a lifted or raised limit may let a batch form at once.
    pub fn set_pace(&mut self, pace: Option<Pace>, now_us: u64) -> Vec<Command<W>> {
        if pace.as_ref() != self.pacer.pace() {
            self.pacer.set(pace, now_us);
        }
        self.form_batch(now_us)
    }

    pub fn pace(&self) -> Option<&Pace> {
        self.pacer.pace()
    }

    /// Commit bytes let into batches since the start.
    pub fn released_bytes(&self) -> u64 {
        self.released_bytes
    }

    /// A client commit arrives. A bad one is refused at once, whole.
    pub fn commit(
        &mut self,
        waiter: W,
        request: ClientCommitRequest,
        now_us: u64,
    ) -> Vec<Command<W>> {
        if let Err(refusal) = self.check(&request) {
            return vec![Command::Answer {
                waiter,
                result: Err(refusal),
            }];
        }
        if let Some(refusal) = self.throttle(&request) {
            return vec![Command::Answer {
                waiter,
                result: Err(refusal),
            }];
        }
        if self.stopping {
            return vec![Command::Answer {
                waiter,
                result: Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("{} is stopping; commit through another proxy", self.id),
                )),
            }];
        }
        if self.queue.len() >= MAX_QUEUED_COMMITS {
            return vec![Command::Answer {
                waiter,
                result: Err(ErrorReply::new(
                    ErrorCode::Overloaded,
                    format!("{MAX_QUEUED_COMMITS} commits are already waiting for a batch"),
                )),
            }];
        }
        let bytes = request.mutations.iter().map(|m| m.payload_len() + 16).sum();
        self.queued_bytes += bytes;
        self.queue.push_back(Queued {
            waiter,
            mutations: request.mutations,
            read: Read {
                version: request.read_version,
                ranges: request.read_ranges,
            },
            bytes,
            received_us: now_us,
        });
        self.form_batch(now_us)
    }

    /// The proxy is serving: its first (empty) batch goes out.
    pub fn start(&mut self, now_us: u64) -> Vec<Command<W>> {
        self.form_batch(now_us)
    }

    /// The time asked for with [`Command::WakeAt`] has come.
    pub fn wake(&mut self, now_us: u64) -> Vec<Command<W>> {
        if self.wake_at_us.is_some_and(|at| at <= now_us) {
            self.wake_at_us = None;
        }
        self.form_batch(now_us)
    }

    /// The sequencer's process answered a batch's [`Command::Sequence`]:
    /// with versions, the batch is tagged and pushed, empty if resolving
    /// failed; without, its commits are refused.
    pub fn on_sequenced(
        &mut self,
        batch_id: BatchId,
        reply: Result<SequenceReply, String>,
        now_us: u64,
    ) -> Vec<Command<W>> {
        // Only the batch whose versions are asked for takes a reply: a
        // repeated or stale one changes nothing.
        if self.awaiting_versions != Some(batch_id) {
            return Vec::new();
        }
        self.awaiting_versions = None;
        let mut commands = Vec::new();
        match reply {
            Ok(reply) => {
                let batch = self.batches.get_mut(&batch_id).expect("a formed batch");
                batch.versions = Some(reply.versions);
                let carried = std::mem::take(&mut batch.carries);
                commands.extend(self.tag(batch_id, reply.resolved));
                for id in carried {
                    commands.extend(self.on_reported(id, now_us));
                }
            }
            Err(e) => {
                let batch = self.batches.remove(&batch_id).expect("a formed batch");
                let refusal =
                    ErrorReply::new(ErrorCode::Unavailable, format!("no commit version: {e}"));
                answer_all(&mut commands, batch.waiters, Err(refusal));
                // The sequencer may not have heard the reports the call
                // carried: each goes again, alone.
                commands.extend(batch.carries.into_iter().filter_map(|id| self.report(id)));
            }
        }
        commands.extend(self.form_batch(now_us));
        commands
    }

    /// Every TLog answered the batch's [`Command::Push`], or one failed.
    pub fn on_pushed(
        &mut self,
        batch_id: BatchId,
        result: Result<(), String>,
        now_us: u64,
    ) -> Vec<Command<W>> {
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return Vec::new();
        };
        let Some(versions) = batch.versions else {
            return Vec::new();
        };
        let outcome = match (&batch.refused, result) {
            (Some(refusal), _) => Some(refusal.clone()),
            (None, Err(e)) => Some(ErrorReply::new(ErrorCode::CommitUnknownResult, e)),
            (None, Ok(())) => None,
        };
        if let Some(failure) = outcome {
            return self.finish(batch_id, Err(failure), now_us);
        }
        batch.pushed = true;
        if !batch.commits.is_empty() {
            self.last_written_committed = self.last_written_committed.max(versions.version);
        }
        self.known_committed = self.known_committed.max(versions.version);
        self.pushed = true;
        self.to_report.push(batch_id);
        let mut commands = self.form_batch(now_us);
        let alone = std::mem::take(&mut self.to_report);
        commands.extend(alone.into_iter().filter_map(|id| self.report(id)));
        commands
    }

    /// The sequencer heard (or could not be told) that the batch committed,
    /// alone or carried by a later batch's call. A failed report does not
    /// undo a durable commit, so the clients are answered either way.
    pub fn on_reported(&mut self, batch_id: BatchId, now_us: u64) -> Vec<Command<W>> {
        let Some(version) = self
            .batches
            .get(&batch_id)
            .and_then(|b| b.versions)
            .map(|v| v.version)
        else {
            return Vec::new();
        };
        self.finish(batch_id, Ok(version), now_us)
    }

    /// The shard map as of `version`, if still in the history kept.
    pub fn shard_map_at(&self, version: Version) -> Option<ShardMap> {
        self.map.at(version)
    }

    /// Which teams, and so which servers, hold a key at a version: by the
    /// map that routed that version's mutations, the one before its own
    /// changes, as storage servers judge reads. A version newer than this
    /// proxy has tagged may get a location that a change it has not seen
    /// yet moved; the server then answers `wrong_shard_server`.
    pub fn locate(
        &self,
        request: &GetKeyLocationRequest,
    ) -> Result<GetKeyLocationReply, ErrorReply> {
        let routing = Version(request.version.0.saturating_sub(1));
        let map = self.shard_map_at(routing).ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::TransactionTooOld,
                format!("the shard map at {} is no longer kept", request.version),
            )
        })?;
        let (begin, end, assignment) = map.locate(&request.key);
        let teams = assignment
            .src
            .iter()
            .map(|team| (*team, self.topology.servers_of(*team)))
            .collect();
        Ok(GetKeyLocationReply {
            begin,
            end,
            teams,
            moving_to: assignment.dest.clone(),
            as_of: routing.min(self.map.version()),
        })
    }

    pub fn status(&self) -> ProxyStatusReply {
        ProxyStatusReply {
            proxy: self.id,
            known_committed_version: self.known_committed,
            commits: self.commits,
            throttling: (!self.throttled.is_empty()).then(|| {
                self.throttled
                    .iter()
                    .map(|(team, why)| format!("{team}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            delaying: self.pacer.pace().map(Pace::describe),
        }
    }

    /// A refusal when the commit writes to a throttled team (by the current
    /// shard map).
    fn throttle(&self, request: &ClientCommitRequest) -> Option<ErrorReply> {
        if self.throttled.is_empty() {
            return None;
        }
        let map = self.map.current();
        let written = |m: &Mutation| -> Vec<StorageTeamId> {
            match m {
                Mutation::SetValue { key, .. } | Mutation::AppendIfFits { key, .. } => {
                    map.assignment_of(key).teams().collect()
                }
                Mutation::ClearRange { begin, end } => map
                    .split(begin, end)
                    .into_iter()
                    .flat_map(|(_, _, assignment)| assignment.teams())
                    .collect(),
            }
        };
        // Shard-map changes are let through: moving data off a team that
        // falls behind is one way out.
        let (team, why) = request
            .mutations
            .iter()
            .filter(|m| !is_metadata(m))
            .flat_map(written)
            .find_map(|team| self.throttled.get_key_value(&team))?;
        Some(ErrorReply::new(
            ErrorCode::Overloaded,
            format!("commits to {team} are refused for now: {why}"),
        ))
    }

    /// Validation, and shard-map changes checked against the current map.
    fn check(&self, request: &ClientCommitRequest) -> Result<(), ErrorReply> {
        validate(request, &self.limits)?;
        let metadata: Vec<Mutation> = request
            .mutations
            .iter()
            .filter(|m| is_metadata(m))
            .cloned()
            .collect();
        if metadata.is_empty() {
            return Ok(());
        }
        self.map
            .check(&metadata, |t| self.topology.is_storage_team(t))
            .map_err(|e| ErrorReply::new(ErrorCode::MalformedRequest, e.to_string()))
    }

    /// Forms the next batch when one may be formed now: something is
    /// queued, no version request is out, a batch slot is free, the pace
    /// allows, and (while others are in flight) the batch interval has
    /// passed or the batch is full.
    fn form_batch(&mut self, now_us: u64) -> Vec<Command<W>> {
        let in_flight = self.batches.values().filter(|b| !b.pushed).count();
        if self.awaiting_versions.is_some() || in_flight >= self.max_batches_in_flight {
            return Vec::new();
        }
        let Some(oldest) = self.queue.front() else {
            return self.idle_push(now_us);
        };
        let busy = !self.batches.is_empty();
        let interval_end = oldest.received_us.saturating_add(self.batch_interval_us);
        let interval_wait =
            (busy && now_us < interval_end && self.queued_bytes < self.max_batch_bytes)
                .then_some(interval_end);
        let ready_at = match (self.pacer.ready_at(now_us), interval_wait) {
            (Some(paced), Some(interval)) => Some(paced.max(interval)),
            (paced, interval) => paced.or(interval),
        };
        if let Some(ready_at) = ready_at {
            // A wake-up already due by then looks again when it comes.
            if self.wake_at_us.is_some_and(|at| at <= ready_at) {
                return Vec::new();
            }
            self.wake_at_us = Some(ready_at);
            return vec![Command::WakeAt { at_us: ready_at }];
        }
        let mut batch = Batch {
            waiters: Vec::new(),
            commits: Vec::new(),
            reads: Vec::new(),
            resolving: 0,
            versions: None,
            refused: None,
            pushed: false,
            carries: Vec::new(),
        };
        let mut bytes = 0;
        while let Some(next) = self.queue.front() {
            if !batch.commits.is_empty() && bytes + next.bytes > self.max_batch_bytes {
                break;
            }
            let queued = self.queue.pop_front().expect("a front");
            bytes += queued.bytes;
            self.queued_bytes -= queued.bytes;
            batch.waiters.push(queued.waiter);
            batch.commits.push(queued.mutations);
            batch.reads.push(queued.read);
        }
        self.released_bytes += bytes as u64;
        self.pacer.spend(bytes, now_us);
        self.start_batch(batch, bytes, now_us)
    }

    /// With nothing queued or in flight, the TLogs may not yet know that
    /// the last batch committed: storage servers make nothing durable past
    /// what the TLogs know committed, so an empty batch tells them, once
    /// the proxy has been idle for the interval. So does the first batch
    /// (see `pushed`), tried again after each interval until it goes through.
    fn idle_push(&mut self, now_us: u64) -> Vec<Command<W>> {
        let untold = self.last_written_committed > self.told_known_committed;
        if !self.batches.is_empty() || (self.pushed && !untold) {
            return Vec::new();
        }
        let first_batch = self.next_batch == 1;
        let due = match first_batch {
            true => now_us,
            false => self
                .last_batch_us
                .saturating_add(self.idle_push_interval_us),
        };
        if now_us < due {
            if self.wake_at_us == Some(due) {
                return Vec::new();
            }
            self.wake_at_us = Some(due);
            return vec![Command::WakeAt { at_us: due }];
        }
        let empty = Batch {
            waiters: Vec::new(),
            commits: Vec::new(),
            reads: Vec::new(),
            resolving: 0,
            versions: None,
            refused: None,
            pushed: false,
            carries: Vec::new(),
        };
        self.start_batch(empty, 0, now_us)
    }

    /// Asks the sequencer's process for the versions of a new batch and
    /// its resolution.
    fn start_batch(&mut self, mut batch: Batch<W>, bytes: usize, now_us: u64) -> Vec<Command<W>> {
        self.last_batch_us = now_us;
        let id = self.next_batch;
        self.next_batch += 1;
        self.request_num += 1;
        let commits = batch.commits.len();
        let transactions: Vec<ResolveTransaction> = batch
            .commits
            .iter()
            .zip(&batch.reads)
            .filter_map(|(mutations, read)| resolved_part(mutations, read))
            .collect();
        batch.resolving = transactions.len();
        batch.carries = std::mem::take(&mut self.to_report);
        let committed = batch
            .carries
            .iter()
            .filter_map(|carried| self.batches.get(carried)?.versions)
            .map(|v| v.version)
            .max()
            .unwrap_or(Version::ZERO);
        self.batches.insert(id, batch);
        self.awaiting_versions = Some(id);
        vec![Command::Sequence {
            batch: id,
            request: SequenceRequest {
                proxy: self.id,
                request_num: self.request_num,
                transactions,
                committed,
            },
            commits,
            bytes,
        }]
    }

    /// Tags a batch with its versions and resolution (batches are
    /// sequenced one at a time, so this is version order) and returns its
    /// push, after answering the commits that conflict.
    fn tag(
        &mut self,
        batch_id: BatchId,
        resolved: Result<ResolveReply, ErrorReply>,
    ) -> Vec<Command<W>> {
        let batch = self.batches.get_mut(&batch_id).expect("a batch to tag");
        let versions = batch.versions.expect("a sequenced batch has versions");
        let mut commands = Vec::new();
        let resolved = resolved.and_then(|reply| {
            let conflicted = batch.drop_conflicts(&reply.conflicts)?;
            let refusal = ErrorReply::new(
                ErrorCode::NotCommitted,
                "a key it read was written after its read version",
            );
            answer_all(&mut commands, conflicted, Err(refusal));
            Ok(reply)
        });
        let tagged = match resolved {
            Ok(reply) => {
                for change in reply.metadata {
                    if let Err(e) = self.map.apply(change.version, &change.mutations) {
                        tracing::error!(error = %e, version = %change.version, "could not apply metadata");
                    }
                }
                tag_version(
                    self.map.current(),
                    &self.topology,
                    versions.version,
                    &batch.commits,
                )
                .map_err(|e| ErrorReply::new(ErrorCode::InvalidBlock, e.to_string()))
            }
            Err(e) => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!("resolver: {}", e.message),
            )),
        };
        let blocks = match tagged {
            Ok(tagged) => {
                if let Err(e) = self.map.apply(versions.version, &tagged.metadata) {
                    tracing::error!(error = %e, version = %versions.version, "could not apply own metadata");
                }
                tagged
            }
            // The version is spent: the TLogs still get it, empty, so their
            // chains stay whole; the clients learn nothing was written.
            Err(refusal) => {
                batch.refused = Some(refusal);
                TaggedVersion::default()
            }
        };
        self.told_known_committed = self.known_committed;
        commands.push(Command::Push {
            batch: batch_id,
            requests: self.tlog_requests(versions, &blocks),
        });
        commands
    }

    /// One request per TLog: its teams' blocks, and in broadcast mode an
    /// empty version for each of its teams the version does not touch.
    fn tlog_requests(
        &self,
        versions: GetCommitVersionReply,
        tagged: &TaggedVersion,
    ) -> Vec<TLogCommitRequest> {
        self.teams_by_tlog
            .iter()
            .map(|teams| TLogCommitRequest {
                prev_version: versions.prev_version,
                version: versions.version,
                known_committed_version: self.known_committed,
                teams: teams
                    .iter()
                    .filter_map(|team| match tagged.blocks.get(team) {
                        Some(data) => Some(TeamBlockData {
                            team: *team,
                            data: data.clone(),
                        }),
                        None if self.topology.broadcast => Some(TeamBlockData {
                            team: *team,
                            data: empty_version(*team, versions.version),
                        }),
                        None => None,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Reports a pushed batch's version to the sequencer on its own.
    fn report(&self, batch_id: BatchId) -> Option<Command<W>> {
        let version = self.batches.get(&batch_id)?.versions?.version;
        Some(Command::ReportCommitted {
            batch: batch_id,
            request: ReportCommittedRequest {
                proxy: self.id,
                version,
            },
        })
    }

    /// Ends a batch: every waiter gets `result`, and its slot goes to the
    /// next batch.
    fn finish(
        &mut self,
        batch_id: BatchId,
        result: Result<Version, ErrorReply>,
        now_us: u64,
    ) -> Vec<Command<W>> {
        let batch = self.batches.remove(&batch_id).expect("a batch to finish");
        if result.is_ok() {
            self.commits += batch.waiters.len() as u64;
        }
        let mut commands = Vec::new();
        answer_all(&mut commands, batch.waiters, result);
        commands.extend(self.form_batch(now_us));
        commands
    }
}

fn answer_all<W>(
    commands: &mut Vec<Command<W>>,
    waiters: Vec<W>,
    result: Result<Version, ErrorReply>,
) {
    commands.extend(waiters.into_iter().map(|waiter| Command::Answer {
        waiter,
        result: result.clone(),
    }));
}

impl<W> Batch<W> {
    /// Takes out the commits the resolver found conflicting (`conflicts`
    /// holds one flag per commit it was asked about); returns their
    /// waiters.
    fn drop_conflicts(&mut self, conflicts: &[bool]) -> Result<Vec<W>, ErrorReply> {
        if self.resolving != conflicts.len() {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "resolver answered {} transactions of {}",
                    conflicts.len(),
                    self.resolving
                ),
            ));
        }
        if !conflicts.contains(&true) {
            return Ok(Vec::new());
        }
        let mut flags = conflicts.iter();
        let conflicting: Vec<bool> = self
            .commits
            .iter()
            .zip(&self.reads)
            .map(|(mutations, read)| {
                needs_resolving(mutations, read) && *flags.next().expect("counted when sent")
            })
            .collect();
        let mut dropped = Vec::new();
        for i in (0..conflicting.len()).rev().filter(|i| conflicting[*i]) {
            self.commits.remove(i);
            self.reads.remove(i);
            dropped.push(self.waiters.remove(i));
        }
        dropped.reverse();
        Ok(dropped)
    }
}

/// Whether the resolver must see a commit: it reads ranges, or writes
/// system keys.
fn needs_resolving(mutations: &[Mutation], read: &Read) -> bool {
    !read.ranges.is_empty() || mutations.iter().any(is_metadata)
}

/// What the resolver sees of a commit that needs it.
fn resolved_part(mutations: &[Mutation], read: &Read) -> Option<ResolveTransaction> {
    needs_resolving(mutations, read).then(|| ResolveTransaction {
        read_version: read.version,
        read_ranges: read.ranges.clone(),
        write_ranges: Vec::new(),
        metadata: mutations
            .iter()
            .filter(|m| is_metadata(m))
            .cloned()
            .collect(),
    })
}

fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn is_metadata(mutation: &Mutation) -> bool {
    is_system_key(mutation.first_key())
}

fn empty_version(team: StorageTeamId, version: Version) -> Bytes {
    let mut builder = TeamBlockBuilder::new(team);
    builder
        .push_empty_version(version)
        .expect("a fresh block takes any version");
    builder.finish()
}

#[cfg(test)]
mod tests;
