//! The commit proxy: batches client commits and drives each batch through
//! the commit path.
//!
//! ```text
//!  clients ─ClientCommit─▶ validate ─▶ queue ─▶ batcher: gather (bytes, time),
//!                                                get (prev, v) from the sequencer
//!                                                   │ one task per batch
//!        resolve(prev, v, metadata) ◀───────────────┤
//!        in version order: apply others' metadata, tag, apply own metadata
//!        push every TLog its teams' blocks (+ empty versions when broadcasting)
//!        all durable ─▶ report committed ─▶ answer the clients
//! ```
//!
//! Every version goes to every TLog, so each TLog's chain of versions has no
//! gaps. A batch whose push fails answers `commit_unknown_result`: some TLogs
//! may hold it.
//!
//! Metrics (through the `metrics` facade): `teamlog_proxy_commits_total`
//! (acknowledged client commits), `teamlog_proxy_commit_failures_total`,
//! `teamlog_proxy_commit_latency_seconds` (received → answered),
//! `teamlog_proxy_batch_commits` and `teamlog_proxy_batch_bytes` (per batch),
//! and `teamlog_proxy_known_committed_version`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use proto::rpc::{
    ClientCommitReply, ClientCommitRequest, ErrorCode, ErrorReply, GetCommitVersionReply,
    GetCommitVersionRequest, GetKeyLocationReply, GetKeyLocationRequest, Message, ProxyStatusReply,
    RegisterTeamRequest, ReportCommittedRequest, ResolveRequest, TLogCommitRequest, TeamBlockData,
};
use proto::transport::{ClientConfig, Peer, Responder, RpcError, Service};
use proto::{is_system_key, Mutation, ProxyId, StorageTeamId, TeamBlockBuilder, Version};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::tagging::{tag_version, TaggedVersion};
use crate::validate::{validate, Limits};
use cluster::topology::Topology;
use proto::shard_map::{ShardMap, VersionedShardMap};

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub id: ProxyId,
    /// The sequencer process, which also runs the resolver.
    pub sequencer: SocketAddr,
    pub tlogs: Vec<SocketAddr>,
    pub topology: Topology,
    pub shards: ShardMap,
    pub limits: Limits,
    /// While other batches are in flight, how long a batch waits for more.
    /// Zero takes what is queued: with `max_batches_in_flight` batches out,
    /// commits queue into the next one, which batches by load without a
    /// timer (tokio's timers tick in milliseconds).
    pub batch_interval: Duration,
    pub max_batch_bytes: usize,
    pub max_batches_in_flight: usize,
    /// Versions of shard-map history kept for reads at older versions.
    pub shard_history: u64,
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
            limits: Limits::default(),
            batch_interval: Duration::ZERO,
            max_batch_bytes: 8 << 20,
            max_batches_in_flight: 8,
            shard_history: 10_000_000,
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

struct Pending {
    mutations: Vec<Mutation>,
    bytes: usize,
    reply: oneshot::Sender<Result<Version, ErrorReply>>,
}

/// What batches change in version order.
struct Ordered {
    map: VersionedShardMap,
    known_committed: Version,
}

struct Inner {
    config: ProxyConfig,
    sequencer: Peer,
    tlogs: Vec<Peer>,
    teams_by_tlog: Vec<Vec<StorageTeamId>>,
    ordered: Mutex<Ordered>,
    /// The sequence number of the last batch whose tagging is done.
    tagged_through: watch::Sender<u64>,
    queue: mpsc::Sender<Pending>,
    /// Client commits acknowledged since the start, for the status.
    commits: AtomicU64,
}

#[derive(Clone)]
pub struct ProxyService {
    inner: Arc<Inner>,
}

impl ProxyService {
    /// Registers every team on its TLogs (retrying until `startup_timeout`),
    /// then starts batching.
    pub async fn start(config: ProxyConfig, startup_timeout: Duration) -> Result<Self, ProxyError> {
        config.topology.check()?;
        if config.tlogs.len() != config.topology.tlog_count {
            return Err(ProxyError::TLogCount {
                configured: config.tlogs.len(),
                expected: config.topology.tlog_count,
            });
        }
        let peer = |addr| Peer::new(addr, ClientConfig::default());
        let tlogs: Vec<Peer> = config.tlogs.iter().map(|a| peer(*a)).collect();
        register_teams(&config.topology, &tlogs, startup_timeout).await?;
        let (queue, receiver) = mpsc::channel(16_384);
        let map =
            VersionedShardMap::new(config.shards.clone(), Version::ZERO, config.shard_history);
        let inner = Arc::new(Inner {
            sequencer: peer(config.sequencer),
            teams_by_tlog: config.topology.teams_by_tlog(),
            tlogs,
            ordered: Mutex::new(Ordered {
                map,
                known_committed: Version::ZERO,
            }),
            tagged_through: watch::channel(0).0,
            queue,
            commits: AtomicU64::new(0),
            config,
        });
        tokio::spawn(run_batcher(Arc::downgrade(&inner), receiver));
        Ok(ProxyService { inner })
    }

