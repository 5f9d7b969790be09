//! A storage server whose engine finds no room: it goes on applying into
//! memory (up to twice its window), reports itself stalled, keeps
//! everything, and flushes on by itself once there is room again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use proto::rpc::{RegisterTeamRequest, StorageStatusReply};
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::{StorageServerId, StorageTeamId, Version};
use storage_server::engine::KvEngine;
use storage_server::generations::LogDiscovery;
use storage_server::mem_engine::MemEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use testkit::tlog_stream::{set_commit, VersionChain};
use testkit::InProcessTLog;

const TEAM: StorageTeamId = StorageTeamId(1);
const PRIVATE: StorageTeamId = StorageTeamId(10_100);
const SERVER: StorageServerId = StorageServerId(100);

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:04}"))
}

/// Waits until the server's status satisfies `done`, or fails at the deadline.
async fn status_until(
    service: &StorageService<MemEngine>,
    what: &str,
    done: impl Fn(&StorageStatusReply) -> bool,
) -> Result<StorageStatusReply> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = service.status().await;
        if done(&status) {
            return Ok(status);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_stalls_flushes_until_there_is_room() -> Result<()> {
    let tlog = InProcessTLog::start().await?;
    let client = tlog.client().await?;
    for team in [TEAM, PRIVATE] {
        client
            .register_team(RegisterTeamRequest {
                team,
                servers: vec![SERVER],
            })
            .await?;
    }
    let engine = Arc::new(MemEngine::new());
    let service = StorageService::start(
        engine.clone(),
        StorageConfig {
            id: SERVER,
            private_team: PRIVATE,
            teams: BTreeSet::from([TEAM]),
            shards: ShardMap::new([(Bytes::new(), ShardAssignment::to(TEAM))])?,
            // The sequencer is asked only for status, which this does not use.
            logs: LogDiscovery::Pinned {
                tlogs: vec![tlog.addr],
                sequencer: tlog.addr,
            },
            replication: 1,
            window: WindowConfig {
                max_versions: 5,
                max_bytes: 1 << 20,
            },
            read_wait: Duration::from_secs(1),
            transport: Default::default(),
            team_servers: Default::default(),
            move_bytes_per_second: None,
        },
    )?;
    let chain = VersionChain::default();
    let commit = async |i: u64| {
        let request = set_commit(chain.next_pair(), TEAM, key(i), Bytes::from("v"), &[]);
        client.tlog_commit(request).await
    };

    for i in 1..=20 {
        commit(i).await?;
    }
    status_until(&service, "flushed", |s| s.durable_version >= Version(10)).await?;

    engine.set_full(true);
    for i in 21..=40 {
        commit(i).await?;
    }
    let stalled = status_until(&service, "stalled with everything applied", |s| {
        s.stalled.is_some() && s.applied_version >= Version(40)
    })
    .await?;
    ensure!(stalled.stopped.is_none(), "a full disk stopped the server");
    let durable_while_full = stalled.durable_version;
    ensure!(engine.get(&key(40))?.is_none(), "written to a full engine");

    engine.set_full(false);
    let resumed = status_until(&service, "flushing again", |s| {
        s.stalled.is_none() && s.durable_version >= Version(35)
    })
    .await?;
    ensure!(resumed.durable_version > durable_while_full);
    for i in 1..=resumed.durable_version.0 {
        ensure!(
            engine.get(&key(i))?.is_some(),
            "key {i} is missing from the engine"
        );
    }
    tlog.stop().await;
    Ok(())
}
