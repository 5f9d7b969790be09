//! `teamlog coordinator`: one of the cluster file's coordinators, holding
//! its share of the coordinated state in its data directory, and standing
//! for cluster controller; where the controller recruits the commit path,
//! the one holding the lease runs the recoveries. [`host`] also runs one
//! inside a `teamlog server`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use controller::recovery::RecoveryConfig;
use controller::{Controller, ControllerConfig};
use coordinator::candidacy::Candidacy;
use coordinator::client::CoordinatorClient;
use coordinator::disk::HeedDisk;
use coordinator::election::{ElectionConfig, Holder};
use coordinator::monitor::Watched;
use coordinator::monitoring::Monitoring;
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use proto::clock::SystemClock;
use proto::transport::serve;
use tokio::net::TcpListener;

use crate::commands::{shutdown_signal, start_metrics, Transports};
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
    start_metrics(args.metrics).await?;
    let transports = Transports::of(&cluster, None)?;
    host(&cluster, args.id, &args.data_dir, &transports, shutdown).await
}

/// Runs coordinator `id` of `cluster`, with its data in `data_dir`, until
/// `shutdown`.
pub async fn host(
    cluster: &ClusterFile,
    id: u64,
    data_dir: &Path,
    transports: &Transports,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = cluster.coordinator(id)?.address;
    let _lock = cluster::DataDirLock::acquire(data_dir)?;
    let disk = HeedDisk::open(data_dir)
        .with_context(|| format!("opening the coordinator store in {}", data_dir.display()))?;
    let mut config = CoordinatorConfig::new(id, cluster.coordinator_members());
    config.transport = transports.client.clone();
    let server_config = transports.server.clone();
    // Bind before raft starts, so the first votes find the peers listening.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding coordinator {id} to {addr}"))?;
    let service = CoordinatorService::start(&config, Arc::new(disk)).await?;
    // Until workers exist, the coordinators stand for cluster controller.
    let election = ElectionConfig::default();
    let client =
        CoordinatorClient::new(&cluster.coordinator_addresses(), config.transport.clone())?
            .with_timeout(Duration::from_millis(election.lease_ms / 2));
    let me = Holder {
        id,
        address: addr.to_string(),
    };
    let clock = Arc::new(SystemClock::default());
    let candidacy = Arc::new(Candidacy::start(client, me, election, clock.clone()));
    let monitoring = Monitoring::start(
        watched_processes(cluster),
        config.transport.clone(),
        candidacy.clone(),
        clock,
    );
    let mut service = service
        .with_candidacy(candidacy.clone())
        .with_monitoring(monitoring);
    if let Some(shape) = &cluster.generation {
        // While this process holds the lease, it recovers and runs the
        // cluster's generations.
        let recovery = RecoveryConfig {
            tlogs: shape.tlogs,
            replication: cluster.replication,
            proxies: shape.proxies,
        };
        let coordinators =
            CoordinatorClient::new(&cluster.coordinator_addresses(), config.transport.clone())?
                .with_timeout(Duration::from_secs(2));
        let controller_config = ControllerConfig::new(recovery, cluster, config.transport.clone())?;
        let controller = Controller::start(
            controller_config,
            candidacy,
            coordinators,
            Arc::new(SystemClock::default()),
        );
        service = service.with_controller(Arc::new(controller));
    }
    tracing::info!(%addr, id, "coordinator listening");
    serve(listener, Arc::new(service.clone()), server_config, shutdown).await?;
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every process of the cluster file, for the controller to watch.
fn watched_processes(cluster: &ClusterFile) -> Vec<(Watched, SocketAddr)> {
    let entry = |role: &str, id: u64, address: SocketAddr| {
        let watched = Watched {
            role: role.to_owned(),
            id,
            address: address.to_string(),
        };
        (watched, address)
    };
    let mut processes = Vec::new();
    for c in &cluster.coordinators {
        processes.push(entry("coordinator", c.id, c.address));
    }
    if let Some(sequencer) = &cluster.sequencer {
        processes.push(entry("sequencer", 0, sequencer.address));
    }
    for p in &cluster.proxies {
        processes.push(entry("proxy", p.id, p.address));
    }
    for (index, t) in cluster.tlogs.iter().enumerate() {
        processes.push(entry("tlog", index as u64, t.address));
    }
    for s in &cluster.storage_servers {
        processes.push(entry("storage", s.id, s.address));
    }
    processes
}
