//! The commit proxy's service: runs the [`ProxyCore`]'s commands over the
//! network and feeds their outcomes back to it.
//!
//! ```text
//!  clients ─ClientCommit─▶ handle ─lock─▶ ProxyCore ─commands─▶ start
//!  one task follows a batch, feeding each reply back to the core, which
//!  names the next call:
//!      Sequence (versions, resolution, and the last batch's report)
//!        ─▶ Push (every TLog at once) ─▶ ReportCommitted, unless the next
//!           batch's Sequence carries the report
//!  WakeAt ─▶ sleep ─▶ wake        Answer ─▶ the client's responder (no task per commit)
//! ```
//!
//! The rules (batching, version order, tagging, failures) are the core's;
//! this file only moves messages and keeps time.
//!
//! Metrics (through the `metrics` facade): `teamlog_proxy_commits_total`
//! (acknowledged client commits), `teamlog_proxy_commit_failures_total`,
//! `teamlog_proxy_commit_latency_seconds` (received → answered),
//! `teamlog_proxy_batch_commits` and `teamlog_proxy_batch_bytes` (per batch),
//! the commit path's time split by hop: `teamlog_proxy_sequence_seconds`
//! (versions and resolution), `teamlog_proxy_push_seconds` (until the last
//! TLog's fsync is acknowledged) and `teamlog_proxy_report_seconds` (a
//! report sent alone; a carried one rides on the sequence call),
//! `teamlog_proxy_known_committed_version` and
//! `teamlog_proxy_pace_bytes_per_second` (the limit on new commit bytes
//! while storage servers fall behind; 0 for none).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::Retryable;
use cluster::retry::{backoff, wait_until};
use cluster::topology::Topology;
use futures::future::{join_all, BoxFuture};
use proto::clock::Clock;
use proto::rpc::{
    ClientCommitReply, ErrorCode, ErrorReply, GetKeyLocationReply, GetKeyLocationRequest, Message,
    ProxyStatusReply, RegisterTeamRequest, TLogCommitRequest,
};
use proto::shard_map::ShardMap;
use proto::transport::{ClientConfig, Peer, Responder, RpcError, Service};
use proto::{ProxyId, StorageTeamId, Version};

use crate::admission;
use crate::proxy_core::{Command, ProxyCore};
use crate::rate_control::{RateControl, TeamSample};
use crate::validate::Limits;

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub id: ProxyId,
    /// The sequencer process, which also runs the resolver.
    pub sequencer: SocketAddr,
    pub tlogs: Vec<SocketAddr>,
    pub topology: Topology,
    /// The shard map as of `shards_version`, which every version this
    /// proxy commits follows.
    pub shards: ShardMap,
    pub shards_version: Version,
    pub limits: Limits,
    /// While other batches are in flight, how long a batch waits for more.
    /// Zero takes what is queued: with `max_batches_in_flight` batches out,
    /// commits queue into the next one, which batches by load without a
    /// timer (tokio's timers tick in milliseconds).
    pub batch_interval: Duration,
    pub max_batch_bytes: usize,
    /// How many batches may be out at once between their call to the
    /// sequencer and their last TLog's fsync (a batch whose report to the
    /// sequencer is all that is left holds no slot).
    pub max_batches_in_flight: usize,
    /// Versions of shard-map history kept for reads at older versions.
    pub shard_history: u64,
    /// How the proxy calls the sequencer and the TLogs.
    pub transport: ClientConfig,
    /// When the proxy is idle, how long after its last batch it sends an
    /// empty one to tell the TLogs what has committed since, so storage
    /// servers can make the last commits durable (zero: at once).
    pub idle_push_interval: Duration,
    /// A team whose servers leave more than this many bytes not yet
    /// durable on a TLog has its commits refused until they catch up
    /// (see `admission`).
    pub max_team_backlog_bytes: u64,
}

