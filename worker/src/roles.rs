//! Starting the roles a worker hosts, each in this process on its own
//! port: a generation's TLog (over its own directory), its sequencer, its
//! proxies.
//!
//! ```text
//!  DATA_DIR/tlog-<epoch>-<index>/   log/ (the TLog's segments), address (where it listens)
//! ```
//!
//! A TLog keeps its address in its directory, so that a worker restarted
//! after a crash reopens it where the core state says it is.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cluster::ClusterFile;
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use proto::clock::SystemClock;
use proto::rpc::RoleKind;
use proto::shard_map::ShardMap;
use proto::transport::{serve, ClientConfig, ServerConfig, Service};
use proto::{ProxyId, Version};
use sequencer::service::{SequencerConfig, SequencerService, SequencerStart};
use tlog::server::{TLogConfig, TLogProcess};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::WorkerError;

/// How long a starting role waits for the roles it depends on (a proxy
/// for its TLogs).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every role of this worker is started with.
#[derive(Clone)]
pub struct RoleContext {
    pub data_dir: PathBuf,
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
    /// The TLog's directory, removed when its generation retires.
    pub dir: Option<PathBuf>,
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

/// A TLog's directory for generation `epoch`, index `index`.
pub fn tlog_dir(data_dir: &Path, epoch: u64, index: u64) -> PathBuf {
    data_dir.join(format!("tlog-{epoch}-{index}"))
}

/// The epoch and index a TLog directory's name gives.
pub fn parse_tlog_dir(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("tlog-")?;
    let (epoch, index) = rest.split_once('-')?;
    Some((epoch.parse().ok()?, index.parse().ok()?))
}

/// Starts (`begin` given) or reopens a generation's TLog. A new one
/// starts in an empty directory and begins its chain at `begin`.
pub async fn start_tlog(
    ctx: &RoleContext,
    epoch: u64,
    index: u64,
    begin: Option<Version>,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let dir = tlog_dir(&ctx.data_dir, epoch, index);
    let mut config = ctx.tlog.clone();
    config.server = ctx.server.clone();
    let process = TLogProcess::start(listen, &dir, config)
        .await
        .map_err(|e| {
            WorkerError::Role(format!("tlog {epoch}/{index} in {}: {e}", dir.display()))
        })?;
    if let Some(begin) = begin {
        process.service.begin_at(begin).await.map_err(|e| {
            WorkerError::Role(format!("tlog {epoch}/{index} begin at {begin}: {e}"))
        })?;
    }
    let address = process.local_addr;
    cluster::write_atomically(&dir.join("address"), address.to_string().as_bytes())
        .map_err(|e| WorkerError::Role(e.to_string()))?;
    let service = process.service.clone();
    let problem: ProblemProbe = Box::new(move || {
        let status = service.status();
        if status.poisoned {
            Some("poisoned by a failed write or sync".to_owned())
        } else {
            status.stalled
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = process.serve(shutdown).await {
            tracing::warn!(epoch, index, error = %e, "tlog stopped serving");
        }
    });
    tracing::info!(epoch, index, %address, "tlog hosted");
    Ok(Started {
        kind: RoleKind::TLog,
        epoch,
        id: index,
        address,
        problem,
        dir: Some(dir),
        stop: Some(stop),
        task,
    })
}

/// The address a TLog directory says its TLog listened on.
pub fn stored_address(dir: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(dir.join("address"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub async fn start_sequencer(
    ctx: &RoleContext,
    epoch: u64,
    start_after: Version,
    proxies: Vec<ProxyId>,
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let config = SequencerConfig {
        proxies: proxies.into_iter().collect::<BTreeSet<_>>(),
        start: SequencerStart::AfterRecovery {
            version: start_after,
            epoch,
        },
        resolve_wait_timeout: Duration::from_secs(10),
        startup_timeout: STARTUP_TIMEOUT,
        transport: ctx.transport.clone(),
    };
    let service = SequencerService::start(&config, Arc::new(SystemClock::default()))
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

/// Starts a proxy of generation `epoch` routing by `shards`, the shard map
/// as of the version given with it.
pub async fn start_proxy(
    ctx: &RoleContext,
    epoch: u64,
    id: ProxyId,
    sequencer: SocketAddr,
    tlogs: Vec<SocketAddr>,
    (shards, shards_version): (ShardMap, Version),
    listen: SocketAddr,
) -> Result<Started, WorkerError> {
    let topology = ctx.cluster.topology_for(tlogs.len());
    let mut config = ProxyConfig::new(id, sequencer, tlogs, topology, shards);
    config.shards_version = shards_version;
    config.transport = ctx.transport.clone();
    let service = ProxyService::start(config, Arc::new(SystemClock::default()), STARTUP_TIMEOUT)
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
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| WorkerError::Role(format!("{kind} {epoch}/{id}: binding {listen}: {e}")))?;
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
    });
    tracing::info!(%kind, epoch, id, %address, "role hosted");
    Ok(Started {
        kind,
        epoch,
        id,
        address,
        problem: Box::new(|| None),
        dir: None,
        stop: Some(stop),
        task,
    })
}
