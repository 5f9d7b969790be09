//! `teamlog sequencer` and `teamlog proxy`: the commit path's processes,
//! configured from the cluster file.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use coordinator::client::CoordinatorClient;
use proto::clock::SystemClock;
use proto::transport::{serve, ServerConfig, Service};
use proto::{ProxyId, StorageServerId, StorageTeamId};
use sequencer::service::{SequencerConfig, SequencerService, SequencerStart};
use storage_server::generations::LogDiscovery;
use storage_server::heed_engine::HeedEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use tokio::net::TcpListener;

use crate::commands::{shutdown_signal, start_metrics};
use cluster::ClusterFile;

/// How long a starting role waits for the processes it depends on.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping sequencer or proxy waits for what it has out to
/// commit, so that a clean stop leaves no hole in the version chain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct SequencerArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub struct StorageArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// This server's id in the cluster file.
    #[arg(long)]
    pub id: u64,
    /// Directory for the server's data; created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on; the cluster file's address for this server by default.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Versions kept in memory before they are flushed (about 1,000,000 a second).
    #[arg(long, default_value_t = 5_000_000)]
    pub window_versions: u64,
    /// Bytes of recent versions kept in memory before they are flushed.
    #[arg(long, default_value_t = 64 << 20)]
    pub window_bytes: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// This proxy's id in the cluster file.
    #[arg(long)]
    pub id: u64,
    /// While other batches are in flight, how long a new batch waits for
    /// more commits (microseconds; 0 takes what is queued).
    #[arg(long, default_value_t = 0)]
    pub batch_interval_us: u64,
    /// Batches in flight at once; while all are, commits queue into the next.
    #[arg(long, default_value_t = 8)]
    pub max_batches_in_flight: usize,
    /// Refuse commits to a team while its storage servers leave more than
    /// this many bytes on a TLog not yet durable (admission control).
    #[arg(long, default_value_t = commit_proxy::proxy::DEFAULT_MAX_TEAM_BACKLOG_BYTES)]
    pub max_team_backlog_bytes: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

pub async fn run_sequencer(args: SequencerArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    let addr = cluster.sequencer_address()?;
    start_metrics(args.metrics).await?;
    // Bind first, so clients can connect (and wait) while the TLogs are asked.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the sequencer to {addr}"))?;
    let config = SequencerConfig {
        proxies: cluster.proxy_ids(),
        start: SequencerStart::AfterTLogs(cluster.tlog_addresses()),
        resolve_wait_timeout: Duration::from_secs(10),
        startup_timeout: STARTUP_TIMEOUT,
        transport: cluster.client_config()?,
    };
    let server_config = cluster.server_config()?;
    let service = SequencerService::start(&config, Arc::new(SystemClock::default())).await?;
    tracing::info!(%addr, last_version = %service.last_version(), "sequencer and resolver listening");
    let draining = service.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("stopping: waiting for the versions out to commit");
        draining.drain(DRAIN_TIMEOUT).await;
    };
    run(listener, Arc::new(service), server_config, shutdown).await
}

pub async fn run_proxy(args: ProxyArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    let entry = cluster.proxy(args.id)?;
    let addr = entry.address;
    start_metrics(args.metrics).await?;
    let mut config = ProxyConfig::new(
        ProxyId(args.id),
        cluster.sequencer_address()?,
        cluster.tlog_addresses(),
        cluster.topology(),
        cluster.shard_map()?,
    );
    config.batch_interval = Duration::from_micros(args.batch_interval_us);
    config.max_batches_in_flight = args.max_batches_in_flight.max(1);
    config.max_team_backlog_bytes = args.max_team_backlog_bytes;
    config.transport = cluster.client_config()?;
    let server_config = cluster.server_config()?;
    let service =
        ProxyService::start(config, Arc::new(SystemClock::default()), STARTUP_TIMEOUT).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding proxy {} to {addr}", args.id))?;
    tracing::info!(%addr, id = args.id, "commit proxy listening");
    let draining = service.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("stopping: finishing the batches in flight");
        draining.drain(DRAIN_TIMEOUT).await;
    };
    run(listener, Arc::new(service), server_config, shutdown).await
}

/// LMDB's map is a reservation of address space, not of disk.
const STORAGE_MAP_SIZE: usize = 64 << 30;

pub async fn run_storage(args: StorageArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    let entry = cluster
        .storage_servers
        .iter()
        .find(|s| s.id == args.id)
        .with_context(|| format!("no storage server {} in the cluster file", args.id))?;
    let addr = args.listen.unwrap_or(entry.address);
    let _lock = cluster::DataDirLock::acquire(&args.data_dir)?;
    start_metrics(args.metrics).await?;
    let engine = HeedEngine::open(&args.data_dir.join("kv"), STORAGE_MAP_SIZE)
        .with_context(|| format!("opening the storage engine in {}", args.data_dir.display()))?;
    let teams = cluster
        .teams
        .iter()
        .filter(|t| t.servers.contains(&args.id))
        .map(|t| StorageTeamId(t.id))
        .collect();
    let address_of = |id: u64| {
        let entry = cluster.storage_servers.iter().find(|s| s.id == id)?;
        Some((StorageServerId(id), entry.address))
    };
    let peers = cluster
        .teams
        .iter()
        .filter(|t| t.servers.contains(&args.id))
        .map(|t| {
            let others = t.servers.iter().filter(|s| **s != args.id);
            (
                StorageTeamId(t.id),
                others.filter_map(|s| address_of(*s)).collect(),
            )
        })
        .collect();
    let logs = if cluster.is_recruited() {
        let coordinators =
            CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?
                .with_timeout(Duration::from_secs(1));
        LogDiscovery::Coordinated(Arc::new(coordinators))
    } else {
        LogDiscovery::Pinned {
            tlogs: cluster.tlog_addresses(),
            sequencer: cluster.sequencer_address()?,
        }
    };
    let config = StorageConfig {
        id: StorageServerId(args.id),
        private_team: StorageTeamId(entry.private_team),
        teams,
        shards: cluster.shard_map()?,
        logs,
        replication: cluster.replication,
        window: WindowConfig {
            max_versions: args.window_versions,
            max_bytes: args.window_bytes,
        },
        read_wait: Duration::from_secs(1),
        transport: cluster.client_config()?,
        peers,
    };
    let server_config = cluster.server_config()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding storage server {} to {addr}", args.id))?;
    let service = StorageService::start(Arc::new(engine), config)?;
    tracing::info!(%addr, id = args.id, "storage server listening");
    run(listener, Arc::new(service), server_config, shutdown).await
}

async fn run(
    listener: TcpListener,
    service: Arc<dyn Service>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve(listener, service, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
