//! `teamlog tlog` as an operator meets it: one TLog per data dir, state that
//! survives restarts, and corruption reported (file and offset) instead of
//! served.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use bytes::Bytes;
use proto::rpc::{ErrorCode, PeekRequest};
use proto::transport::{RpcClient, RpcError};
use proto::{StorageTeamId, Version};
use testkit::tlog_stream::{register_teams, set_commit};
use testkit::ChildProcess;

const TEAM: StorageTeamId = StorageTeamId(1);

/// Runs `teamlog tlog` expecting it to refuse to start; returns its stderr.
fn refused_start(dir: &Path, extra: &[&str]) -> Result<String> {
    let output = Command::new(crate::exe())
        .args(["tlog", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()?;
    assert!(!output.status.success(), "the tlog started");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

async fn commit_range(client: &RpcClient, from: u64, to: u64) -> Result<()> {
    register_teams(client, &[TEAM]).await?;
    for v in from..=to {
        let value = Bytes::from(vec![b'x'; 1000]);
        let request = set_commit(
            (Version(v - 1), Version(v)),
            TEAM,
            Bytes::from(v.to_string()),
            value,
            &[],
        );
        client.tlog_commit(request).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_data_dir_serves_one_tlog_at_a_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tlog = ChildProcess::spawn(crate::exe(), dir.path(), &[]).await?;
    let stderr = refused_start(dir.path(), &[])?;
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    tlog.stop().await?;
    let again = ChildProcess::spawn(crate::exe(), dir.path(), &[]).await?;
    Ok(again.stop().await?)
}

#[tokio::test]
async fn lock_and_data_survive_a_clean_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tlog = ChildProcess::spawn(crate::exe(), dir.path(), &[]).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    commit_range(&client, 1, 20).await?;
    assert_eq!(client.lock().await?.end_version, Version(20));
    tlog.stop().await?;

    let tlog = ChildProcess::spawn(crate::exe(), dir.path(), &[]).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    let status = client.status().await?;
    assert!(status.locked);
    assert_eq!(status.durable_version, Version(20));
    let late = set_commit(
        (Version(20), Version(21)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    match client.tlog_commit(late).await {
        Err(RpcError::Remote { code, .. }) => assert_eq!(code, ErrorCode::TLogStopped),
        other => panic!("expected tlog_stopped, got {other:?}"),
    }
    let reply = client
        .peek(PeekRequest {
            team: TEAM,
            begin: Version(1),
            max_bytes: 1 << 20,
            timeout_ms: 0,
        })
        .await?;
    assert_eq!(reply.blocks.len(), 20);
    assert!(reply.end_of_stream);
    Ok(tlog.stop().await?)
}

#[tokio::test]
async fn corruption_before_the_tail_stops_the_tlog_from_starting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args = ["--segment-size", "65536"];
    let tlog = ChildProcess::spawn(crate::exe(), dir.path(), &args).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    commit_range(&client, 1, 200).await?;
    tlog.stop().await?;

    let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("log"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    // Live segments only: spares (recycled files) are not part of the log.
    segments.retain(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.ends_with(".seg") && !name.starts_with("spare-")
    });
    segments.sort();
    assert!(
        segments.len() >= 3,
        "expected several segments, got {segments:?}"
    );
    // Flip one byte inside the first record payload of the first segment.
    let victim = &segments[0];
    let mut bytes = std::fs::read(victim)?;
    bytes[64 + 40] ^= 0xff;
    std::fs::write(victim, &bytes)?;

    let stderr = refused_start(dir.path(), &args)?;
    println!("{stderr}");
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stderr.contains(&name), "the error names the file: {stderr}");
    assert!(
        stderr.contains("offset"),
        "the error names the offset: {stderr}"
    );
    Ok(())
}
