//! `teamlog sequencer` and `teamlog proxy`: the commit path's processes,
//! configured from the cluster file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use commit_proxy::sequencer_service::{SequencerConfig, SequencerService};
use proto::clock::SystemClock;
use proto::transport::{serve, ServerConfig, Service};
use proto::ProxyId;
use tokio::net::TcpListener;

use crate::cluster::ClusterFile;
use crate::process::shutdown_signal;

/// How long a starting role waits for the processes it depends on.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct SequencerArgs {
    #[arg(long)]
    pub cluster: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// This proxy's id in the cluster file.
    #[arg(long)]
    pub id: u64,
}

pub async fn run_sequencer(args: SequencerArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let addr = cluster.sequencer.address;
    // Bind first, so clients can connect (and wait) while the TLogs are asked.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the sequencer to {addr}"))?;
    let config = SequencerConfig {
        proxies: cluster.proxy_ids(),
        tlogs: cluster.tlog_addresses(),
        resolve_wait_timeout: Duration::from_secs(10),
        startup_timeout: STARTUP_TIMEOUT,
    };
    let service = SequencerService::start(&config, Arc::new(SystemClock::default())).await?;
    tracing::info!(%addr, last_version = %service.last_version(), "sequencer and resolver listening");
    run(listener, Arc::new(service)).await
}

pub async fn run_proxy(args: ProxyArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let entry = cluster.proxy(args.id)?;
    let addr = entry.address;
    let config = ProxyConfig::new(
        ProxyId(args.id),
        cluster.sequencer.address,
        cluster.tlog_addresses(),
        cluster.topology(),
        cluster.shard_map()?,
    );
    let service = ProxyService::start(config, STARTUP_TIMEOUT).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding proxy {} to {addr}", args.id))?;
    tracing::info!(%addr, id = args.id, "commit proxy listening");
    run(listener, Arc::new(service)).await
}

async fn run(listener: TcpListener, service: Arc<dyn Service>) -> Result<()> {
    serve(
        listener,
        service,
        ServerConfig::default(),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
