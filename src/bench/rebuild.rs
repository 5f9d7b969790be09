//! `teamlog bench rebuild`: how fast a storage server that lost its data
//! directory copies its team back from a teammate, next to a client
//! scanning the same data from that teammate (the copy's ceiling: the copy
//! reads the same pages and writes them too), in the same run.
//!
//! ```text
//!  load MiB into one team of two servers ─▶ both pop it
//!  each round: scan the team from server B, page by page        (baseline)
//!              kill -9 server A, delete its data, start it
//!              ─▶ A copies from B ─▶ A has applied the version at its start   (the figure)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use client::Client;
use cluster::ClusterFile;
use proto::Version;
use serde::Serialize;
use testkit::LocalCluster;

use super::loaded::{cluster_spec, load, scan, status, wait_durable, CopyBenchArgs, GIVE_UP};

#[derive(Serialize)]
struct Round {
    bytes: u64,
    scan_seconds: f64,
    rebuild_seconds: f64,
    scan_mib_per_s: f64,
    rebuild_mib_per_s: f64,
    ratio: f64,
}

const REBUILT: u64 = 100;
const TEAMMATE: u64 = 101;

pub async fn run(args: CopyBenchArgs) -> Result<()> {
    let args = &args;
    super::in_temp_dir(&args.dir, |dir| async move { measure(args, &dir).await }).await
}

async fn measure(args: &CopyBenchArgs, dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = cluster_spec(1);
    let cluster_dir = dir.join("cluster");
    let mut local = LocalCluster::start(&exe, &cluster_dir, &spec).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let loaded = load(&client, args.mib, args.value_bytes).await?;
    wait_durable(&cluster, &client, &[REBUILT, TEAMMATE], loaded).await?;
    println!(
        "loaded {} MiB in values of {} bytes",
        args.mib, args.value_bytes
    );
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let (bytes, scan) = scan(&cluster, TEAMMATE, client.read_version().await?).await?;
        let server = local.storage.get_mut(&REBUILT).and_then(Option::take);
        server.context("a running server")?.kill9().await?;
        std::fs::remove_dir_all(cluster_dir.join(format!("storage-{REBUILT}")))?;
        let started = Instant::now();
        local
            .storage
            .insert(REBUILT, Some(local.start_storage(REBUILT).await?));
        let target = client.read_version().await?;
        wait_rebuilt(&cluster, target).await?;
        let rebuild = started.elapsed();
        let mib = bytes as f64 / (1 << 20) as f64;
        let row = Round {
            bytes,
            scan_seconds: scan.as_secs_f64(),
            rebuild_seconds: rebuild.as_secs_f64(),
            scan_mib_per_s: mib / scan.as_secs_f64(),
            rebuild_mib_per_s: mib / rebuild.as_secs_f64(),
            ratio: scan.as_secs_f64() / rebuild.as_secs_f64(),
        };
        println!(
            "round {round}: {mib:.1} MiB  scan {:.2} s ({:.1} MiB/s)  rebuild {:.2} s ({:.1} MiB/s)  ratio {:.2}",
            row.scan_seconds, row.scan_mib_per_s, row.rebuild_seconds, row.rebuild_mib_per_s, row.ratio
        );
        rounds.push(row);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&rounds)?)?;
    }
    local.stop().await?;
    Ok(())
}

/// Waits until the rebuilt server copied its team and applied `version`.
async fn wait_rebuilt(cluster: &ClusterFile, version: Version) -> Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Ok(status) = status(cluster, REBUILT).await {
            if let Some(why) = status.stopped {
                bail!("the rebuilt server stopped: {why}");
            }
            if status.rebuilding.is_none() && status.applied_version >= version {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "no rebuild within {GIVE_UP:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
