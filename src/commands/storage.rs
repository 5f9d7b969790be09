//! `teamlog storage`: a storage server process, configured from the
//! cluster file; [`host`] also runs one inside a `teamlog server`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coordinator::client::CoordinatorClient;
use storage_server::generations::LogDiscovery;
use storage_server::heed_engine::HeedEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use tokio::net::TcpListener;

use crate::commands::roles::run;
use crate::commands::{shutdown_signal, start_metrics, Transports};
use cluster::ClusterFile;

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
    /// The most stored bytes (keys, values and a per-pair overhead) a
    /// second this server copies from a move's sources into one of its
    /// teams (0: no limit); the cluster file's `[distribution]
    /// move_bytes_per_sec` by default.
    #[arg(long, value_name = "BYTES")]
    pub move_rate: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// One storage server to run in this process.
pub struct Hosted {
    pub id: u64,
    pub data_dir: PathBuf,
    /// The cluster file's address for the server when `None`.
    pub listen: Option<SocketAddr>,
    pub window: WindowConfig,
    /// See [`StorageConfig::move_bytes_per_second`].
    pub move_bytes_per_second: Option<u64>,
}

/// LMDB's map is a reservation of address space, not of disk.
const STORAGE_MAP_SIZE: usize = 64 << 30;

pub async fn run_process(args: StorageArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    start_metrics(args.metrics).await?;
    let hosted = Hosted {
        id: args.id,
        data_dir: args.data_dir,
        listen: args.listen,
        window: WindowConfig {
            max_versions: args.window_versions,
            max_bytes: args.window_bytes,
        },
        move_bytes_per_second: args.move_rate,
    };
    let transports = Transports::of(&cluster, None)?;
    host(&cluster, hosted, &transports, shutdown).await
}

/// Runs storage server `hosted.id` until `shutdown`.
pub async fn host(
    cluster: &ClusterFile,
    hosted: Hosted,
    transports: &Transports,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let id = hosted.id;
    let entry = cluster
        .storage_servers
        .iter()
        .find(|s| s.id == id)
        .with_context(|| format!("no storage server {id} in the cluster file"))?;
    let addr = hosted.listen.unwrap_or(entry.address);
    let _lock = cluster::DataDirLock::acquire(&hosted.data_dir)?;
    let engine =
        HeedEngine::open(&hosted.data_dir.join("kv"), STORAGE_MAP_SIZE).with_context(|| {
            format!(
                "opening the storage engine in {}",
                hosted.data_dir.display()
            )
        })?;
    let logs = if cluster.is_recruited() {
        let coordinators =
            CoordinatorClient::new(&cluster.coordinator_addresses(), transports.client.clone())?
                .with_timeout(Duration::from_secs(1));
        LogDiscovery::Coordinated(Arc::new(coordinators))
    } else {
        LogDiscovery::Pinned {
            tlogs: cluster.tlog_addresses(),
            sequencer: cluster.sequencer_address()?,
        }
    };
    let mut config = StorageConfig::for_server(cluster, id, logs, hosted.window)?;
    config.transport = transports.client.clone();
    if let Some(rate) = hosted.move_bytes_per_second {
        config.move_bytes_per_second = Some(rate);
    }
    let server_config = transports.server.clone();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding storage server {id} to {addr}"))?;
    let service = StorageService::start(Arc::new(engine), config)?;
    tracing::info!(%addr, id, "storage server listening");
    run(listener, Arc::new(service), server_config, shutdown).await
}
