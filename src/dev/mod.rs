//! `teamlog dev`: a whole local cluster — 3 coordinators (one of them the
//! cluster controller), a worker on which the controller recruits each
//! generation's sequencer with its resolver, a proxy and 3 TLogs
//! (replication 2), and 6 storage servers in 3 teams of 2, each with its
//! private team — in a directory it creates or is given; with
//! `--workload`, a generated (or given) trace replayed against it, checked
//! against the trace's model at the end.
//!
//! By default the cluster is one `teamlog server` process, its roles
//! calling each other without sockets: on one machine that commits the
//! most (BENCHMARKS.md). `--processes` runs each coordinator, worker (3)
//! and storage server as a process of its own, so that killing one shows
//! the cluster recovering; `--pinned` runs the sequencer, proxies and
//! TLogs as processes of their own, fixed by the cluster file.
//!
//! ```text
//!  dev ─spawns─▶ one server: worker + coordinators ×3 + storage ×6 ─▶ first recovery (logs in DIR/logs/)
//!      --processes: coordinator ×3 ─▶ worker ×3 ─▶ storage ×6 ─▶ first recovery
//!      --pinned:    tlog ×3 ─▶ sequencer ─▶ proxy ─▶ storage ×6
//!      --workload:  generate DIR/trace.jsonl ─▶ replay ─▶ DIR/result.json, DIR/plot.svg
//!      Ctrl-C (or the workload's end): stop everything cleanly
//! ```
//!
//! Run again on the same directory, it restarts the same cluster with its
//! data.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::commands::shutdown_signal;
use crate::replay::generate::{GenerateArgs, Skew};
use crate::replay::{ReplayArgs, ReplayPath, TLogStoreKind};
use testkit::{ClusterSpec, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Data dir; a fresh temporary one (removed at the end) when not given.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Replay a workload against the cluster and check the data at the end.
    #[arg(long)]
    pub workload: bool,
    /// The trace to replay; generated into the data dir when not given.
    #[arg(long, requires = "workload")]
    pub trace: Option<PathBuf>,
    /// Seconds of generated workload.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Events per second of generated workload.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Keep the cluster running after the workload, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Run the cluster over plain TCP, trusting every peer, instead of
    /// mutual TLS with a CA made in the data dir.
    #[arg(long)]
    pub no_tls: bool,
    /// Coordinators (1, 3 or 5); 3 by default. With `--pinned`, none
    /// unless asked: nothing there relies on them.
    #[arg(long)]
    pub coordinators: Option<usize>,
    /// Workers, on which the controller recruits each generation (with
    /// `--processes`).
    #[arg(long, default_value_t = 3, requires = "processes")]
    pub workers: usize,
    /// Commit proxies. Each makes versions of its own, and every version
    /// costs each TLog a sync and each storage server a peek, so where the
    /// cores are the limit one proxy commits the most.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub proxies: usize,
    /// Pin the sequencer, proxies and TLogs in the cluster file, each its
    /// own process, instead of recruiting them on workers: no recovery.
    #[arg(long)]
    pub pinned: bool,
    /// Run each coordinator, worker and storage server as a process of its
    /// own instead of the whole cluster as one: any of them can be killed
    /// and the cluster recovers without it.
    #[arg(long, conflicts_with = "pinned")]
    pub processes: bool,
    /// Serve the cluster's Prometheus metrics at http://ADDR/metrics (the
    /// one process's, so every role's).
    #[arg(long, conflicts_with_all = ["pinned", "processes"])]
    pub metrics: Option<std::net::SocketAddr>,
}

impl DevArgs {
    /// Whether the whole cluster is one process.
    fn one_process(&self) -> bool {
        !self.pinned && !self.processes
    }
}

/// The generated workload's seed: fixed, so a rerun on the same directory
/// replays the same trace and its check still holds.
const WORKLOAD_SEED: u64 = 42;

