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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::Client;
use cluster::ClusterFile;
use proto::rpc::{GetRangeRequest, Message, StorageStatusReply};
use proto::system_keys::USER_KEYS_END;
use proto::transport::RpcClient;
use proto::{Mutation, Version};
use serde::Serialize;
use testkit::{ClusterSpec, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct RebuildBenchArgs {
    /// Directory on the disk to use; a temporary one under it is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// MiB of data the team holds.
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Bytes of each value (keys are 12 bytes).
    #[arg(long, default_value_t = 1000)]
    pub value_bytes: usize,
    /// Rebuilds measured, each after a scan.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

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
/// How long one step may take before the bench gives up.
const GIVE_UP: Duration = Duration::from_secs(600);
const WRITERS: usize = 8;
const PAIRS_PER_COMMIT: usize = 100;

pub async fn run(args: RebuildBenchArgs) -> Result<()> {
    let args = &args;
    super::in_temp_dir(&args.dir, |dir| async move { measure(args, &dir).await }).await
}

async fn measure(args: &RebuildBenchArgs, dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let spec = ClusterSpec {
        tlogs: 2,
        proxies: 1,
        teams: 1,
        servers_per_team: 2,
        // A second of versions in memory: the load becomes durable soon
        // after it ends, though versions then move only with commits.
        storage_args: vec!["--window-versions".into(), "1000000".into()],
        logs_in_dir: true,
        ..ClusterSpec::default()
    };
    let cluster_dir = dir.join("cluster");
    let mut local = LocalCluster::start(&exe, &cluster_dir, &spec).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let loaded = load(&client, args).await?;
    wait_durable(&cluster, &client, loaded).await?;
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

/// Writes `args.mib` MiB under distinct keys; returns the last version.
async fn load(client: &Arc<Client>, args: &RebuildBenchArgs) -> Result<Version> {
    let pairs = (args.mib << 20) as usize / (args.value_bytes + 12);
    let commits = pairs.div_ceil(PAIRS_PER_COMMIT);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        let value = Bytes::from(vec![b'v'; args.value_bytes]);
        tasks.push(tokio::spawn(async move {
            let mut last = Version::ZERO;
            for commit in (writer..commits).step_by(WRITERS) {
                let mutations = (0..PAIRS_PER_COMMIT)
                    .map(|i| Mutation::SetValue {
                        key: Bytes::from(format!("k{:011}", commit * PAIRS_PER_COMMIT + i)),
                        value: value.clone(),
                    })
                    .collect();
                last = last.max(client.commit(mutations).await?);
            }
            anyhow::Ok(last)
        }));
    }
    let mut last = Version::ZERO;
    for task in tasks {
        last = last.max(task.await??);
    }
    Ok(last)
}

async fn status(cluster: &ClusterFile, id: u64) -> Result<StorageStatusReply> {
    let client = RpcClient::connect(address(cluster, id)?, cluster.client_config()?).await?;
    match client.call(Message::Status).await? {
        Message::StorageStatus(status) => Ok(status),
        other => bail!("storage server {id} answered {}", other.name()),
    }
}

fn address(cluster: &ClusterFile, id: u64) -> Result<std::net::SocketAddr> {
    let entry = cluster.storage_servers.iter().find(|s| s.id == id);
    Ok(entry
        .context("a storage server of the cluster file")?
        .address)
}

/// Waits until both servers made `version` durable, so the log keeps
/// nothing of the load; a small commit now and then moves versions on.
async fn wait_durable(cluster: &ClusterFile, client: &Client, version: Version) -> Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    for id in [REBUILT, TEAMMATE] {
        while status(cluster, id).await?.durable_version < version {
            ensure!(
                Instant::now() < deadline,
                "{id} did not make the load durable"
            );
            let tick = Mutation::SetValue {
                key: Bytes::from_static(b"tick"),
                value: Bytes::new(),
            };
            client.commit(vec![tick]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Reads every pair of the team from `server` at `version`, page by page;
/// returns the key and value bytes read and how long it took.
async fn scan(cluster: &ClusterFile, server: u64, version: Version) -> Result<(u64, Duration)> {
    let client = RpcClient::connect(address(cluster, server)?, cluster.client_config()?).await?;
    let started = Instant::now();
    let mut begin = Bytes::new();
    let mut bytes = 0;
    loop {
        let request = GetRangeRequest {
            begin: begin.clone(),
            end: Bytes::from_static(USER_KEYS_END),
            limit: 10_000,
            reverse: false,
            version,
        };
        let Message::GetRangeReply(reply) = client.call(Message::GetRange(request)).await? else {
            bail!("a range read got another reply");
        };
        bytes += reply
            .pairs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        match reply.pairs.last() {
            Some((key, _)) if reply.more => begin = proto::key_after(key),
            _ => return Ok((bytes, started.elapsed())),
        }
    }
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
