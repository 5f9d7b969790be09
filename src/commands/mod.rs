//! The binary's commands that run a role process (`coordinator`, `server`,
//! `tlog`, `sequencer`, `proxy`, `storage`) or talk to a running cluster (`client`, `assign`,
//! `move`, `scale`, `exclude`, `include`, `status`) or makes its TLS files (`tls-init`), and what they share:
//! signals, the metrics endpoint and the transports a hosted role uses.

use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;

use anyhow::{Context, Result};
use cluster::ClusterFile;
use proto::transport::local::LocalNetwork;
use proto::{ClientConfig, ServerConfig};

pub mod client;
pub mod coordinator;
pub mod exclude;
pub mod metrics;
pub mod moves;
pub mod roles;
pub mod scale;
pub mod server;
pub mod sim;
pub mod status;
pub mod storage;
pub mod tlog;
pub mod tls;

/// How a hosted role calls others and serves: with the cluster's TLS, and,
/// in a process that hosts several roles, through the process's own
/// network to the others.
#[derive(Clone, Debug)]
pub struct Transports {
    pub client: ClientConfig,
    pub server: ServerConfig,
}

impl Transports {
    pub fn of(cluster: &ClusterFile, local: Option<Arc<LocalNetwork>>) -> Result<Transports> {
        let mut client = cluster.client_config()?;
        let mut server = cluster.server_config()?;
        client.local.clone_from(&local);
        server.local = local;
        Ok(Transports { client, server })
    }
}

/// Serves the metrics endpoint when the role was asked to (`--metrics`).
pub async fn start_metrics(addr: Option<SocketAddr>) -> Result<()> {
    if let Some(addr) = addr {
        crate::commands::metrics::start_endpoint(addr).await?;
    }
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now, and returns a future that
/// resolves when either signal arrives. Call it before the process says it
/// is ready (listens, writes its address), so that a signal sent right
/// after that stops it cleanly instead of killing it.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