impl ProxyConfig {
    pub fn new(
        id: ProxyId,
        sequencer: SocketAddr,
        tlogs: Vec<SocketAddr>,
        topology: Topology,
        shards: ShardMap,
    ) -> Self {
        ProxyConfig {
            id,
            sequencer,
            tlogs,
            topology,
            shards,
            shards_version: Version::ZERO,
            limits: Limits::default(),
            batch_interval: Duration::ZERO,
            max_batch_bytes: 8 << 20,
            max_batches_in_flight: 1,
            shard_history: 10_000_000,
            transport: ClientConfig::default(),
            max_team_backlog_bytes: DEFAULT_MAX_TEAM_BACKLOG_BYTES,
            idle_push_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Topology(#[from] cluster::topology::TopologyError),
    #[error("the cluster has {configured} tlogs but the topology expects {expected}")]
    TLogCount { configured: usize, expected: usize },
    #[error("registering {team} on tlog {addr}: {source}")]
    Register {
        team: StorageTeamId,
        addr: SocketAddr,
        source: RpcError,
    },
}

/// The default [`ProxyConfig::max_team_backlog_bytes`]: 1 GiB, four times a
/// TLog's default memory budget.
pub const DEFAULT_MAX_TEAM_BACKLOG_BYTES: u64 = 1 << 30;

/// How long a call to the sequencer is sent again after transient
/// failures before its batch gives up.
const SEQUENCER_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// How long a push is sent again to a TLog that does not answer. Until
/// recovery exists, a push given up leaves a hole that stops every later
/// commit, so this covers a TLog relaunched on a busy machine, whose start
/// replays its log. The batches in flight retry together (at most 500 ms
/// apart), so a relaunched TLog gets a version's predecessor well inside
/// its own wait for it.
const TLOG_PUSH_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// A call in progress; it resolves, once its reply is fed to the core, to
/// the core's next commands.
type Step = BoxFuture<'static, Vec<Command<Waiter>>>;

/// What the core hands back to answer a client.
struct Waiter {
    responder: Responder,
    received_us: u64,
}

pub(crate) struct Inner {
    core: Mutex<ProxyCore<Waiter>>,
    clock: Arc<dyn Clock>,
    sequencer: Peer,
    pub(crate) tlogs: Vec<Peer>,
}

#[derive(Clone)]
pub struct ProxyService {
    inner: Arc<Inner>,
}

impl ProxyService {
    /// Registers every team on its TLogs (retrying until `startup_timeout`),
    /// then takes commits.
    pub async fn start(
        config: ProxyConfig,
        clock: Arc<dyn Clock>,
        startup_timeout: Duration,
    ) -> Result<Self, ProxyError> {
        config.topology.check()?;
        if config.tlogs.len() != config.topology.tlog_count {
            return Err(ProxyError::TLogCount {
                configured: config.tlogs.len(),
                expected: config.topology.tlog_count,
            });
        }
        let peer = |addr| Peer::new(addr, config.transport.clone());
        let tlogs: Vec<Peer> = config.tlogs.iter().map(|a| peer(*a)).collect();
        register_teams(&config.topology, &tlogs, startup_timeout).await?;
        // The sequencer refuses a request number below the last it saw from
        // this proxy id, so a restarted proxy counts on from the wall clock
        // (it makes far fewer than one request a microsecond).
        let core = ProxyCore::new(&config, clock.unix_time_us());
        let inner = Arc::new(Inner {
            core: Mutex::new(core),
            clock,
            sequencer: peer(config.sequencer),
            tlogs,
        });
        tokio::spawn(admission::run(
            Arc::downgrade(&inner),
            config.max_team_backlog_bytes,
        ));
        inner.event(|core, now_us| core.start(now_us));
        Ok(ProxyService { inner })
    }

    /// The shard map as of `version`, if still in the history kept.
    pub fn shard_map_at(&self, version: Version) -> Option<ShardMap> {
        self.inner.core().shard_map_at(version)
    }

    pub fn locate(
        &self,
        request: &GetKeyLocationRequest,
    ) -> Result<GetKeyLocationReply, ErrorReply> {
        self.inner.core().locate(request)
    }

    pub fn status(&self) -> ProxyStatusReply {
        self.inner.core().status()
    }

    /// Refuses new commits and waits, up to `timeout`, until what is queued
    /// or in flight is answered and the TLogs know it committed, so that a
    /// clean stop leaves no version out.
    pub async fn drain(&self, timeout: Duration) {
        self.inner.core().stop_taking_commits();
        if !wait_until(|| self.inner.core().is_settled(), timeout).await {
            tracing::warn!(?timeout, "stopping with batches that did not finish");
        }
    }
}

impl Service for ProxyService {
    fn handle(&self, request: Message, responder: Responder) {
        match request {
            Message::ClientCommit(commit) => self.inner.event(|core, now_us| {
                let waiter = Waiter {
                    responder,
                    received_us: now_us,
                };
                core.commit(waiter, commit, now_us)
            }),
            Message::GetKeyLocation(request) => {
                responder.reply(self.locate(&request).map(Message::GetKeyLocationReply));
            }
            Message::Status => responder.reply(Ok(Message::ProxyStatus(self.status()))),
            other => responder.reply(Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("a commit proxy does not serve {}", other.name()),
            ))),
        }
    }
}

impl Inner {
    /// Judges which teams to throttle from their `backlogs` and hands them
    /// to the core.
    pub(crate) fn throttle(&self, backlogs: &BTreeMap<StorageTeamId, u64>, limit: u64) {
        let mut core = self.core();
        let throttled = admission::judge(core.throttled(), backlogs, limit);
        if throttled.keys().ne(core.throttled().keys()) {
            tracing::warn!(teams = ?throttled.keys().collect::<Vec<_>>(), "throttled teams changed");
        }
        core.set_throttled(throttled);
    }