    /// The shard map as of `version`, if still in the history kept.
    pub fn shard_map_at(&self, version: Version) -> Option<ShardMap> {
        self.inner.ordered().map.at(version)
    }

    /// Which teams, and so which servers, hold a key at a version. A version
    /// newer than this proxy has tagged may get a location that a change it
    /// has not seen yet moved; the server then answers `wrong_shard_server`.
    pub fn locate(
        &self,
        request: &GetKeyLocationRequest,
    ) -> Result<GetKeyLocationReply, ErrorReply> {
        let map = self.shard_map_at(request.version).ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::TransactionTooOld,
                format!("the shard map at {} is no longer kept", request.version),
            )
        })?;
        let (begin, end, assignment) = map.locate(&request.key);
        let topology = &self.inner.config.topology;
        let teams = assignment
            .src
            .iter()
            .map(|team| (*team, topology.servers_of(*team)))
            .collect();
        Ok(GetKeyLocationReply { begin, end, teams })
    }

    pub fn status(&self) -> ProxyStatusReply {
        ProxyStatusReply {
            proxy: self.inner.config.id,
            known_committed_version: self.inner.ordered().known_committed,
            commits: self.inner.commits.load(Ordering::Relaxed),
        }
    }

    /// Commits one client batch, counting it in the metrics.
    pub async fn commit(&self, request: ClientCommitRequest) -> Result<Version, ErrorReply> {
        let received = Instant::now();
        let result = self.commit_unmeasured(request).await;
        if result.is_ok() {
            self.inner.commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("teamlog_proxy_commits_total").increment(1);
            metrics::histogram!("teamlog_proxy_commit_latency_seconds")
                .record(received.elapsed().as_secs_f64());
        } else {
            metrics::counter!("teamlog_proxy_commit_failures_total").increment(1);
        }
        result
    }

    async fn commit_unmeasured(&self, request: ClientCommitRequest) -> Result<Version, ErrorReply> {
        validate(&request, &self.inner.config.limits)?;
        let metadata: Vec<Mutation> = request
            .mutations
            .iter()
            .filter(|m| is_metadata(m))
            .cloned()
            .collect();
        if !metadata.is_empty() {
            let topology = &self.inner.config.topology;
            self.inner
                .ordered()
                .map
                .check(&metadata, |t| topology.is_storage_team(t))
                .map_err(|e| ErrorReply::new(ErrorCode::MalformedRequest, e.to_string()))?;
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            bytes: request.mutations.iter().map(|m| m.payload_len() + 16).sum(),
            mutations: request.mutations,
            reply,
        };
        if self.inner.queue.send(pending).await.is_err() {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "the proxy is stopping",
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ErrorReply::new(
                ErrorCode::CommitUnknownResult,
                "the proxy dropped the commit",
            ))
        })
    }
}

impl Service for ProxyService {
    fn handle(&self, request: Message, responder: Responder) {
        let service = self.clone();
        responder.reply_with(async move {
            match request {
                Message::ClientCommit(commit) => {
                    let version = service.commit(commit).await?;
                    Ok(Message::ClientCommitReply(ClientCommitReply { version }))
                }
                Message::GetKeyLocation(request) => {
                    Ok(Message::GetKeyLocationReply(service.locate(&request)?))
                }
                Message::Status => Ok(Message::ProxyStatus(service.status())),
                other => Err(ErrorReply::new(
                    ErrorCode::UnknownMessage,
                    format!("a commit proxy does not serve {}", other.name()),
                )),
            }
        });
    }
}

