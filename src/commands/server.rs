//! `teamlog server`: a worker. It hosts whatever the cluster controller
//! recruits for each generation (TLogs, the sequencer, proxies), each on
//! its own port of this process, and reopens its TLogs after a restart.
//! It may also host coordinators and storage servers of the cluster file
//! (`--coordinator`, `--storage`), so that a whole cluster can be one
//! process:
//!
//! ```text
//!  teamlog server --listen A ─┬─ worker at A ─▶ recruited TLogs, sequencer, proxies
//!   DATA_DIR                  ├─ coordinator ID at its address   (DATA_DIR/coordinator-ID)
//!                             └─ storage server ID at its address (DATA_DIR/storage-ID)
//! ```
//!
//! The roles call each other through the process's own network
//! (`proto::transport::local`), not a socket. They stop together on SIGINT
//! or SIGTERM; one that fails ends the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coordinator::client::CoordinatorClient;
use futures::future::BoxFuture;
use futures::FutureExt;
use proto::clock::SystemClock;
use proto::transport::local::LocalNetwork;
use proto::transport::net::TcpBinder;
use proto::transport::serve;
use storage_server::versioned::WindowConfig;
use tlog::server::TLogConfig;
use tokio::net::TcpListener;
use worker::{DirDisks, RoleContext, WorkerService};

use crate::commands::{
    coordinator as coordinator_role, shutdown_signal, start_metrics, storage, Transports,
};
use cluster::ClusterFile;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// Directory for the roles' data (the TLogs'); created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address the controller reaches this worker at; its roles listen on
    /// other ports of the same host.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Bytes of recent data each hosted TLog serves from memory.
    #[arg(long, default_value_t = 256 << 20)]
    pub tlog_memory_budget: u64,
    /// Size of one log segment file of a hosted TLog, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub tlog_segment_size: u64,
    /// Also host this coordinator of the cluster file (repeatable), on its
    /// address, with its data in DATA_DIR/coordinator-ID.
    #[arg(long = "coordinator", value_name = "ID")]
    pub coordinators: Vec<u64>,
    /// Also host this storage server of the cluster file (repeatable), on
    /// its address, with its data in DATA_DIR/storage-ID.
    #[arg(long = "storage", value_name = "ID")]
    pub storage: Vec<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let shutdown = shutdown_signal()?.shared();
    let cluster = ClusterFile::load(&args.cluster)?;
    if !cluster.is_recruited() {
        bail!(
            "{} pins its commit path; workers serve clusters whose controller recruits it ([generation])",
            args.cluster.display()
        );
    }
    let _lock = cluster::DataDirLock::acquire(&args.data_dir)?;
    start_metrics(args.metrics).await?;
    let transports = Transports::of(&cluster, Some(LocalNetwork::new()))?;
    let mut roles: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    for id in &args.coordinators {
        let data_dir = args.data_dir.join(format!("coordinator-{id}"));
        let (cluster, transports, shutdown) = (&cluster, &transports, shutdown.clone());
        roles.push(
            async move {
                coordinator_role::host(cluster, *id, &data_dir, transports, shutdown).await
            }
            .boxed(),
        );
    }
    for id in &args.storage {
        let hosted = storage::Hosted {
            id: *id,
            data_dir: args.data_dir.join(format!("storage-{id}")),
            listen: None,
            window: WindowConfig::default(),
            move_bytes_per_second: None,
        };
        roles.push(storage::host(&cluster, hosted, &transports, shutdown.clone()).boxed());
    }
    roles.push(run_worker(&args, &cluster, &transports, shutdown).boxed());
    futures::future::try_join_all(roles).await?;
    Ok(())
}

/// The worker itself, until `shutdown`.
async fn run_worker(
    args: &ServerArgs,
    cluster: &ClusterFile,
    transports: &Transports,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let Transports {
        client: transport,
        server,
    } = transports.clone();
    let mut tlog = TLogConfig::default();
    tlog.core.memory_budget = args.tlog_memory_budget;
    tlog.log.segment_size = args.tlog_segment_size;
    let ctx = RoleContext {
        disks: Arc::new(DirDisks::new(&args.data_dir)),
        binder: Arc::new(TcpBinder),
        clock: Arc::new(SystemClock::default()),
        cluster: cluster.clone(),
        transport: transport.clone(),
        server: server.clone(),
        tlog,
    };
    let coordinators = CoordinatorClient::new(&cluster.coordinator_addresses(), transport)?
        .with_timeout(Duration::from_secs(1));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the worker to {}", args.listen))?;
    let service = WorkerService::start(args.listen, ctx, coordinators)
        .await
        .context("starting the worker")?;
    tracing::info!(addr = %args.listen, "worker listening");
    serve(listener, Arc::new(service.clone()), server, shutdown).await?;
    service.shutdown().await;
    tracing::info!("worker stopped");
    Ok(())
}