    /// Sets the core's pace from a poll of the TLogs' `samples`; a lifted
    /// limit lets waiting commits go at once.
    pub(crate) fn pace(
        self: &Arc<Self>,
        control: &mut RateControl,
        samples: &BTreeMap<StorageTeamId, TeamSample>,
    ) {
        let released = self.core().released_bytes();
        let pace = control.update(self.clock.now_us(), samples, released);
        if pace.is_some() != self.core().pace().is_some() {
            match &pace {
                Some(pace) => tracing::warn!(limit = %pace.describe(), "pacing commits"),
                None => tracing::info!("commits no longer paced"),
            }
        }
        metrics::gauge!("teamlog_proxy_pace_bytes_per_second")
            .set(pace.as_ref().map_or(0.0, |p| p.bytes_per_second as f64));
        self.event(|core, now_us| core.set_pace(pace, now_us));
    }

    fn core(&self) -> MutexGuard<'_, ProxyCore<Waiter>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds one event to the core; returns what it asks for. The lock is
    /// released before anything is sent.
    fn apply(
        &self,
        event: impl FnOnce(&mut ProxyCore<Waiter>, u64) -> Vec<Command<Waiter>>,
    ) -> Vec<Command<Waiter>> {
        let mut core = self.core();
        event(&mut core, self.clock.now_us())
    }

    /// Feeds one event to the core and carries out its commands, from a
    /// synchronous caller: the calls they start run in a new task.
    fn event(
        self: &Arc<Self>,
        event: impl FnOnce(&mut ProxyCore<Waiter>, u64) -> Vec<Command<Waiter>>,
    ) {
        let commands = self.apply(event);
        if let Some(first) = self.start_all(commands) {
            tokio::spawn(self.clone().follow(first));
        }
    }

    /// Runs `step` and then what the core asks for next, in this task, as
    /// long as there is one call to wait for: a batch goes from its versions
    /// to its answers in one task. Further calls the core asks for at the
    /// same time get tasks of their own.
    async fn follow(self: Arc<Self>, mut step: Step) {
        loop {
            let commands = step.await;
            match self.start_all(commands) {
                Some(next) => step = next,
                None => return,
            }
        }
    }

    /// Carries out commands that need no waiting and returns the first call
    /// to wait for; other calls are spawned.
    fn start_all(self: &Arc<Self>, commands: Vec<Command<Waiter>>) -> Option<Step> {
        let mut first = None;
        for command in commands {
            let Some(step) = self.start(command) else {
                continue;
            };
            if first.is_none() {
                first = Some(step);
            } else {
                tokio::spawn(self.clone().follow(step));
            }
        }
        first
    }