pub async fn run(args: DevArgs) -> Result<()> {
    let (_temp, dir) = match args.data_dir.clone() {
        Some(dir) => (None, dir),
        None => {
            let temp = tempfile::tempdir().context("creating a temporary data dir")?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let shutdown = shutdown_signal()?;
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = ClusterSpec {
        coordinators: args.coordinators.unwrap_or(if args.pinned { 0 } else { 3 }),
        workers: if args.pinned {
            0
        } else if args.one_process() {
            1
        } else {
            args.workers.max(1)
        },
        hosted_by_first_worker: args.one_process(),
        proxies: args.proxies,
        shard_begins: vec!["h".into(), "p".into()],
        logs_in_dir: true,
        tls: !args.no_tls,
        worker_args: args
            .metrics
            .map(|addr| vec!["--metrics".to_string(), addr.to_string()])
            .unwrap_or_default(),
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(&exe, &dir, &spec).await?;
    print_cluster(&local, args.one_process());
    if let Some(addr) = args.metrics {
        println!("  metrics               http://{addr}/metrics");
    }
    let outcome = tokio::select! {
        outcome = serve(&local, &args, &dir) => outcome,
        () = shutdown => {
            println!("interrupted: stopping the cluster");
            Ok(())
        }
    };
    local.stop().await?;
    println!("stopped");
    outcome
}

fn print_cluster(local: &LocalCluster, one_process: bool) {
    let cluster = &local.cluster;
    println!("local cluster in {}", local.dir.display());
    println!("  cluster file          {}", local.cluster_path.display());
    if let Some(logs) = &local.log_dir {
        println!("  logs                  {}", logs.display());
    }
    match &cluster.tls {
        Some(tls) => println!(
            "  mutual TLS            CA {} (members: the cluster file's cert and key)",
            tls.ca.display()
        ),
        None => println!("  plain TCP             every peer is trusted"),
    }
    if let Some(sequencer) = &cluster.sequencer {
        println!("  sequencer + resolver  {}", sequencer.address);
    }
    for p in &cluster.proxies {
        println!("  proxy {:<4}            {}", p.id, p.address);
    }
    for (i, t) in cluster.tlogs.iter().enumerate() {
        println!("  tlog {i:<4}             {}", t.address);
    }
    for c in &cluster.coordinators {
        println!("  coordinator {:<4}      {}", c.id, c.address);
    }
    for (i, w) in local.worker_addresses.iter().enumerate() {
        println!("  worker {i:<4}           {w}  (TLogs, sequencer, proxies as recruited)");
    }
    if one_process {
        println!(
            "  one process           worker 0 also hosts the coordinators and storage servers"
        );
    }
    for s in &cluster.storage_servers {
        let team = cluster
            .teams
            .iter()
            .find(|t| t.servers.contains(&s.id))
            .map(|t| t.id);
        println!(
            "  storage {:<4}          {}  (team {}, private team {})",
            s.id,
            s.address,
            team.map_or_else(|| "-".into(), |t| t.to_string()),
            s.private_team
        );
    }
}

/// Runs the workload if asked, then waits for Ctrl-C unless the workload
/// was all that was asked for.
async fn serve(local: &LocalCluster, args: &DevArgs, dir: &std::path::Path) -> Result<()> {
    if args.workload {
        let trace = match &args.trace {
            Some(trace) => trace.clone(),
            None => generate(dir, args)?,
        };
        let replay = ReplayArgs {
            trace,
            cluster: Some(local.cluster_path.clone()),
            path: ReplayPath::Cluster,
            tlog: TLogStoreKind::Mem,
            dir: dir.to_path_buf(),
            rate: None,
            clients: None,
            think_ms: 0.0,
            visibility_sample: 10,
            result: Some(dir.join("result.json")),
            plot: Some(dir.join("plot.svg")),
            check: true,
            no_check: false,
        };
        crate::replay::run(replay).await?;
        if !args.keep_running {
            return Ok(());
        }
    }
    let cluster = local.cluster_path.display();
    println!("cluster ready; for example:");
    println!("  teamlog client --cluster {cluster} set hello world");
    println!("  teamlog client --cluster {cluster} get hello");
    println!("  teamlog status --cluster {cluster}");
    println!("Ctrl-C stops it");
    std::future::pending::<()>().await;
    Ok(())
}

/// The default workload: 10,000 keys, Zipf-skewed, half reads, into
/// DIR/trace.jsonl (kept when it is already there).
fn generate(dir: &std::path::Path, args: &DevArgs) -> Result<PathBuf> {
    let out = dir.join("trace.jsonl");
    if out.exists() {
        println!("replaying the existing {}", out.display());
        return Ok(out);
    }
    crate::replay::generate::run(GenerateArgs {
        keys: 10_000,
        value_bytes: (16, 256),
        skew: Skew::Zipf(0.99),
        reads: 0.5,
        clears: 0.05,
        mutations_per_commit: 4,
        rate: args.rate,
        duration: args.duration,
        seed: Some(WORKLOAD_SEED),
        out: out.clone(),
    })?;
    Ok(out)
}
