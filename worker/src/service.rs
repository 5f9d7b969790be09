//! The worker: takes the controller's recruits, hosts the roles, tells
//! the controller what it hosts, and stops the roles of generations the
//! core state no longer needs.
//!
//! ```text
//!  controller ─Recruit(epoch, role)─▶ WorkerService ─start─▶ Started role (own port) ─▶ RecruitReply(address)
//!  every 100 ms: the `controller` register ─▶ RegisterWorker(address, roles) ─▶ controller
//!  a watch on the `core_state` register (each change, else every second)
//!      ─▶ stop roles of ended generations, remove retired TLogs
//! ```
//!
//! A recruit for a role the worker already hosts (same kind, epoch and
//! id) replaces it: the controller recruits a generation's roles again
//! only when a recovery did not record them, so nothing relies on the old
//! one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cluster::core_state::CoreState;
use coordinator::client::CoordinatorClient;
use coordinator::election::{Holder, CONTROLLER_REGISTER};
use proto::rpc::{
    ErrorCode, ErrorReply, HostedRole, Message, Recruit, RecruitRequest, RegisterWorkerRequest,
    RoleKind, WorkerStatusReply,
};
use proto::transport::{Peer, Responder, Service};
use proto::Version;

use crate::roles::{start_proxy, start_sequencer, start_tlog, ProxyStart, RoleContext, Started};
use crate::WorkerError;

/// How often a worker tells the controller it is alive and what it hosts.
pub const REGISTER_INTERVAL: Duration = Duration::from_millis(100);
/// How long a worker's watch on the core state waits for a change before
/// it checks its roles against the state as it stands. A change answers
/// the watch at once: a client whose commit waits on a proxy of an ended
/// generation learns of the new one only when that proxy goes.
const RETIRE_INTERVAL: Duration = Duration::from_secs(1);

type RoleKey = (RoleKind, u64, u64);

#[derive(Clone)]
pub struct WorkerService {
    inner: Arc<Inner>,
}

struct Inner {
    address: SocketAddr,
    ctx: RoleContext,
    coordinators: Arc<CoordinatorClient>,
    /// Held across a role's start, so recruits happen one at a time.
    hosted: tokio::sync::Mutex<BTreeMap<RoleKey, Started>>,
    /// What `hosted` holds, for reports that must not wait on a recruit.
    roles: Mutex<Vec<HostedRole>>,
    controller: Mutex<Option<SocketAddr>>,
}

impl WorkerService {
    /// Reopens the TLogs this worker's data directory holds (a restart
    /// after a crash), then starts registering with the controller.
    pub async fn start(
        address: SocketAddr,
        ctx: RoleContext,
        coordinators: CoordinatorClient,
    ) -> Result<WorkerService, WorkerError> {
        let mut hosted = BTreeMap::new();
        for kept in ctx.disks.kept()? {
            let (epoch, index) = (kept.epoch, kept.index);
            let Some(listen) = kept.address else {
                tracing::warn!(epoch, index, "a TLog's log without its address: removed");
                ctx.disks.remove(epoch, index);
                continue;
            };
            let started = start_tlog(&ctx, epoch, index, None, listen).await?;
            hosted.insert((RoleKind::TLog, epoch, index), started);
        }
        let inner = Arc::new(Inner {
            address,
            ctx,
            coordinators: Arc::new(coordinators),
            hosted: tokio::sync::Mutex::new(hosted),
            roles: Mutex::new(Vec::new()),
            controller: Mutex::new(None),
        });
        inner.refresh_roles(&*inner.hosted.lock().await);
        tokio::spawn(register_loop(Arc::downgrade(&inner)));
        tokio::spawn(retire_loop(Arc::downgrade(&inner)));
        Ok(WorkerService { inner })
    }

    pub fn status(&self) -> WorkerStatusReply {
        WorkerStatusReply {
            address: self.inner.address,
            roles: self.inner.roles(),
            controller: *lock(&self.inner.controller),
        }
    }

    /// Stops every hosted role.
    pub async fn shutdown(&self) {
        let hosted = std::mem::take(&mut *self.inner.hosted.lock().await);
        for (_, role) in hosted {
            role.stop().await;
        }
    }

    async fn recruit(&self, request: RecruitRequest) -> Result<SocketAddr, ErrorReply> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let listen = SocketAddr::new(inner.address.ip(), 0);
        let epoch = request.epoch;
        let key = match &request.role {
            Recruit::TLog { index, .. } => (RoleKind::TLog, epoch, *index),
            Recruit::Sequencer { .. } => (RoleKind::Sequencer, epoch, 0),
            Recruit::Proxy { id, .. } => (RoleKind::Proxy, epoch, id.0),
        };
        let mut hosted = inner.hosted.lock().await;
        if let Some(old) = hosted.remove(&key) {
            tracing::info!(kind = %key.0, epoch, id = key.2, "recruited again: replacing the role");
            old.stop().await;
        }
        let started = match request.role {
            // A fresh start removes what an earlier recruit left.
            Recruit::TLog { index, begin } => {
                start_tlog(ctx, epoch, index, Some(begin), listen).await
            }
            Recruit::Sequencer {
                start_after,
                floor,
                proxies,
            } => start_sequencer(ctx, epoch, (start_after, floor), proxies, listen).await,
            Recruit::Proxy {
                id,
                sequencer,
                tlogs,
            } => match self.proxy_start(epoch).await {
                Ok(start) => start_proxy(ctx, epoch, id, sequencer, tlogs, start, listen).await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| ErrorReply::new(ErrorCode::Unavailable, e.to_string()))?;
        let address = started.address;
        hosted.insert(key, started);
        inner.refresh_roles(&hosted);
        Ok(address)
    }