    /// Starts one command: answers are sent at once; a call becomes a step
    /// that resolves, once its reply is fed to the core, to the core's next
    /// commands.
    fn start(self: &Arc<Self>, command: Command<Waiter>) -> Option<Step> {
        let inner = self.clone();
        match command {
            Command::Sequence {
                batch,
                request,
                commits,
                bytes,
            } => {
                metrics::histogram!("teamlog_proxy_batch_commits").record(commits as f64);
                metrics::histogram!("teamlog_proxy_batch_bytes").record(bytes as f64);
                Some(Box::pin(async move {
                    let sent_us = inner.clock.now_us();
                    let reply = inner.call(Message::Sequence(request)).await;
                    inner.record_hop("teamlog_proxy_sequence_seconds", sent_us);
                    let sequenced = match reply {
                        Ok(Message::SequenceReply(reply)) => Ok(reply),
                        Ok(other) => Err(format!("sequencer answered {}", other.name())),
                        Err(e) => Err(e.to_string()),
                    };
                    inner.apply(|core, now| core.on_sequenced(batch, sequenced, now))
                }))
            }
            Command::Push { batch, requests } => Some(Box::pin(async move {
                let sent_us = inner.clock.now_us();
                let pushed = inner.push(requests).await;
                inner.record_hop("teamlog_proxy_push_seconds", sent_us);
                inner.apply(|core, now| core.on_pushed(batch, pushed, now))
            })),
            Command::ReportCommitted { batch, request } => {
                metrics::gauge!("teamlog_proxy_known_committed_version")
                    .set(self.core().status().known_committed_version.0 as f64);
                Some(Box::pin(async move {
                    let version = request.version;
                    let sent_us = inner.clock.now_us();
                    let reported = inner.call(Message::ReportCommitted(request)).await;
                    inner.record_hop("teamlog_proxy_report_seconds", sent_us);
                    if let Err(e) = reported {
                        tracing::warn!(error = %e, %version, "could not report a committed version");
                    }
                    inner.apply(|core, now| core.on_reported(batch, now))
                }))
            }
            Command::WakeAt { at_us } => {
                let wait = Duration::from_micros(at_us.saturating_sub(self.clock.now_us()));
                Some(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    inner.apply(|core, now| core.wake(now))
                }))
            }
            Command::Answer { waiter, result } => {
                if result.is_ok() {
                    let latency_us = self.clock.now_us().saturating_sub(waiter.received_us);
                    metrics::counter!("teamlog_proxy_commits_total").increment(1);
                    metrics::histogram!("teamlog_proxy_commit_latency_seconds")
                        .record(latency_us as f64 / 1e6);
                } else {
                    metrics::counter!("teamlog_proxy_commit_failures_total").increment(1);
                }
                waiter.responder.reply(
                    result.map(|version| Message::ClientCommitReply(ClientCommitReply { version })),
                );
                None
            }
        }
    }

    /// Records how long a hop of the commit path took since `sent_us`.
    fn record_hop(&self, histogram: &'static str, sent_us: u64) {
        let took_us = self.clock.now_us().saturating_sub(sent_us);
        metrics::histogram!(histogram).record(took_us as f64 / 1e6);
    }

    /// One request to the sequencer (which also runs the resolver), sent
    /// again while it fails transiently: the sequencer hands a retried
    /// request number the same versions, the resolver a retried batch the
    /// same answer, and a report of a committed version is a maximum.
    async fn call(&self, request: Message) -> Result<Message, RpcError> {
        let attempt = || {
            let request = request.clone();
            self.sequencer
                .call(|client| async move { client.call(request).await })
        };
        attempt
            .retry(backoff(SEQUENCER_RETRY_WINDOW))
            .when(RpcError::is_transient)
            .notify(|e, _| tracing::debug!(error = %e, request = request.name(), "sequencer call failed; retrying"))
            .await
    }

    /// Sends TLog `i` `requests[i]`, all at once, and waits until every one
    /// holds its request durably.
    async fn push(&self, requests: Vec<TLogCommitRequest>) -> Result<(), String> {
        let pushes = self
            .tlogs
            .iter()
            .zip(requests)
            .map(|(tlog, request)| async move {
                // A TLog acknowledges a repeated (prev_version, version)
                // once it is durable without appending it again.
                let attempt = || {
                    let request = request.clone();
                    tlog.call(|client| async move { client.tlog_commit(request).await })
                };
                attempt
                    .retry(backoff(TLOG_PUSH_RETRY_WINDOW))
                    .when(push_may_succeed_later)
                    .notify(|e, _| tracing::debug!(addr = %tlog.addr(), error = %e, "push failed; retrying"))
                    .await
                    .map_err(|e| format!("tlog {}: {e}", tlog.addr()))
            });
        let failures: Vec<String> = join_all(pushes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

/// Whether a failed push is worth sending again. Besides transient
/// failures, a poisoned TLog (a failed fsync) refuses until it is
/// restarted over its disk, which its supervisor or a recovery does: the
/// push waits for that within its window, as for a TLog that is down,
/// since a version given up on one TLog ends a pinned cluster's chain.
fn push_may_succeed_later(error: &RpcError) -> bool {
    error.is_transient()
        || matches!(
            error,
            RpcError::Remote {
                code: ErrorCode::Poisoned,
                ..
            }
        )
}

/// Registers every team with its servers on the TLogs that hold it,
/// retrying (with jittered backoff) while the TLogs start, for up to
/// `timeout`.
async fn register_teams(
    topology: &Topology,
    tlogs: &[Peer],
    timeout: Duration,
) -> Result<(), ProxyError> {
    for team in topology.all_teams() {
        for index in topology.tlogs_of(team) {
            let tlog = &tlogs[index];
            let request = RegisterTeamRequest {
                team,
                servers: topology.servers_of(team),
            };
            let attempt = || {
                let request = request.clone();
                tlog.call(|c| async move { c.register_team(request).await })
            };
            attempt
                .retry(backoff(timeout))
                .notify(|e, _| tracing::debug!(addr = %tlog.addr(), error = %e, "tlog not ready; retrying"))
                .await
                .map_err(|source| ProxyError::Register {
                    team,
                    addr: tlog.addr(),
                    source,
                })?;
        }
    }
    Ok(())
}
