//! What the copy benchmarks (`rebuild`, `move`) share: loading a cluster
//! with numbered keys, waiting until servers made the load durable, and
//! scanning a server page by page, which is the copy's ceiling (a copy
//! reads the same pages, and writes them too).
//!
//! ```text
//!  load: 8 writers ─ commits of 100 pairs "k<number>" = value ─▶ last version
//!  wait_durable(servers) ─▶ scan(server, version): range reads of 10,000 pairs
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::Client;
use cluster::ClusterFile;
use proto::rpc::{GetRangeRequest, Message, StorageStatusReply};
use proto::transport::RpcClient;
use proto::{Mutation, Version};
use testkit::ClusterSpec;

/// What a copy benchmark loads, how often it measures, and where.
#[derive(clap::Args, Debug)]
pub struct CopyBenchArgs {
    /// Directory on the disk to use; a temporary one under it is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// MiB of data loaded, all of which is copied.
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Bytes of each value (keys are 12 bytes).
    #[arg(long, default_value_t = 1000)]
    pub value_bytes: usize,
    /// Copies measured, each after a scan.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A cluster of `teams` teams of two storage servers, on two TLogs and
/// one proxy, each process logging into the cluster's directory. Moves
/// copy as fast as they can: the benches measure the copy, not its limit.
pub(super) fn cluster_spec(teams: usize) -> ClusterSpec {
    ClusterSpec {
        tlogs: 2,
        proxies: 1,
        teams,
        servers_per_team: 2,
        // A second of versions in memory: the load becomes durable soon
        // after it ends, though versions then move only with commits.
        storage_args: vec![
            "--window-versions".into(),
            "1000000".into(),
            "--move-rate".into(),
            "0".into(),
        ],
        logs_in_dir: true,
        ..ClusterSpec::default()
    }
}

/// How long one step may take before a bench gives up.
pub(super) const GIVE_UP: Duration = Duration::from_secs(600);
const WRITERS: usize = 8;
const PAIRS_PER_COMMIT: usize = 100;
/// The loaded keys are `k` and eleven digits: all of them in `[k, l)`.
pub(super) const LOADED_BEGIN: &[u8] = b"k";
pub(super) const LOADED_END: &[u8] = b"l";

/// Writes `mib` MiB in values of `value_bytes` under distinct 12-byte
/// keys; returns the last version.
pub(super) async fn load(client: &Arc<Client>, mib: u64, value_bytes: usize) -> Result<Version> {
    load_pairs(
        client,
        (mib << 20) as usize / (value_bytes + 12),
        value_bytes,
    )
    .await
}

/// The key of the loaded pair numbered `i`: `k` and eleven digits.
pub(super) fn loaded_key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:011}"))
}

/// Writes `pairs` values of `value_bytes` under the keys `loaded_key`
/// numbers from 0; returns the last version.
pub(super) async fn load_pairs(
    client: &Arc<Client>,
    pairs: usize,
    value_bytes: usize,
) -> Result<Version> {
    let commits = pairs.div_ceil(PAIRS_PER_COMMIT);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        let value = Bytes::from(vec![b'v'; value_bytes]);
        tasks.push(tokio::spawn(async move {
            let mut last = Version::ZERO;
            for commit in (writer..commits).step_by(WRITERS) {
                let first = commit * PAIRS_PER_COMMIT;
                let mutations = (first..pairs.min(first + PAIRS_PER_COMMIT))
                    .map(|i| Mutation::SetValue {
                        key: loaded_key(i as u64),
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

pub(super) async fn status(cluster: &ClusterFile, id: u64) -> Result<StorageStatusReply> {
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

/// Waits until `servers` made `version` durable, so the log keeps nothing
/// of the load; a small commit now and then moves versions on.
pub(super) async fn wait_durable(
    cluster: &ClusterFile,
    client: &Client,
    servers: &[u64],
    version: Version,
) -> Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    for &id in servers {
        while status(cluster, id).await?.durable_version < version {
            ensure!(
                Instant::now() < deadline,
                "{id} did not make the load durable"
            );
            tick(client).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Commits a small write outside the loaded keys, so versions move on.
pub(super) async fn tick(client: &Client) -> Result<Version> {
    let tick = Mutation::SetValue {
        key: Bytes::from_static(b"tick"),
        value: Bytes::new(),
    };
    Ok(client.commit(vec![tick]).await?)
}

/// Reads every pair of the loaded keys `server` holds at `version`, page
/// by page; returns the key and value bytes read and how long it took.
pub(super) async fn scan(
    cluster: &ClusterFile,
    server: u64,
    version: Version,
) -> Result<(u64, Duration)> {
    let client = RpcClient::connect(address(cluster, server)?, cluster.client_config()?).await?;
    let started = Instant::now();
    let end = Bytes::from_static(LOADED_END);
    let mut begin = Bytes::from_static(LOADED_BEGIN);
    let mut bytes = 0;
    loop {
        let request = GetRangeRequest {
            begin: begin.clone(),
            end: end.clone(),
            limit: 10_000,
            reverse: false,
            version,
            copy: false,
        };
        let Message::GetRangeReply(reply) = client.call(Message::GetRange(request)).await? else {
            bail!("a range read got another reply");
        };
        bytes += reply
            .pairs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        if !reply.more {
            return Ok((bytes, started.elapsed()));
        }
        begin = reply.forward_end(&end);
    }
}
