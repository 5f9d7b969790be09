//! `teamlog dev`: start a local cluster (TLogs, the sequencer with its
//! resolver, commit proxies) as real processes, drive a commit workload
//! through the client library, read every team back from the TLogs, and
//! check that each acknowledged commit is there exactly once.
//!
//! ```text
//!  dev ─spawns─▶ 3 × teamlog tlog, teamlog sequencer, 2 × teamlog proxy
//!      ─commits─▶ Client ─▶ proxies ─▶ TLogs
//!      ─peeks───▶ every team on one of its TLogs ─▶ check
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::system_keys::tlogs_for_team;
use proto::transport::RpcClient;
use proto::{Mutation, Version};

use crate::client::Client;
use crate::local_cluster::{ClusterSpec, LocalCluster};
use crate::workload::read_team;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Data dir; a fresh temporary one when not given.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Commits to drive.
    #[arg(long, default_value_t = 5_000)]
    pub commits: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
}

pub async fn run(args: DevArgs) -> Result<()> {
    let (_temp, dir) = match args.data_dir {
        Some(dir) => (None, dir),
        None => {
            let temp = tempfile::tempdir().context("creating a temporary data dir")?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(&exe, &dir, &spec).await?;
    let cluster = local.cluster.clone();
    println!(
        "local cluster in {} (cluster file {})",
        dir.display(),
        local.cluster_path.display()
    );
    println!("  sequencer + resolver  {}", cluster.sequencer.address);
    for p in &cluster.proxies {
        println!("  proxy {}               {}", p.id, p.address);
    }
    for (i, t) in cluster.tlogs.iter().enumerate() {
        println!("  tlog {i}                {}", t.address);
    }

    let client = Arc::new(Client::new(&cluster));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.clients {
        let client = client.clone();
        let share = args.commits / args.clients as u64
            + u64::from((worker as u64) < args.commits % args.clients as u64);
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::with_capacity(share as usize);
            for i in 0..share {
                let key = Bytes::from(format!(
                    "{}-{worker:03}-{i:06}",
                    (b'a' + (i % 26) as u8) as char
                ));
                let set = Mutation::SetValue {
                    key: key.clone(),
                    value: Bytes::from_static(&[7u8; 100]),
                };
                let sent = Instant::now();
                let version = client.commit(vec![set]).await?;
                done.push((version, key, sent.elapsed()));
            }
            anyhow::Ok(done)
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let mut latencies: Vec<_> = acked.iter().map(|(_, _, l)| *l).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} commits by {} clients in {elapsed:.2?}: {:.0} commits/s, latency p50 {:.2?} p99 {:.2?}",
        acked.len(),
        args.clients,
        acked.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );

    // Read every team back and find each acknowledged key exactly once.
    let last = acked.iter().map(|(v, _, _)| *v).max().unwrap_or_default();
    let mut found: BTreeMap<(Version, Bytes), usize> = BTreeMap::new();
    let topology = cluster.topology();
    for team in topology.teams.keys() {
        let index = tlogs_for_team(*team, cluster.tlogs.len(), cluster.replication)[0];
        let tlog = RpcClient::connect(cluster.tlogs[index].address, Default::default()).await?;
        for (version, mutations) in read_team(&tlog, *team, Version(1), last).await? {
            for mutation in mutations {
                if let Mutation::SetValue { key, .. } = mutation {
                    *found.entry((version, key)).or_default() += 1;
                }
            }
        }
    }
    for (version, key, _) in &acked {
        match found.get(&(*version, key.clone())) {
            Some(1) => {}
            Some(n) => bail!("{key:?} at {version} is there {n} times"),
            None => bail!("acknowledged {key:?} at {version} is missing"),
        }
    }
    println!(
        "read back {} teams: every acknowledged commit is there exactly once, in order",
        topology.teams.len()
    );
    local.stop().await?;
    Ok(())
}
