//! `teamlog bench commit`: commits per second and commit latency through a
//! local cluster (real processes), next to the TLog-only ceiling (one TLog,
//! commits of the same size straight to it) measured in the same run.
//!
//! ```text
//!  clients (1..64) ─commit(batch of N sets)─▶ 2 proxies ─▶ sequencer/resolver
//!                                                       └▶ 3 TLogs (r = 2)
//!  ceiling: the same clients ─commit─▶ one TLog, no proxy
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use proto::Mutation;
use serde::Serialize;

use crate::bench::measure::{closed_loop, Figures};
use crate::bench::tlog::BenchTLog;
use client::Client;
use testkit::{ClusterSpec, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct CommitBenchArgs {
    /// Directory on the disk to measure; a temporary one under it is used.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Seconds per measured cell.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Concurrent clients, comma separated.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Mutations per commit, comma separated.
    #[arg(long, default_value = "1,10,100", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Value bytes per mutation.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Extra arguments for the proxies (e.g. `--batch-interval-us=500`).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub proxy_args: Vec<String>,
    /// Run the cluster over plain TCP instead of mutual TLS.
    #[arg(long)]
    pub no_tls: bool,
}

#[derive(Serialize)]
struct Cell {
    clients: usize,
    mutations_per_commit: usize,
    cluster: Figures,
    mutations_per_s: f64,
    tlog_ceiling: Figures,
    ratio_commits: f64,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    value_bytes: usize,
    cells: Vec<Cell>,
}

const KEY_BYTES: usize = 16;

pub async fn run(args: CommitBenchArgs) -> Result<()> {
    let temp = tempfile::tempdir_in(&args.dir).context("creating a bench dir")?;
    let seconds = Duration::from_secs_f64(args.seconds);
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        proxy_args: args.proxy_args.clone(),
        storage: false,
        tls: !args.no_tls,
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(&exe, &temp.path().join("cluster"), &spec).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let ceiling = BenchTLog::start(&temp.path().join("ceiling")).await?;
    println!(
        "cluster: {} proxies, {} tlogs (replication {}), {} teams; ceiling: one tlog",
        spec.proxies, spec.tlogs, spec.replication, spec.teams
    );
    println!(
        "{:>7} {:>6} | {:>9} {:>11} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>6}",
        "clients",
        "batch",
        "commits/s",
        "mutations/s",
        "p50 us",
        "p99 us",
        "ceiling/s",
        "p50 us",
        "p99 us",
        "ratio"
    );
    let mut cells = Vec::new();
    for &batch in &args.batch {
        for &clients in &args.clients {
            let value = Bytes::from(vec![b'v'; args.value_bytes]);
            let c = client.clone();
            let sample = closed_loop(clients, seconds, move |worker, n| {
                let (client, value) = (c.clone(), value.clone());
                async move {
                    let mutations = (0..batch)
                        .map(|i| Mutation::SetValue {
                            // Spread over the shards: the first letter picks one.
                            key: Bytes::from(format!(
                                "{}{worker:05}-{n:06}-{i:03}",
                                (b'a' + (n % 26) as u8) as char
                            )),
                            value: value.clone(),
                        })
                        .collect();
                    client.commit(mutations).await?;
                    Ok(())
                }
            })
            .await?;
            let bytes_per_commit = batch * (KEY_BYTES + args.value_bytes);
            let cluster = sample.sized(bytes_per_commit).figures();
            let tlog = ceiling
                .load(clients, bytes_per_commit, seconds)
                .await?
                .figures();
            let cell = Cell {
                clients,
                mutations_per_commit: batch,
                mutations_per_s: cluster.ops_per_s * batch as f64,
                ratio_commits: cluster.ops_per_s / tlog.ops_per_s,
                cluster,
                tlog_ceiling: tlog,
            };
            println!(
                "{:>7} {:>6} | {:>9.0} {:>11.0} {:>8.0} {:>8.0} | {:>9.0} {:>8.0} {:>8.0} | {:>5.0}%",
                clients,
                batch,
                cluster.ops_per_s,
                cell.mutations_per_s,
                cluster.p50_us,
                cluster.p99_us,
                tlog.ops_per_s,
                tlog.p50_us,
                tlog.p99_us,
                cell.ratio_commits * 100.0
            );
            cells.push(cell);
        }
    }
    ceiling.stop().await?;
    local.stop().await?;
    let report = Report {
        bench: "commit",
        value_bytes: args.value_bytes,
        cells,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
