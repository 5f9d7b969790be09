//! `teamlog bench recovery`: how long commits stop when a process dies.
//! Over a local cluster whose controller recruits the commit path, it
//! kills one process with SIGKILL, times the first acknowledged commit
//! issued after the kill and the moment a read at its version returns it,
//! relaunches the process, waits for the cluster to settle, and does it
//! again, for each role asked.
//!
//! ```text
//!  prober: commit, commit, … ──kill -9 victim── commit ✗ … commit ✓   kill → first ✓ = "commit"
//!                                                   read at its version ✗ … ✓   kill → ✓ = "readable"
//!  victims: the worker hosting a TLog │ the sequencer │ a proxy of the current generation,
//!           the coordinator hosting the controller, another coordinator
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use client::Client;
use proto::rpc::RoleKind;
use proto::{Mutation, Version};
use serde::Serialize;
use testkit::{ClusterSpec, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct RecoveryBenchArgs {
    /// Directory on the disk to use; a temporary one under it is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Kills of each role.
    #[arg(long, default_value_t = 50)]
    pub kills: usize,
    /// The roles to kill, comma separated: tlog, sequencer, proxy,
    /// controller, coordinator.
    #[arg(
        long,
        default_value = "tlog,sequencer,proxy,controller,coordinator",
        value_delimiter = ','
    )]
    pub roles: Vec<String>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct RoleFigures {
    role: String,
    kills: usize,
    /// Kill to the first acknowledged commit.
    commit: Quantiles,
    /// Kill to a read of that commit's write at its version.
    readable: Quantiles,
}

#[derive(Serialize)]
struct Quantiles {
    median_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            self.median_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// How long one kill may stop commits before the bench gives up.
const GIVE_UP: Duration = Duration::from_secs(60);

pub async fn run(args: RecoveryBenchArgs) -> Result<()> {
    let args = &args;
    super::in_temp_dir(&args.dir, |dir| async move { measure(args, &dir).await }).await
}

async fn measure(args: &RecoveryBenchArgs, dir: &std::path::Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = ClusterSpec {
        coordinators: 3,
        workers: 4,
        logs_in_dir: true,
        ..ClusterSpec::default()
    };
    let mut local = LocalCluster::start(&exe, &dir.join("cluster"), &spec).await?;
    let client = Client::new(&local.cluster)?;
    let mut figures = Vec::new();
    for role in &args.roles {
        let mut commits = Vec::with_capacity(args.kills);
        let mut reads = Vec::with_capacity(args.kills);
        for kill in 0..args.kills {
            settle(&local, &client).await?;
            let stopped = kill_one(&mut local, role).await?;
            let probe = first_commit_after(&client, stopped).await?;
            commits.push(probe.took);
            reads.push(first_read_of(&client, &probe, stopped).await?);
            relaunch(&mut local, role).await?;
            if (kill + 1) % 10 == 0 {
                println!("{role}: {} kills", kill + 1);
            }
        }
        let row = RoleFigures {
            role: role.clone(),
            kills: commits.len(),
            commit: quantiles(commits),
            readable: quantiles(reads),
        };
        println!(
            "{:<12} kills {:>3}  commit    {}\n{:<12}            readable  {}",
            row.role, row.kills, row.commit, "", row.readable
        );
        figures.push(row);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&figures)?)?;
    }
    local.stop().await?;
    Ok(())
}

/// Waits until the cluster serves a commit, with every process running
/// and every worker heard by the controller.
async fn settle(local: &LocalCluster, client: &Client) -> Result<()> {
    local.wait_recovered(GIVE_UP).await?;
    local.wait_workers_heard(GIVE_UP).await?;
    first_commit_after(client, Instant::now()).await?;
    Ok(())
}

/// Kills a process playing `role`; returns when it was killed.
async fn kill_one(local: &mut LocalCluster, role: &str) -> Result<Instant> {
    let epoch = local.wait_recovered(GIVE_UP).await?;
    let kind = match role {
        "tlog" => Some(RoleKind::TLog),
        "sequencer" => Some(RoleKind::Sequencer),
        "proxy" => Some(RoleKind::Proxy),
        "controller" | "coordinator" => None,
        other => bail!("no role {other:?}: tlog, sequencer, proxy, controller or coordinator"),
    };
    if let Some(kind) = kind {
        let i = local
            .worker_hosting(kind, epoch)
            .await?
            .with_context(|| format!("no worker hosts a {kind} of generation {epoch}"))?;
        let worker = local.workers[i].take().context("a live worker")?;
        let killed = Instant::now();
        worker.kill9().await?;
        return Ok(killed);
    }
    let controller = local.controller().await?.context("no controller")?;
    let id = if role == "controller" {
        controller
    } else {
        *local
            .coordinators
            .keys()
            .find(|id| **id != controller)
            .context("another coordinator")?
    };
    let process = local
        .coordinators
        .get_mut(&id)
        .and_then(Option::take)
        .context("a live coordinator")?;
    let killed = Instant::now();
    process.kill9().await?;
    Ok(killed)
}

/// Starts again whatever `kill_one` killed.
async fn relaunch(local: &mut LocalCluster, role: &str) -> Result<()> {
    if matches!(role, "controller" | "coordinator") {
        let ids: Vec<u64> = local
            .coordinators
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let process = local.start_coordinator(id).await?;
            local.coordinators.insert(id, Some(process));
        }
        return Ok(());
    }
    for i in 0..local.workers.len() {
        if local.workers[i].is_none() {
            local.workers[i] = Some(local.start_worker(i).await?);
        }
    }
    Ok(())
}

/// The first acknowledged commit after a kill: what it wrote, at which
/// version, and how long after the kill.
struct Probe {
    key: Bytes,
    value: Bytes,
    version: Version,
    took: Duration,
}

/// The first acknowledged commit issued after `since`.
async fn first_commit_after(client: &Client, since: Instant) -> Result<Probe> {
    let mut n = 0u64;
    loop {
        n += 1;
        let key = Bytes::from(format!("probe-{}", n % 16));
        let value = Bytes::from(format!("{n}-{:?}", since.elapsed()));
        let set = Mutation::SetValue {
            key: key.clone(),
            value: value.clone(),
        };
        if let Ok(version) = client.commit(vec![set]).await {
            return Ok(Probe {
                key,
                value,
                version,
                took: since.elapsed(),
            });
        }
        if since.elapsed() > GIVE_UP {
            bail!("no commit within {GIVE_UP:?} of the kill");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The time from `since` until a read at the probe's version returns
/// what it wrote.
async fn first_read_of(client: &Client, probe: &Probe, since: Instant) -> Result<Duration> {
    loop {
        match client.get(&probe.key, probe.version).await {
            Ok(Some(value)) if value == probe.value => return Ok(since.elapsed()),
            Ok(other) => bail!(
                "a read at {} found {other:?}, not the value acknowledged there",
                probe.version
            ),
            Err(_) if since.elapsed() > GIVE_UP => {
                bail!(
                    "the commit at {} was not readable within {GIVE_UP:?} of the kill",
                    probe.version
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn quantiles(mut times: Vec<Duration>) -> Quantiles {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times.get(i).copied().map_or(0.0, ms)
    };
    Quantiles {
        median_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: times.last().copied().map_or(0.0, ms),
    }
}