    /// What generation `epoch`'s proxies start from, as its recovery
    /// recorded it: the shard map and the version it is as of, and the
    /// storage servers the generation leaves out.
    async fn proxy_start(&self, epoch: u64) -> Result<ProxyStart, WorkerError> {
        let (state, _) = self
            .inner
            .coordinators
            .read_core_state()
            .await
            .map_err(|e| WorkerError::Role(format!("reading the core state: {e}")))?;
        let Some(generation) = state.current().filter(|g| g.epoch == epoch) else {
            return Err(WorkerError::Role(format!(
                "generation {epoch} is not the current one (epoch {})",
                state.epoch
            )));
        };
        let (shards, shards_version) = match &state.shard_map {
            Some(snapshot) => {
                let map = snapshot
                    .map()
                    .map_err(|e| WorkerError::Role(e.to_string()))?;
                (map, snapshot.version)
            }
            None => {
                let map = self.inner.ctx.cluster.shard_map();
                let map = map.map_err(|e| WorkerError::Role(e.to_string()))?;
                (map, Version::ZERO)
            }
        };
        Ok(ProxyStart {
            shards,
            shards_version,
            excluded_servers: generation.excluded_servers.clone(),
        })
    }

    async fn handle(self, request: Message) -> Result<Message, ErrorReply> {
        match request {
            Message::Recruit(r) => self.recruit(r).await.map(Message::RecruitReply),
            Message::Status => Ok(Message::WorkerStatus(self.status())),
            other => Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("a worker does not take {}", other.name()),
            )),
        }
    }
}

impl Service for WorkerService {
    fn handle(&self, request: Message, responder: Responder) {
        responder.reply_with(self.clone().handle(request));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn roles(&self) -> Vec<HostedRole> {
        let mut roles = lock(&self.roles).clone();
        // Problems are asked fresh; the list changes only with recruits.
        if let Ok(hosted) = self.hosted.try_lock() {
            for role in roles.iter_mut() {
                if let Some(started) = hosted.get(&(role.kind, role.epoch, role.id)) {
                    role.problem = (started.problem)();
                }
            }
        }
        roles
    }

    fn refresh_roles(&self, hosted: &BTreeMap<RoleKey, Started>) {
        *lock(&self.roles) = hosted
            .values()
            .map(|r| HostedRole {
                kind: r.kind,
                epoch: r.epoch,
                id: r.id,
                address: r.address,
                problem: (r.problem)(),
            })
            .collect();
    }

    /// The controller, as the coordinators' `controller` register names it.
    async fn find_controller(&self) -> Option<SocketAddr> {
        if let Some(known) = *lock(&self.controller) {
            return Some(known);
        }
        let register = self.coordinators.read(CONTROLLER_REGISTER).await.ok()?;
        let holder: Holder = serde_json::from_slice(&register.value).ok()?;
        let address = holder.address.parse().ok()?;
        *lock(&self.controller) = Some(address);
        Some(address)
    }

    /// Stops the roles of generations the core state has moved past:
    /// sequencers and proxies of earlier epochs, and TLogs of earlier
    /// epochs it no longer lists (their data was popped, or their
    /// generation was never recorded).
    async fn retire(&self, state: &CoreState) {
        let listed = |epoch: u64| state.generations.iter().any(|g| g.epoch == epoch);
        let mut hosted = self.hosted.lock().await;
        let ended: Vec<RoleKey> = hosted
            .keys()
            .filter(|(kind, epoch, _)| {
                *epoch < state.epoch && (*kind != RoleKind::TLog || !listed(*epoch))
            })
            .copied()
            .collect();
        if ended.is_empty() {
            return;
        }
        for key in ended {
            let Some(role) = hosted.remove(&key) else {
                continue;
            };
            tracing::info!(kind = %key.0, epoch = key.1, id = key.2, "retiring a role of an ended generation");
            role.stop().await;
            if key.0 == RoleKind::TLog {
                self.ctx.disks.remove(key.1, key.2);
            }
        }
        self.refresh_roles(&hosted);
    }
}

async fn register_loop(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(REGISTER_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peer: Option<Peer> = None;
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(controller) = inner.find_controller().await else {
            continue;
        };
        let peer = match &peer {
            Some(p) if p.addr() == controller => p,
            _ => peer.insert(Peer::new(controller, inner.ctx.transport.clone())),
        };
        let request = Message::RegisterWorker(RegisterWorkerRequest {
            address: inner.address,
            roles: inner.roles(),
        });
        let sent = async { peer.client().await?.call(request).await };
        match tokio::time::timeout(REGISTER_INTERVAL * 5, sent).await {
            Ok(Ok(Message::RegisterWorkerReply)) => {}
            outcome => {
                tracing::debug!(%controller, ?outcome, "registration failed; asking who the controller is");
                *lock(&inner.controller) = None;
            }
        }
    }
}

async fn retire_loop(inner: Weak<Inner>) {
    let Some(coordinators) = inner.upgrade().map(|i| i.coordinators.clone()) else {
        return;
    };
    let mut seen = 0;
    loop {
        let watched = coordinators.watch_core_state(seen, RETIRE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        match watched {
            Ok((state, revision)) => {
                seen = revision;
                inner.retire(&state).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "no core state to retire roles by");
                drop(inner);
                tokio::time::sleep(RETIRE_INTERVAL).await;
            }
        }
    }
}
