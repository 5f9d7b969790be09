//! Running a role as a process: arguments, signals, clean shutdown, and the
//! optional metrics endpoint (`--metrics ADDR`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tlog::server::{TLogConfig, TLogProcess};

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
}

impl TLogArgs {
    pub fn config(&self) -> TLogConfig {
        let mut config = TLogConfig::default();
        config.core.memory_budget = self.memory_budget;
        config.log.segment_size = self.segment_size;
        config.core.commit_wait_timeout_ms = self.commit_wait_timeout_ms;
        config
    }
}

pub async fn run_tlog(args: TLogArgs) -> Result<()> {
    start_metrics(args.metrics).await?;
    let process = TLogProcess::start(args.listen, &args.data_dir, args.config())
        .await
        .with_context(|| format!("starting tlog in {}", args.data_dir.display()))?;
    let addr = process.local_addr;
    if let Some(path) = &args.address_file {
        write_atomically(path, addr.to_string().as_bytes())?;
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "tlog listening");
    process.serve(shutdown_signal()).await?;
    tracing::info!("tlog stopped");
    Ok(())
}

/// Serves the metrics endpoint when the role was asked to (`--metrics`).
pub async fn start_metrics(addr: Option<SocketAddr>) -> Result<()> {
    if let Some(addr) = addr {
        crate::metrics::start_endpoint(addr).await?;
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

/// Writes a file so that readers see either nothing or all of it.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A child process of the teamlog binary running one role, listening on `addr`.
pub struct ChildProcess {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ChildProcess {
    /// Starts `exe tlog` (the teamlog binary) on 127.0.0.1:0 in `data_dir`
    /// and waits until it listens.
    pub async fn spawn(
        exe: &std::path::Path,
        data_dir: &std::path::Path,
        extra_args: &[&str],
    ) -> Result<ChildProcess> {
        Self::spawn_tlog_at(exe, data_dir, "127.0.0.1:0".parse()?, extra_args).await
    }

    /// Starts `exe tlog` listening on `listen` in `data_dir` and waits until
    /// it listens.
    pub async fn spawn_tlog_at(
        exe: &std::path::Path,
        data_dir: &std::path::Path,
        listen: SocketAddr,
        extra_args: &[&str],
    ) -> Result<ChildProcess> {
        std::fs::create_dir_all(data_dir)?;
        let address_file = data_dir.join("address");
        let _ = std::fs::remove_file(&address_file);
        let mut child = tokio::process::Command::new(exe)
            .arg("tlog")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--address-file")
            .arg(&address_file)
            .args(extra_args)
            .kill_on_drop(true)
            .spawn()
            .context("starting teamlog tlog")?;
        let addr = wait_until(&mut child, "tlog", || {
            let text = std::fs::read_to_string(&address_file).ok()?;
            text.trim().parse().ok()
        })
        .await?;
        Ok(ChildProcess { addr, child })
    }

    /// Starts `exe ARGS` for a role that listens on `addr`, and waits until
    /// that address accepts connections.
    pub async fn spawn_listening(
        exe: &std::path::Path,
        args: &[std::ffi::OsString],
        addr: SocketAddr,
    ) -> Result<ChildProcess> {
        let role = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = tokio::process::Command::new(exe)
            .args(args)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting teamlog {role}"))?;
        wait_until(&mut child, &role, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(ChildProcess { addr, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling a child process this struct owns.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let status = self.child.wait().await?;
        if !status.success() {
            anyhow::bail!("process exited with {status}");
        }
        Ok(())
    }
}

/// Polls `ready` until it yields, the child exits, or 30 s pass.
async fn wait_until<T>(
    child: &mut tokio::process::Child,
    role: &str,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("teamlog {role} exited during start-up: {status}");
        }
        if Instant::now() > deadline {
            anyhow::bail!("teamlog {role} did not start listening within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Addresses on 127.0.0.1 that were free a moment ago, for a cluster file.
pub fn free_local_addrs(count: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<_>>()?)
}
