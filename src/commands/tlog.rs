//! `teamlog tlog`: one TLog process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cluster::tls_files::{self, TlsEntry};
use tlog::server::{TLogConfig, TLogProcess};

use crate::commands::{shutdown_signal, start_metrics};

#[derive(clap::Args, Debug)]
pub struct TLogArgs {
    /// Address to listen on, e.g. 127.0.0.1:4500 (port 0 picks one).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory for the log; created if missing. One TLog per directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Bytes of recent data served from memory; older data is read from disk.
    #[arg(long, default_value_t = 256 << 20)]
    pub memory_budget: u64,
    /// Size of one log segment file in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_size: u64,
    /// How long a commit waits for its predecessor before it fails.
    #[arg(long, default_value_t = 10_000)]
    pub commit_wait_timeout_ms: u64,
    /// Write the bound address to this file once listening (for tools and tests).
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Serve over mutual TLS: the cluster CA's certificate (PEM). Peers
    /// without a member certificate may then send client requests only.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This TLog's member certificate (PEM), signed by the cluster CA.
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// The member certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
}

impl TLogArgs {
    pub fn config(&self) -> Result<TLogConfig> {
        let mut config = TLogConfig::default();
        config.core.memory_budget = self.memory_budget;
        config.log.segment_size = self.segment_size;
        config.core.commit_wait_timeout_ms = self.commit_wait_timeout_ms;
        if let Some(ca) = &self.tls_ca {
            let entry = TlsEntry {
                ca: ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            };
            let settings = entry.settings().context("loading the TLS files")?;
            config.server.tls = tls_files::server_config(Some(&settings))?.tls;
        }
        Ok(config)
    }
}

pub async fn run_tlog(args: TLogArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    start_metrics(args.metrics).await?;
    let process = TLogProcess::start(args.listen, &args.data_dir, args.config()?)
        .await
        .with_context(|| format!("starting tlog in {}", args.data_dir.display()))?;
    let addr = process.local_addr;
    if let Some(path) = &args.address_file {
        cluster::write_atomically(path, addr.to_string().as_bytes())?;
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "tlog listening");
    process.serve(shutdown).await?;
    tracing::info!("tlog stopped");
    Ok(())
}
