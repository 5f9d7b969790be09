//! `teamlog server`: a worker. It hosts whatever the cluster controller
//! recruits for each generation (TLogs, the sequencer, proxies), each on
//! its own port of this process, and reopens its TLogs after a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coordinator::client::CoordinatorClient;
use proto::transport::serve;
use tlog::server::TLogConfig;
use tokio::net::TcpListener;
use worker::{RoleContext, WorkerService};

use crate::commands::{shutdown_signal, start_metrics};
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
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    if !cluster.is_recruited() {
        bail!(
            "{} pins its commit path; workers serve clusters whose controller recruits it ([generation])",
            args.cluster.display()
        );
    }
    let _lock = cluster::DataDirLock::acquire(&args.data_dir)?;
    start_metrics(args.metrics).await?;
    let transport = cluster.client_config()?;
    let server = cluster.server_config()?;
    let mut tlog = TLogConfig::default();
    tlog.core.memory_budget = args.tlog_memory_budget;
    tlog.log.segment_size = args.tlog_segment_size;
    let ctx = RoleContext {
        data_dir: args.data_dir.clone(),
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
    tracing::info!("stopped");
    Ok(())
}
