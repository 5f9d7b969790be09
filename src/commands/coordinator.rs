//! `teamlog coordinator`: one of the cluster file's coordinators, holding
//! its share of the coordinated state in its data directory, and standing
//! for cluster controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coordinator::candidacy::Candidacy;
use coordinator::client::CoordinatorClient;
use coordinator::disk::HeedDisk;
use coordinator::election::{ElectionConfig, Holder};
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use proto::clock::SystemClock;
use proto::transport::serve;
use tokio::net::TcpListener;

use crate::commands::{shutdown_signal, start_metrics};
use cluster::ClusterFile;

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// This coordinator's id in the cluster file.
    #[arg(long)]
    pub id: u64,
    /// Directory for the coordinator's data; created if missing. It holds
    /// this coordinator's votes, which raft's safety rests on.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

pub async fn run(args: CoordinatorArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let cluster = ClusterFile::load(&args.cluster)?;
    let addr = cluster.coordinator(args.id)?.address;
    let _lock = cluster::DataDirLock::acquire(&args.data_dir)?;
    start_metrics(args.metrics).await?;
    let disk = HeedDisk::open(&args.data_dir).with_context(|| {
        format!(
            "opening the coordinator store in {}",
            args.data_dir.display()
        )
    })?;
    let mut config = CoordinatorConfig::new(args.id, cluster.coordinator_members());
    config.transport = cluster.client_config()?;
    let server_config = cluster.server_config()?;
    // Bind before raft starts, so the first votes find the peers listening.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding coordinator {} to {addr}", args.id))?;
    let service = CoordinatorService::start(&config, Arc::new(disk)).await?;
    // Until workers exist, the coordinators stand for cluster controller.
    let election = ElectionConfig::default();
    let client =
        CoordinatorClient::new(&cluster.coordinator_addresses(), config.transport.clone())?
            .with_timeout(Duration::from_millis(election.lease_ms / 2));
    let me = Holder {
        id: args.id,
        address: addr.to_string(),
    };
    let candidacy = Candidacy::start(client, me, election, Arc::new(SystemClock::default()));
    let service = service.with_candidacy(candidacy);
    tracing::info!(%addr, id = args.id, "coordinator listening");
    serve(listener, Arc::new(service.clone()), server_config, shutdown).await?;
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
