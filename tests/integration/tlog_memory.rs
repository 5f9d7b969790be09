//! A TLog under steady commit load with one team never popped: resident
//! memory stays within the budget plus a fixed overhead, and a peek from the
//! beginning still returns everything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use bytes::Bytes;
use proto::transport::RpcClient;
use proto::{Mutation, StorageServerId, StorageTeamId, Version};
use testkit::tlog_stream::{read_team, set_commit, VersionChain};
use testkit::ChildProcess;

const TEAM: StorageTeamId = StorageTeamId(1);
const BUDGET: u64 = 16 << 20;
/// What the process needs besides the budget: runtime, buffers in flight,
/// allocator slack.
const OVERHEAD: u64 = 48 << 20;
const PAYLOAD: usize = 16 << 10;
const COMMITS: u64 = 16_384; // 256 MiB, sixteen times the budget
const COMMITTERS: u64 = 8;

fn vm_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS present");
    let kib: u64 = line.split_whitespace().nth(1).expect("a number").parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_budget_while_a_team_lags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = crate::exe();
    let args = [
        "--memory-budget",
        &BUDGET.to_string(),
        "--segment-size",
        &(8u64 << 20).to_string(),
    ];
    let tlog = ChildProcess::spawn(exe, dir.path(), &args).await?;
    let pid = tlog.pid().expect("running");
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    // Registered with a server that never pops: nothing can be discarded.
    client
        .register_team(proto::rpc::RegisterTeamRequest {
            team: TEAM,
            servers: vec![StorageServerId(7)],
        })
        .await?;
    let baseline = vm_rss(pid)?;

    let chain = Arc::new(VersionChain::default());
    let next = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(baseline));
    let mut tasks = Vec::new();
    for _ in 0..COMMITTERS {
        let (client, chain, next, peak) =
            (client.clone(), chain.clone(), next.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < COMMITS {
                let pair = chain.next_pair();
                let value = Bytes::from(vec![(pair.1 .0 % 251) as u8; PAYLOAD]);
                client
                    .tlog_commit(set_commit(
                        pair,
                        TEAM,
                        Bytes::from(pair.1 .0.to_string()),
                        value,
                        &[],
                    ))
                    .await?;
                if pair.1 .0 % 64 == 0 {
                    peak.fetch_max(vm_rss(pid)?, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let status = client.status().await?;
    assert_eq!(status.durable_version, Version(COMMITS));
    assert!(
        status.memory_bytes <= BUDGET,
        "{} bytes held in memory",
        status.memory_bytes
    );
    assert!(
        status.disk_bytes >= COMMITS * PAYLOAD as u64,
        "only {} bytes on disk",
        status.disk_bytes
    );
    assert_eq!(status.truncation_blocker, Some(TEAM));

    // Everything is still there, read from disk and memory.
    let versions = read_team(&client, TEAM, Version(1), Version(COMMITS)).await?;
    peak.fetch_max(vm_rss(pid)?, Ordering::Relaxed);
    if versions.len() as u64 != COMMITS {
        bail!("{} of {COMMITS} versions came back", versions.len());
    }
    for (version, mutations) in versions {
        let [Mutation::SetValue { key, value }] = mutations.as_slice() else {
            bail!("version {version}: {mutations:?}");
        };
        assert_eq!(key.as_ref(), version.0.to_string().as_bytes());
        assert!(value.len() == PAYLOAD && value.iter().all(|b| *b == (version.0 % 251) as u8));
    }
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "baseline rss {} MiB, peak {} MiB, budget {} MiB",
        baseline >> 20,
        peak >> 20,
        BUDGET >> 20
    );
    assert!(
        peak <= baseline + BUDGET + OVERHEAD,
        "peak rss {} MiB exceeds baseline {} MiB + budget {} MiB + overhead {} MiB",
        peak >> 20,
        baseline >> 20,
        BUDGET >> 20,
        OVERHEAD >> 20
    );
    Ok(tlog.stop().await?)
}
