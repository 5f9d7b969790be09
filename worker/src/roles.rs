//! Starting the roles a worker hosts, each in this process on its own
//! port: a generation's TLog (over its log, `disks.rs`), its sequencer, its
//! proxies. Ports come from the context's [`Binder`], time from its
//! clock, so the same code runs on a real machine and in a simulation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster::ClusterFile;
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use proto::clock::Clock;
use proto::rpc::RoleKind;
use proto::shard_map::ShardMap;
use proto::transport::net::{Binder, Listener};
use proto::transport::{serve, ClientConfig, ServerConfig, Service};
use proto::{ProxyId, Version};
use sequencer::service::{SequencerConfig, SequencerService, SequencerStart};
use tlog::server::{TLogConfig, TLogService};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::disks::TLogDisks;
use crate::WorkerError;

/// How long a starting role waits for the roles it depends on (a proxy
/// for its TLogs).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every role of this worker is started with.
#[derive(Clone)]
pub struct RoleContext {
    /// Where the TLogs' logs are kept.
    pub disks: Arc<dyn TLogDisks>,
    /// Where roles listen.
    pub binder: Arc<dyn Binder>,
    pub clock: Arc<dyn Clock>,
    pub cluster: ClusterFile,
    /// How roles call other processes.
    pub transport: ClientConfig,
    /// How roles serve.
    pub server: ServerConfig,
    pub tlog: TLogConfig,
}

