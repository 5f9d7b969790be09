//! The controller's runtime: while this process holds the controller's
//! lease, it recovers the cluster into a new generation, carrying out what
//! [`Recovery`] says, then watches the generation's roles through the
//! workers' registrations and recovers again when one fails.
//!
//! ```text
//!  workers ─RegisterWorker(address, roles)─▶ Controller (Service) ─▶ registry (last seen, roles)
//!  run: lead? ─▶ Recovery::start ─Command─▶ execute (coordinators, TLog locks, worker recruits)
//!                      ▲                          │
//!                      └────────Event─────────────┘
//!       recovered ─▶ watch: a role's worker unheard for `failure_timeout` or refusing
//!                    connections (probe.rs), or the role missing or reporting a
//!                    problem ─▶ recover again
//! ```
//!
//! A recovery that fails anywhere (a write that did not take, a worker
//! that did not answer, lost leadership) is abandoned whole, and the next
//! one starts from the core state after a short, growing pause.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::Retryable;
use client::Client;
use cluster::core_state::{CommitPath, CoreState, CORE_STATE_REGISTER};
use cluster::retry::endless_backoff;
use cluster::{ClusterFile, ClusterFileError};
use coordinator::candidacy::Candidacy;
use coordinator::client::CoordinatorClient;
use coordinator::service::HostedController;
use futures::future::try_join_all;
use proto::clock::Clock;
use proto::rpc::{
    ErrorCode, ErrorReply, HostedRole, Message, RecoveryReport, Recruit, RecruitRequest,
    RegisterWorkerRequest, WorkerReport,
};
use proto::shard_map::ShardMap;
use proto::transport::{ClientConfig, Responder, RpcClient, RpcError, Service};
use proto::ProxyId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::distributor::Distributing;
use crate::failures::StorageProbes;
use crate::keeper::Keeping;
use crate::metadata;
use crate::pause::PauseWatch;
use crate::probe::Probes;
use crate::recovery::{Command, Event, Phase, PhaseTime, Recovery, RecoveryConfig};
use crate::retirement;

mod excluding;
mod steps;

use excluding::ConfigurationWatch;

use steps::{call, execute};

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub recovery: RecoveryConfig,
    /// The cluster file's shard map: a cluster's first generation routes
    /// by it.
    pub initial_shards: ShardMap,
    /// How the controller calls workers, TLogs and the sequencer.
    pub transport: ClientConfig,
    /// A worker not heard from for this long is taken for failed.
    pub failure_timeout: Duration,
    /// How long one call of a recovery step may take.
    pub call_timeout: Duration,
    /// The storage servers by id, whose durable versions decide when an
    /// old generation retires (those the generation leaves out aside).
    pub storage_servers: BTreeMap<u64, SocketAddr>,
    /// The cluster file, for the client through which the controller
    /// takes over moves whose driver is gone (`keeper`).
    pub cluster: ClusterFile,
    /// How long a storage server may not answer before it is left out
    /// (`failures`); never, when none.
    pub storage_failure_timeout: Option<Duration>,
}

impl ControllerConfig {
    /// The controller of `cluster`: its shard map and storage servers come
    /// from the cluster file.
    pub fn new(
        recovery: RecoveryConfig,
        cluster: &ClusterFile,
        transport: ClientConfig,
    ) -> Result<Self, ClusterFileError> {
        Ok(ControllerConfig {
            recovery,
            initial_shards: cluster.shard_map()?,
            transport,
            failure_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(5),
            storage_servers: cluster
                .storage_servers
                .iter()
                .map(|s| (s.id, s.address))
                .collect(),
            cluster: cluster.clone(),
            storage_failure_timeout: cluster
                .generation
                .map(|g| Duration::from_millis(g.storage_failure_timeout_ms))
                .filter(|t| !t.is_zero()),
        })
    }
}

