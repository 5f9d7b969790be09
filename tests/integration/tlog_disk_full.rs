//! A TLog whose disk fills: it cannot start its next segment, so commits
//! wait (none is refused, lost or poisoned) and status says why; once space
//! is back it goes on by itself, and every commit is in the log in order.

use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use proto::{StorageTeamId, Version};
use testkit::tlog_stream::{read_team, register_teams, set_commit, VersionChain};
use testkit::InProcessTLog;
use tlog::server::TLogConfig;
use tlog::store::LogStore;

const TEAM: StorageTeamId = StorageTeamId(1);
const COMMITS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stalls_commits_until_space_is_back() -> Result<()> {
    let store = tlog::mem_store::MemStore::new();
    let tlog = InProcessTLog::start_with(store.clone(), TLogConfig::small()).await?;
    let client = tlog.client().await?;
    register_teams(&client, &[TEAM]).await?;
    let chain = std::sync::Arc::new(VersionChain::default());
    // 100 KiB each: a 1 MiB segment holds about ten.
    let value = Bytes::from(vec![7u8; 100 << 10]);
    let commit = move |pair| set_commit(pair, TEAM, Bytes::from("k"), value.clone(), &[]);

    client.tlog_commit(commit(chain.next_pair())).await?;
    // The disk is full from here: no segment beyond those that exist.
    store.limit_segments(Some(store.list()?.len()));
    let writer = tokio::spawn({
        let client = client.clone();
        let chain = chain.clone();
        let commit = commit.clone();
        async move {
            for _ in 1..COMMITS {
                client.tlog_commit(commit(chain.next_pair())).await?;
            }
            anyhow::Ok(())
        }
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stalled = loop {
        let status = client.status().await?;
        if let Some(why) = status.stalled {
            ensure!(!status.poisoned, "a full disk poisoned the TLog");
            break why;
        }
        ensure!(
            !writer.is_finished(),
            "the commits ended on a full disk: {:?}",
            writer.await?
        );
        ensure!(tokio::time::Instant::now() < deadline, "never stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(stalled.contains("no space"), "status says {stalled:?}");

    store.limit_segments(None);
    tokio::time::timeout(Duration::from_secs(30), writer).await???;
    let status = client.status().await?;
    ensure!(
        status.stalled.is_none(),
        "still stalled: {:?}",
        status.stalled
    );
    ensure!(!status.poisoned);
    let stream = read_team(&client, TEAM, Version(1), Version(COMMITS)).await?;
    ensure!(
        stream.len() == COMMITS as usize,
        "{} of {COMMITS} versions in the log",
        stream.len()
    );
    tlog.stop().await;
    Ok(())
}