/// Why a role cannot serve, asked when the worker reports.
pub type ProblemProbe = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// A running role.
pub struct Started {
    pub kind: RoleKind,
    pub epoch: u64,
    pub id: u64,
    pub address: SocketAddr,
    pub problem: ProblemProbe,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Started {
    /// Stops serving and waits, briefly, for the role to let go of its
    /// port and directory.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Starts (`begin` given) or reopens a generation's TLog. A new one
/// starts over an empty log and begins its chain at `begin`.
pub async fn start_tlog(
    ctx: &RoleContext,
    epoch: u64,
    index: u64,
    begin: Option<Version>,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        WorkerError::Role(format!("tlog {epoch}/{index}: {what}: {e}"))
    };
    let opened = ctx.disks.open(epoch, index, begin.is_some())?;
    let service = TLogService::open(Arc::new(opened.store), &ctx.tlog, Arc::clone(&ctx.clock))
        .map_err(|e| failed("opening its log", &e))?;
    if let Some(begin) = begin {
        service
            .begin_at(begin)
            .await
            .map_err(|e| failed(&format!("beginning at {begin}"), &e))?;
    }
    let listener = bind(ctx, RoleKind::TLog, epoch, index, listen).await?;
    let address = listener.local_addr().map_err(|e| failed("listening", &e))?;
    ctx.disks.record_address(epoch, index, address)?;
    let problem: ProblemProbe = {
        let service = service.clone();
        // Locked, it takes no more commits: the controller watching its
        // generation recovers (a controller that lost its lease may have
        // locked it on its way out). An ended generation's TLogs are all
        // locked, and no controller watches them.
        Box::new(move || {
            let status = service.status();
            if status.poisoned {
                Some("poisoned by a failed write or sync".to_owned())
            } else if status.locked {
                Some("locked by a recovery: it takes no more commits".to_owned())
            } else {
                status.stalled
            }
        })
    };
    // The log stays locked for as long as the TLog serves.
    let lock = opened.lock;
    let mut started = serve_listener(
        ctx,
        RoleKind::TLog,
        epoch,
        index,
        Arc::new(service),
        listener,
        lock,
    )?;
    started.problem = problem;
    Ok(started)
}

/// Starts generation `epoch`'s sequencer, chaining on from `start_after`
/// with versions above `floor`.
pub async fn start_sequencer(
    ctx: &RoleContext,
    epoch: u64,
    (start_after, floor): (Version, Version),
    proxies: Vec<ProxyId>,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let config = SequencerConfig {
        proxies: proxies.into_iter().collect::<BTreeSet<_>>(),
        start: SequencerStart::AfterRecovery {
            version: start_after,
            floor,
            epoch,
        },
        resolve_wait_timeout: Duration::from_secs(10),
        startup_timeout: STARTUP_TIMEOUT,
        transport: ctx.transport.clone(),
    };
    let service = SequencerService::start(&config, Arc::clone(&ctx.clock))
        .await
        .map_err(|e| WorkerError::Role(format!("sequencer {epoch}: {e}")))?;
    serve_role(
        ctx,
        RoleKind::Sequencer,
        epoch,
        0,
        Arc::new(service),
        listen,
    )
    .await
}

/// What a generation's proxies start from, as its recovery recorded it.
pub struct ProxyStart {
    /// The shard map, as of `shards_version`.
    pub shards: ShardMap,
    pub shards_version: Version,
    /// The storage servers the generation leaves out of their teams.
    pub excluded_servers: BTreeSet<u64>,
}

/// Starts a proxy of generation `epoch`.
pub async fn start_proxy(
    ctx: &RoleContext,
    epoch: u64,
    id: ProxyId,
    sequencer: SocketAddr,
    tlogs: Vec<SocketAddr>,
    start: ProxyStart,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let topology = ctx
        .cluster
        .topology_for(tlogs.len())
        .without_servers(&start.excluded_servers);
    topology
        .check()
        .map_err(|e| WorkerError::Role(format!("proxy {epoch}/{id}: {e}")))?;
    // A team the generation drops must hold nothing, or its mutations
    // would go to TLogs that keep no stream for it.
    let unknown = start
        .shards
        .entries()
        .flat_map(|(_, assignment)| assignment.teams())
        .find(|team| !topology.is_storage_team(*team));
    if let Some(team) = unknown {
        return Err(WorkerError::Role(format!(
            "proxy {epoch}/{id}: the shard map names {team}, which generation {epoch} has no \
             server of"
        )));
    }
    let mut config = ProxyConfig::new(id, sequencer, tlogs, topology, start.shards);
    config.shards_version = start.shards_version;
    config.transport = ctx.transport.clone();
    let service = ProxyService::start(config, Arc::clone(&ctx.clock), STARTUP_TIMEOUT)
        .await
        .map_err(|e| WorkerError::Role(format!("proxy {epoch}/{id}: {e}")))?;
    serve_role(ctx, RoleKind::Proxy, epoch, id.0, Arc::new(service), listen).await
}

async fn serve_role(
    ctx: &RoleContext,
    kind: RoleKind,
    epoch: u64,
    id: u64,
    service: Arc<dyn Service>,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let listener = bind(ctx, kind, epoch, id, listen).await?;
    serve_listener(ctx, kind, epoch, id, service, listener, ())
}

async fn bind(
    ctx: &RoleContext,
    kind: RoleKind,
    epoch: u64,
    id: u64,
    listen: SocketAddr,
) -> Result<Listener, WorkerError> {
    ctx.binder
        .bind(listen)
        .await
        .map_err(|e| WorkerError::Role(format!("{kind} {epoch}/{id}: binding {listen}: {e}")))
}

/// Serves `service` on `listener` until the role is stopped, holding
/// `held` until then.
fn serve_listener<H: Send + 'static>(
    ctx: &RoleContext,
    kind: RoleKind,
    epoch: u64,
    id: u64,
    service: Arc<dyn Service>,
    listener: Listener,
    held: H,
) -> Result<Started, WorkerError> {
    let address = listener
        .local_addr()
        .map_err(|e| WorkerError::Role(e.to_string()))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = ctx.server.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = serve(listener, service, server, shutdown).await {
            tracing::warn!(%kind, epoch, id, error = %e, "role stopped serving");
        }
        drop(held);
    });
    tracing::info!(%kind, epoch, id, %address, "role hosted");
    Ok(Started {
        kind,
        epoch,
        id,
        address,
        problem: Box::new(|| None),
        stop: Some(stop),
        task,
    })
}
