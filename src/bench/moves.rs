//! `teamlog bench move`: how fast a loaded key range moves to another team
//! on an idle cluster, start commit to flip, next to a client scanning the
//! same data from a source server in the same round (the copy's ceiling:
//! each destination server reads those pages, and writes them too).
//!
//! ```text
//!  load MiB into team 1 (two servers) ─▶ durable on both
//!  each round: scan the range from a source server                 (baseline)
//!              move [k, l) to the other team: start ─▶ copied ─▶ flip  (the figure)
//!              (rounds go 1 → 2, 2 → 1, 1 → 2, …)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use client::Client;
use proto::StorageTeamId;
use serde::Serialize;
use testkit::LocalCluster;

use super::loaded::{
    cluster_spec, load, scan, tick, wait_durable, CopyBenchArgs, GIVE_UP, LOADED_BEGIN, LOADED_END,
};

#[derive(Serialize)]
struct Round {
    from_team: u64,
    to_team: u64,
    bytes: u64,
    scan_seconds: f64,
    move_seconds: f64,
    scan_mib_per_s: f64,
    move_mib_per_s: f64,
    ratio: f64,
}

/// The servers of each team: the first scans for the baseline.
const TEAM_SERVERS: [(u64, [u64; 2]); 2] = [(1, [100, 101]), (2, [200, 201])];

pub async fn run(args: CopyBenchArgs) -> Result<()> {
    let args = &args;
    super::in_temp_dir(&args.dir, |dir| async move { measure(args, &dir).await }).await
}

async fn measure(args: &CopyBenchArgs, dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = cluster_spec(2);
    let local = LocalCluster::start(&exe, &dir.join("cluster"), &spec).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let loaded = load(&client, args.mib, args.value_bytes).await?;
    wait_durable(&cluster, &client, &TEAM_SERVERS[0].1, loaded).await?;
    println!(
        "loaded {} MiB in values of {} bytes into team 1",
        args.mib, args.value_bytes
    );
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let (from, to) = (TEAM_SERVERS[round % 2], TEAM_SERVERS[(round + 1) % 2]);
        // After the last round's flip, its version is the first the source
        // team serves the range at; a commit puts the read version past it.
        let version = tick(&client).await?;
        let (bytes, scan) = scan(&cluster, from.1[0], version).await?;
        let started = Instant::now();
        let outcome = client
            .move_range(
                Bytes::from_static(LOADED_BEGIN),
                Bytes::from_static(LOADED_END),
                StorageTeamId(to.0),
                GIVE_UP,
                |_| {},
            )
            .await?;
        let moved = started.elapsed();
        outcome.flipped.context("the range moved")?;
        let mib = bytes as f64 / (1 << 20) as f64;
        let row = Round {
            from_team: from.0,
            to_team: to.0,
            bytes,
            scan_seconds: scan.as_secs_f64(),
            move_seconds: moved.as_secs_f64(),
            scan_mib_per_s: mib / scan.as_secs_f64(),
            move_mib_per_s: mib / moved.as_secs_f64(),
            ratio: scan.as_secs_f64() / moved.as_secs_f64(),
        };
        println!(
            "round {round}: team {} -> {}: {mib:.1} MiB  scan {:.2} s ({:.1} MiB/s)  move {:.2} s ({:.1} MiB/s)  ratio {:.2}",
            row.from_team, row.to_team, row.scan_seconds, row.scan_mib_per_s, row.move_seconds, row.move_mib_per_s, row.ratio
        );
        rounds.push(row);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&rounds)?)?;
    }
    local.stop().await?;
    Ok(())
}