/// What the controller's status says of recoveries.
#[derive(Clone, Debug, Default)]
pub struct RecoveryStatus {
    /// The epoch of the last generation recovered by this controller.
    pub recovered_epoch: Option<u64>,
    /// The phase under way, and what it waits for.
    pub phase: Option<&'static str>,
    pub waiting_for: Option<String>,
    /// The phases of the last (or current) recovery.
    pub phases: Vec<PhaseTime>,
    /// Why the last recovery was abandoned, if it was.
    pub last_failure: Option<String>,
    /// The live generations as last read or written, one line each, then
    /// the version the recorded shard map is as of and its moves in flight.
    pub generations: Vec<String>,
    /// What the data distributor last found and did.
    pub distribution: Vec<String>,
    /// Why the data distributor is stuck, when it is.
    pub distribution_problem: Option<String>,
    /// Why the configuration's excluded servers are not left out, when
    /// they are not.
    pub configuration_problem: Option<String>,
    /// The storage servers left out as failed, and those silent past the
    /// timeout that stay in, with why (`failures`).
    pub failures: Vec<String>,
}

struct WorkerEntry {
    last_seen_ms: u64,
    roles: Vec<HostedRole>,
}

struct Inner {
    config: ControllerConfig,
    candidacy: Arc<Candidacy>,
    coordinators: CoordinatorClient,
    clock: Arc<dyn Clock>,
    workers: Mutex<BTreeMap<SocketAddr, WorkerEntry>>,
    status: Mutex<RecoveryStatus>,
    /// When this process last began to hold the lease.
    leading_since_ms: Mutex<Option<u64>>,
    pauses: Arc<PauseWatch>,
    /// The storage servers the recovered or adopted generation leaves out.
    excluded: Mutex<BTreeSet<u64>>,
}

/// How long a new controller waits for the workers to register before it
/// places a generation on fewer workers than it has TLogs: every live
/// worker registers within a few of its intervals.
const WORKER_GRACE: Duration = Duration::from_millis(300);

/// How long a recovery waits for more workers before it places two TLogs
/// on one.
const SHARING_WAIT: Duration = Duration::from_secs(1);

/// The cluster controller; `Service` for the workers' registrations.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// Runs a controller that acts while `candidacy` leads.
    pub fn start(
        config: ControllerConfig,
        candidacy: Arc<Candidacy>,
        coordinators: CoordinatorClient,
        clock: Arc<dyn Clock>,
    ) -> Controller {
        let pauses = Arc::new(PauseWatch::new(config.failure_timeout, clock.now_ms()));
        PauseWatch::start(&pauses, Arc::clone(&clock));
        let inner = Arc::new(Inner {
            config,
            candidacy,
            coordinators,
            clock,
            workers: Mutex::new(BTreeMap::new()),
            status: Mutex::new(RecoveryStatus::default()),
            leading_since_ms: Mutex::new(None),
            pauses,
            excluded: Mutex::new(BTreeSet::new()),
        });
        tokio::spawn(run(Arc::downgrade(&inner)));
        Controller { inner }
    }

    pub fn status(&self) -> RecoveryStatus {
        lock(&self.inner.status).clone()
    }
}

impl HostedController for Controller {
    fn report(&self) -> Option<RecoveryReport> {
        if !self.inner.candidacy.leads() {
            return None;
        }
        let status = self.status();
        let now = self.inner.clock.now_ms();
        let workers = lock(&self.inner.workers)
            .iter()
            .map(|(address, w)| WorkerReport {
                address: address.to_string(),
                silent_ms: now.saturating_sub(w.last_seen_ms),
                roles: w
                    .roles
                    .iter()
                    .map(|r| format!("{} {}/{}", r.kind, r.epoch, r.id))
                    .collect(),
            })
            .collect();
        Some(RecoveryReport {
            epoch: status.recovered_epoch.unwrap_or(0),
            recovering: status.phase.map(|phase| match &status.waiting_for {
                Some(waiting) => format!("{phase}: waiting for {waiting}"),
                None => phase.to_owned(),
            }),
            phases: status
                .phases
                .iter()
                .map(|p| {
                    let took = p.ended_ms.unwrap_or(now).saturating_sub(p.started_ms);
                    (p.phase.name().to_owned(), took)
                })
                .collect(),
            last_failure: status.last_failure,
            workers,
            generations: status.generations,
            distribution: status.distribution,
            distribution_problem: status.distribution_problem,
            configuration_problem: status
                .configuration_problem
                .into_iter()
                .chain(status.failures)
                .reduce(|a, b| format!("{a}; {b}")),
        })
    }
}