impl Inner {
    fn ordered(&self) -> MutexGuard<'_, Ordered> {
        self.ordered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_metadata(mutation: &Mutation) -> bool {
    match mutation {
        Mutation::SetValue { key, .. } => is_system_key(key),
        Mutation::ClearRange { begin, .. } => is_system_key(begin),
    }
}

async fn register_teams(
    topology: &Topology,
    tlogs: &[Peer],
    timeout: Duration,
) -> Result<(), ProxyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    for team in topology.all_teams() {
        for index in topology.tlogs_of(team) {
            let tlog = &tlogs[index];
            let request = RegisterTeamRequest {
                team,
                servers: topology.servers_of(team),
            };
            loop {
                let attempt = async { tlog.client().await?.register_team(request.clone()).await };
                match attempt.await {
                    Ok(()) => break,
                    Err(source) if tokio::time::Instant::now() >= deadline => {
                        return Err(ProxyError::Register {
                            team,
                            addr: tlog.addr(),
                            source,
                        })
                    }
                    Err(e) => {
                        tracing::debug!(addr = %tlog.addr(), error = %e, "tlog not ready; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Forms batches, gets each its versions in order, and hands it to a task.
async fn run_batcher(inner: std::sync::Weak<Inner>, mut queue: mpsc::Receiver<Pending>) {
    let mut request_num = first_request_num();
    let mut seq = 0u64;
    let mut permits: Option<Arc<Semaphore>> = None;
    while let Some(first) = queue.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let config = &inner.config;
        let permits = permits
            .get_or_insert_with(|| Arc::new(Semaphore::new(config.max_batches_in_flight)))
            .clone();
        let busy = permits.available_permits() < config.max_batches_in_flight;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].bytes;
        while bytes < config.max_batch_bytes {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if busy && !config.batch_interval.is_zero() {
            // Others are in flight: a short wait makes batches larger.
            let deadline = tokio::time::Instant::now() + config.batch_interval;
            while bytes < config.max_batch_bytes {
                tokio::select! {
                    next = queue.recv() => match next {
                        Some(p) => {
                            bytes += p.bytes;
                            batch.push(p);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        metrics::histogram!("teamlog_proxy_batch_commits").record(batch.len() as f64);
        metrics::histogram!("teamlog_proxy_batch_bytes").record(bytes as f64);
        request_num += 1;
        let versions = match commit_versions(&inner, request_num).await {
            Ok(v) => v,
            Err(e) => {
                fail(
                    batch,
                    ErrorCode::Unavailable,
                    &format!("no commit version: {e}"),
                );
                continue;
            }
        };
        seq += 1;
        tokio::spawn(commit_batch(inner.clone(), seq, versions, batch, permit));
    }
}

/// Where this proxy's request numbers start: the wall-clock time in
/// microseconds. The sequencer refuses a number below the last it saw from
/// a proxy (a stale retry); a restarted proxy must count on from above its
/// previous life's numbers, and a proxy makes far fewer than one request a
/// microsecond, so starting from the clock does that.
fn first_request_num() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

async fn commit_versions(
    inner: &Inner,
    request_num: u64,
) -> Result<GetCommitVersionReply, RpcError> {
    let request = GetCommitVersionRequest {
        proxy: inner.config.id,
        request_num,
    };
    match inner
        .sequencer
        .client()
        .await?
        .call(Message::GetCommitVersion(request))
        .await?
    {
        Message::GetCommitVersionReply(reply) => Ok(reply),
        other => Err(RpcError::UnexpectedReply(other.name())),
    }
}

fn fail(batch: Vec<Pending>, code: ErrorCode, message: &str) {
    for pending in batch {
        let _ = pending.reply.send(Err(ErrorReply::new(code, message)));
    }
}

async fn commit_batch(
    inner: Arc<Inner>,
    seq: u64,
    versions: GetCommitVersionReply,
    batch: Vec<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    let GetCommitVersionReply {
        prev_version,
        version,
    } = versions;
    let (commits, replies): (Vec<Vec<Mutation>>, Vec<_>) =
        batch.into_iter().map(|p| (p.mutations, p.reply)).unzip();
    let metadata: Vec<Mutation> = commits
        .iter()
        .flatten()
        .filter(|m| is_metadata(m))
        .cloned()
        .collect();
    let resolve = ResolveRequest {
        proxy: inner.config.id,
        prev_version,
        version,
        metadata,
        transactions: Vec::new(),
    };
    let resolved = async {
        inner
            .sequencer
            .client()
            .await?
            .call(Message::Resolve(resolve))
            .await
    }
    .await;

    // Tagging runs in version order: the shard map must hold every change
    // committed before this version, and nothing after it.
    let mut turn = inner.tagged_through.subscribe();
    let _ = turn.wait_for(|done| *done + 1 == seq).await;
    let pass_turn = PassTurn {
        tagged_through: &inner.tagged_through,
        seq,
    };
    let outcome = {
        let mut ordered = inner.ordered();
        let tagged = match resolved {
            Ok(Message::ResolveReply(reply)) => {
                for change in reply.metadata {
                    if let Err(e) = ordered.map.apply(change.version, &change.mutations) {
                        tracing::error!(error = %e, version = %change.version, "could not apply metadata");
                    }
                }
                tag_version(
                    ordered.map.current(),
                    &inner.config.topology,
                    version,
                    &commits,
                )
                .map_err(|e| (ErrorCode::Unknown, e.to_string()))
            }
            Ok(other) => Err((
                ErrorCode::Unavailable,
                format!("resolver answered {}", other.name()),
            )),
            Err(e) => Err((ErrorCode::Unavailable, format!("resolver: {e}"))),
        };
        let tagged = match tagged {
            Ok(tagged) => {
                if let Err(e) = ordered.map.apply(version, &tagged.metadata) {
                    tracing::error!(error = %e, %version, "could not apply own metadata");
                }
                Ok(tagged)
            }
            // The version is spent: the TLogs still get it, empty, so their
            // chains stay whole; the clients learn nothing was written.
            Err(failure) => Err(failure),
        };
        (tagged, ordered.known_committed)
    };
    drop(pass_turn);

    let (tagged, known_committed) = outcome;
    let (blocks, refused) = match tagged {
        Ok(tagged) => (tagged, None),
        Err(failure) => (TaggedVersion::default(), Some(failure)),
    };
    let pushed = push_to_tlogs(&inner, prev_version, version, known_committed, &blocks).await;
    let result = match (refused, pushed) {
        (Some((code, message)), _) => Err(ErrorReply::new(code, message)),
        (None, Err(message)) => Err(ErrorReply::new(ErrorCode::CommitUnknownResult, message)),
        (None, Ok(())) => {
            report_committed(&inner, version).await;
            Ok(version)
        }
    };
    for reply in replies {
        let _ = reply.send(result.clone());
    }
}

/// Lets the next batch tag, however this one's tagging ended.
struct PassTurn<'a> {
    tagged_through: &'a watch::Sender<u64>,
    seq: u64,
}

impl Drop for PassTurn<'_> {
    fn drop(&mut self) {
        self.tagged_through.send_replace(self.seq);
    }
}

/// Sends every TLog its teams' blocks at `version` and waits until all hold
/// it durably.
async fn push_to_tlogs(
    inner: &Inner,
    prev_version: Version,
    version: Version,
    known_committed_version: Version,
    tagged: &TaggedVersion,
) -> Result<(), String> {
    let broadcast = inner.config.topology.broadcast;
    let pushes = inner
        .tlogs
        .iter()
        .zip(&inner.teams_by_tlog)
        .map(|(tlog, teams)| {
            let teams = teams
                .iter()
                .filter_map(|team| match tagged.blocks.get(team) {
                    Some(data) => Some(TeamBlockData {
                        team: *team,
                        data: data.clone(),
                    }),
                    None if broadcast => Some(TeamBlockData {
                        team: *team,
                        data: empty_version(*team, version),
                    }),
                    None => None,
                })
                .collect();
            let request = TLogCommitRequest {
                prev_version,
                version,
                known_committed_version,
                teams,
            };
            async move {
                let result = async { tlog.client().await?.tlog_commit(request).await }.await;
                result.map_err(|e| format!("tlog {}: {e}", tlog.addr()))
            }
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

fn empty_version(team: StorageTeamId, version: Version) -> Bytes {
    let mut builder = TeamBlockBuilder::new(team);
    builder
        .push_empty_version(version)
        .expect("a fresh block takes any version");
    builder.finish()
}

async fn report_committed(inner: &Inner, version: Version) {
    let known_committed = {
        let mut ordered = inner.ordered();
        ordered.known_committed = ordered.known_committed.max(version);
        ordered.known_committed
    };
    metrics::gauge!("teamlog_proxy_known_committed_version").set(known_committed.0 as f64);
    let request = ReportCommittedRequest {
        proxy: inner.config.id,
        version,
    };
    let reported = async {
        inner
            .sequencer
            .client()
            .await?
            .call(Message::ReportCommitted(request))
            .await
    }
    .await;
    if let Err(e) = reported {
        tracing::warn!(error = %e, %version, "could not report a committed version");
    }
}
