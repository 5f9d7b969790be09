//! The binary's commands that run a role process (`tlog`, `sequencer`,
//! `proxy`, `storage`) or talk to a running cluster (`client`, `assign`,
//! `status`), and what they share: signals and the metrics endpoint.

use std::net::SocketAddr;

use anyhow::Result;

pub mod client;
pub mod metrics;
pub mod roles;
pub mod status;
pub mod tlog;

/// Serves the metrics endpoint when the role was asked to (`--metrics`).
pub async fn start_metrics(addr: Option<SocketAddr>) -> Result<()> {
    if let Some(addr) = addr {
        crate::commands::metrics::start_endpoint(addr).await?;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
