//! `teamlog sequencer` and `teamlog proxy`: the commit path's processes,
//! configured from the cluster file, and what role processes share.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use proto::clock::SystemClock;
use proto::transport::{serve, ServerConfig, Service};
use proto::ProxyId;
use sequencer::service::{SequencerConfig, SequencerService, SequencerStart};
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
    /// One (the default) makes the fewest, largest batches, which a machine
    /// whose cores are the limit needs; more overlap round trips that are
    /// long next to the CPU a version costs.
    #[arg(long, default_value_t = 1)]
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

pub(crate) async fn run(
    listener: TcpListener,
    service: Arc<dyn Service>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve(listener, service, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