impl Service for Controller {
    fn handle(&self, request: Message, responder: Responder) {
        let reply = match request {
            // A worker that registers with a controller whose lease moved
            // on must learn so, or it would never look for the new one.
            Message::RegisterWorker(_) if !self.inner.candidacy.leads() => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "this process does not hold the controller's lease",
            )),
            Message::RegisterWorker(RegisterWorkerRequest { address, roles }) => {
                let now = self.inner.clock.now_ms();
                lock(&self.inner.workers).insert(
                    address,
                    WorkerEntry {
                        last_seen_ms: now,
                        roles,
                    },
                );
                Ok(Message::RegisterWorkerReply)
            }
            other => Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("the controller does not take {}", other.name()),
            )),
        };
        responder.reply(reply);
    }
}

impl Inner {
    /// Whether this process holds the lease; notes when it began to.
    fn leads(&self) -> bool {
        let leads = self.candidacy.leads();
        let mut since = lock(&self.leading_since_ms);
        match (leads, *since) {
            (true, None) => *since = Some(self.clock.now_ms()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
        leads
    }

    /// Whether the workers had time to register with this controller.
    fn workers_had_time(&self) -> bool {
        let grace = WORKER_GRACE.as_millis() as u64;
        lock(&self.leading_since_ms)
            .is_some_and(|since| self.clock.now_ms().saturating_sub(since) >= grace)
    }

    fn live_workers(&self) -> Vec<SocketAddr> {
        let now = self.clock.now_ms();
        let timeout = self.config.failure_timeout.as_millis() as u64;
        lock(&self.workers)
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.last_seen_ms) <= timeout)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Takes `worker` for gone until it registers again.
    fn forget_worker(&self, worker: SocketAddr) {
        lock(&self.workers).remove(&worker);
    }

    /// Why a role of the recovered generation counts as failed, if it does.
    fn role_failure(&self, role: &Placed, now_ms: u64) -> Option<String> {
        let timeout = self.config.failure_timeout.as_millis() as u64;
        let workers = lock(&self.workers);
        let Some(worker) = workers.get(&role.worker) else {
            return Some(format!("worker {} never registered", role.worker));
        };
        let silent = now_ms.saturating_sub(worker.last_seen_ms);
        if silent > timeout && self.pauses.trusts_silence(now_ms) {
            return Some(format!("worker {} silent for {silent} ms", role.worker));
        }
        match worker.roles.iter().find(|r| r.address == role.address) {
            Some(HostedRole {
                problem: Some(problem),
                ..
            }) => Some(format!("{} at {}: {problem}", role.what, role.address)),
            Some(_) => None,
            // A registration sent before the recruit may arrive after it.
            None if now_ms.saturating_sub(role.recruited_ms) <= timeout => None,
            None => Some(format!(
                "worker {} no longer hosts {} at {}",
                role.worker, role.what, role.address
            )),
        }
    }

    fn set_status(&self, update: impl FnOnce(&mut RecoveryStatus)) {
        update(&mut lock(&self.status));
    }

    /// The storage servers whose durable versions decide retirement.
    fn retiring_servers(&self) -> Vec<SocketAddr> {
        let excluded = lock(&self.excluded);
        let servers = self.config.storage_servers.iter();
        servers
            .filter(|(id, _)| !excluded.contains(id))
            .map(|(_, address)| *address)
            .collect()
    }
}

/// A recruited role, and the worker hosting it.
#[derive(Clone, Debug)]
struct Placed {
    what: String,
    address: SocketAddr,
    worker: SocketAddr,
    recruited_ms: u64,
}

async fn run(inner: std::sync::Weak<Inner>) {
    let mut pause = Duration::from_millis(50);
    // Whether the generation the core state names may be adopted as it is:
    // true whenever this process has just begun to lead.
    let mut may_adopt = true;
    // Probed only while this process leads: silence counts from then.
    let mut storage: Option<StorageProbes> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if !strong.leads() {
            drop(strong);
            may_adopt = true;
            storage = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if storage.is_none() && strong.config.storage_failure_timeout.is_some() {
            storage = Some(StorageProbes::start(
                &strong.config.storage_servers,
                &strong.config.transport,
                strong.clock.clone(),
            ));
        }
        if std::mem::take(&mut may_adopt) {
            if let Some(placed) = adopt(&strong).await {
                let reason = watch(&strong, &placed, storage.as_ref()).await;
                tracing::warn!(%reason, "recovering: the adopted generation lost a role");
                may_adopt = !strong.leads();
                continue;
            }
        }
        match recover(&strong).await {
            Ok(placed) => {
                pause = Duration::from_millis(50);
                let reason = watch(&strong, &placed, storage.as_ref()).await;
                tracing::warn!(%reason, "recovering: the generation lost a role");
                may_adopt = !strong.leads();
            }
            Err(reason) => {
                tracing::warn!(%reason, "recovery abandoned; starting again");
                strong.set_status(|s| s.last_failure = Some(reason));
                drop(strong);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A new controller takes over the current generation as it is when every
/// role of it is alive on a registered worker: a change of controller
/// then costs no recovery. Returns its roles, or `None` when it must be
/// recovered (a role is missing, a TLog is locked, its recovery never
/// finished, or the core state cannot be read).
async fn adopt(inner: &Inner) -> Option<Vec<Placed>> {
    while !inner.workers_had_time() {
        if !inner.leads() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (state, _) = inner.coordinators.read_core_state().await.ok()?;
    let generation = state.current()?;
    let path = generation.commit_path.as_ref()?;
    let mut wanted: Vec<(String, SocketAddr)> = generation
        .tlogs
        .iter()
        .map(|a| ("tlog".to_owned(), *a))
        .collect();
    wanted.push(("sequencer".to_owned(), path.sequencer));
    wanted.extend(path.proxies.iter().map(|a| ("proxy".to_owned(), *a)));
    let now = inner.clock.now_ms();
    let live = inner.live_workers();
    let mut placed = Vec::with_capacity(wanted.len());
    {
        let workers = lock(&inner.workers);
        for (what, address) in wanted {
            let worker = live.iter().find(|w| {
                workers.get(w).is_some_and(|entry| {
                    entry.roles.iter().any(|r| {
                        r.address == address && r.epoch == generation.epoch && r.problem.is_none()
                    })
                })
            })?;
            placed.push(Placed {
                what,
                address,
                worker: *worker,
                recruited_ms: now,
            });
        }
    }
    // A recovery that a controller before this one abandoned may have
    // locked them: the generation then takes no more commits.
    for tlog in &generation.tlogs {
        match call(inner, *tlog, Message::Status).await {
            Ok(Message::TLogStatus(status)) if !status.locked => {}
            _ => return None,
        }
    }
    // Its recovery may have ended before it opened the sequencer.
    call(
        inner,
        path.sequencer,
        Message::OpenCommits(generation.epoch),
    )
    .await
    .ok()?;
    tracing::info!(
        epoch = generation.epoch,
        "adopted the current generation: every role is alive"
    );
    *lock(&inner.excluded) = generation.excluded_servers.clone();
    let generations = summaries(&state);
    inner.set_status(|s| {
        s.recovered_epoch = Some(generation.epoch);
        s.phase = None;
        s.waiting_for = None;
        s.generations = generations;
    });
    Some(placed)
}

fn summaries(state: &CoreState) -> Vec<String> {
    let generations = state.generations.iter().map(|g| g.summary());
    let shard_map = state.shard_map.as_ref().map(|m| {
        format!(
            "shard map: {} shards as of version {}",
            m.shards.len(),
            m.version
        )
    });
    let moves = state.shard_map.iter().flat_map(|m| m.moves());
    generations.chain(shard_map).chain(moves).collect()
}

/// How often the controller looks for generations to retire.
const RETIRE_INTERVAL: Duration = Duration::from_millis(250);

/// How often the controller checkpoints the shard map and pops the
/// metadata team.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the controller reads which storage servers to leave out
/// (at once, too, when its watch sees the configuration change).
const CONFIGURATION_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until the recovered generation loses a role, or this process the
/// controller's lease; says why. Meanwhile retires the old generations
/// every storage server is done with, and checkpoints the shard map.
async fn watch(inner: &Inner, placed: &[Placed], storage: Option<&StorageProbes>) -> String {
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    let mut retired_at: Option<tokio::time::Instant> = None;
    let mut checkpointed_at: Option<tokio::time::Instant> = None;
    let mut configured_at: Option<tokio::time::Instant> = None;
    let settings = inner.config.cluster.distribution.unwrap_or_default();
    // The keeper and the distributor move data through one client, with
    // the controller's own identity: shard metrics are for members only.
    let client = Client::with_transport(&inner.config.cluster, inner.config.transport.clone())
        .map_err(|e| tracing::warn!(error = %e, "no client to move data with"))
        .ok()
        .map(Arc::new);
    let mut keeping = client.clone().map(|client| Keeping::new(settings, client));
    let mut distributing = client.filter(|_| settings.enabled).and_then(|client| {
        let coordinators = CoordinatorClient::new(
            &inner.config.cluster.coordinator_addresses(),
            inner.config.transport.clone(),
        )
        .map_err(|e| tracing::warn!(error = %e, "no coordinators to read the configuration from"))
        .ok()?;
        Some(Distributing::new(settings, client, Arc::new(coordinators)))
    });
    let workers: BTreeSet<SocketAddr> = placed.iter().map(|p| p.worker).collect();
    let probes = Probes::start(workers, &inner.config.transport);
    let configuration = CoordinatorClient::new(
        &inner.config.cluster.coordinator_addresses(),
        inner.config.transport.clone(),
    )
    .map_err(|e| tracing::warn!(error = %e, "no coordinators to watch the configuration on"))
    .ok()
    .map(ConfigurationWatch::start);
    loop {
        interval.tick().await;
        if checkpointed_at.is_none_or(|at| at.elapsed() >= CHECKPOINT_INTERVAL) && inner.leads() {
            checkpointed_at = Some(tokio::time::Instant::now());
            match metadata::checkpoint(&inner.coordinators, &inner.config.transport).await {
                Ok(Some(checkpoint)) => {
                    if let Some(state) = &checkpoint.written {
                        let generations = summaries(state);
                        inner.set_status(|s| s.generations = generations);
                    }
                    let mut lines = Vec::new();
                    if let Some(keeping) = &mut keeping {
                        let now = inner.clock.now_ms();
                        keeping.observe(now, &checkpoint.map, &checkpoint.changes);
                        lines.extend(keeping.lines());
                    }
                    let mut problem = None;
                    if let Some(distributing) = &mut distributing {
                        distributing.observe(&checkpoint.map);
                        lines.extend(distributing.lines());
                        problem = distributing.problem();
                    }
                    inner.set_status(|s| {
                        s.distribution = lines;
                        s.distribution_problem = problem;
                    });
                }
                Ok(None) => {}
                Err(reason) => tracing::debug!(%reason, "no shard-map checkpoint this time"),
            }
        }
        if retired_at.is_none_or(|at| at.elapsed() >= RETIRE_INTERVAL) && inner.leads() {
            retired_at = Some(tokio::time::Instant::now());
            let servers = inner.retiring_servers();
            let retiring =
                retirement::retire(&inner.coordinators, &servers, &inner.config.transport);
            match retiring.await {
                Ok(Some(state)) => {
                    let generations = summaries(&state);
                    inner.set_status(|s| s.generations = generations);
                }
                Ok(None) => {}
                Err(reason) => tracing::debug!(%reason, "no generation retired this time"),
            }
        }
        if !inner.leads() {
            return "this process no longer holds the controller's lease".to_owned();
        }
        let reconfigured = configuration
            .as_ref()
            .is_some_and(ConfigurationWatch::changed);
        if reconfigured || configured_at.is_none_or(|at| at.elapsed() >= CONFIGURATION_INTERVAL) {
            configured_at = Some(tokio::time::Instant::now());
            if let Some(storage) = storage {
                inner.review_failures(storage).await;
            }
            if let Some(why) = inner.exclusion_changed().await {
                return why;
            }
        }
        let now = inner.clock.now_ms();
        let failed = placed.iter().find_map(|p| {
            inner.role_failure(p, now).or_else(|| {
                let why = probes.gone(p.worker)?;
                // Recruit nothing there until it registers again: a
                // recovery that recruited on it would be abandoned.
                inner.forget_worker(p.worker);
                Some(why)
            })
        });
        if let Some(failure) = failed {
            return failure;
        }
    }
}

type Outcome = Result<Vec<Event>, String>;

/// One recovery, to the end; returns the roles it recruited.
async fn recover(inner: &Arc<Inner>) -> Result<Vec<Placed>, String> {
    let excluded = inner.excluded_wanted().await;
    let (mut recovery, commands) = Recovery::start(
        inner.config.recovery,
        inner.config.initial_shards.clone(),
        excluded,
        inner.clock.now_ms(),
    );
    let placed = Arc::new(Mutex::new(Vec::<Placed>::new()));
    let (events, mut incoming) = mpsc::unbounded_channel::<Outcome>();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, command: Command| {
        let inner = inner.clone();
        let events = events.clone();
        let placed = placed.clone();
        tasks.spawn(async move { execute(&inner, command, &events, &placed).await });
    };
    for command in commands {
        spawn(&mut tasks, command);
    }
    inner.set_status(|s| s.last_failure = None);
    loop {
        inner.set_status(|s| {
            s.phase = Some(recovery.phase().name());
            s.waiting_for = Some(recovery.waiting_for());
            s.phases = recovery.phase_times().to_vec();
        });
        if recovery.phase() == Phase::Recovered {
            let epoch = recovery.epoch();
            tracing::info!(epoch, phases = ?recovery.phase_times(), "recovered");
            let state = recovery.core_state().0;
            let generations = summaries(state);
            if let Some(current) = state.current() {
                *lock(&inner.excluded) = current.excluded_servers.clone();
            }
            inner.set_status(|s| {
                s.recovered_epoch = Some(epoch);
                s.phase = None;
                s.waiting_for = None;
                s.generations = generations;
            });
            return Ok(std::mem::take(&mut *lock(&placed)));
        }
        let outcome = tokio::select! {
            biased;
            outcome = incoming.recv() => outcome,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if !inner.leads() {
                    return Err("this process lost the controller's lease".to_owned());
                }
                continue;
            }
        };
        let Some(outcome) = outcome else {
            return Err("every step ended without an answer".to_owned());
        };
        for event in outcome? {
            let now = inner.clock.now_ms();
            let commands = recovery.handle(event, now).map_err(|e| e.to_string())?;
            for command in commands {
                spawn(&mut tasks, command);
            }
        }
    }
}
