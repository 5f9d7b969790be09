//! `teamlog dev`: start a local TLog process and drive a commit/peek
//! workload against it, as a first taste of teamlog.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::transport::RpcClient;
use proto::{Mutation, StorageTeamId, Version};

use crate::process::ChildTLog;
use crate::workload::{read_team, set_commit, VersionChain};

const TEAMS: u64 = 4;

pub async fn run(data_dir: Option<PathBuf>, commits: u64, committers: usize) -> Result<()> {
    let (_temp, dir) = match data_dir {
        Some(dir) => (None, dir),
        None => {
            let temp = tempfile::tempdir().context("creating a temporary data dir")?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let tlog = ChildTLog::spawn(&exe, &dir.join("tlog-0"), &[]).await?;
    println!(
        "tlog 0 listening on {} (data in {})",
        tlog.addr,
        dir.display()
    );
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    let start_version = client.status().await?.durable_version;
    let chain = Arc::new(VersionChain::starting_at(start_version));
    let teams: Vec<StorageTeamId> = (1..=TEAMS).map(StorageTeamId).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..committers {
        let (client, chain, teams) = (client.clone(), chain.clone(), teams.clone());
        let share =
            commits / committers as u64 + u64::from((worker as u64) < commits % committers as u64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share as usize);
            for i in 0..share {
                let pair = chain.next_pair();
                let team = teams[(pair.1 .0 % TEAMS) as usize];
                let key = Bytes::from(format!("key-{worker}-{i}"));
                let request = set_commit(pair, team, key, Bytes::from_static(&[7u8; 100]), &teams);
                let sent = Instant::now();
                client.tlog_commit(request).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let last = Version(start_version.0 + commits);
    let mut found = 0;
    for team in &teams {
        let versions = read_team(&client, *team, start_version.next(), last).await?;
        for (version, mutations) in &versions {
            if version.0 % TEAMS + 1 == team.0 {
                match mutations.as_slice() {
                    [Mutation::SetValue { .. }] => found += 1,
                    other => bail!("{team} at {version}: expected one set, got {other:?}"),
                }
            } else if !mutations.is_empty() {
                bail!("{team} at {version}: expected an empty version");
            }
        }
        if versions.len() as u64 != commits {
            bail!("{team}: {} of {commits} versions came back", versions.len());
        }
    }
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{commits} commits by {committers} committers in {:.2?}: {:.0} commits/s, latency p50 {:.2?} p99 {:.2?}",
        elapsed,
        commits as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    println!("read back {found} mutations over {TEAMS} teams: every acknowledged commit is there once, in order");
    tlog.stop().await?;
    Ok(())
}
