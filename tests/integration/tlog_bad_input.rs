//! Hostile and wrong input against a running `teamlog tlog`: each gets a
//! clear error or a closed connection, and the TLog keeps serving others.

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use proto::rpc::{ErrorCode, Message, PeekRequest, TLogCommitRequest, TeamBlockData};
use proto::transport::RpcClient;
use proto::transport::RpcError;
use proto::{StorageServerId, StorageTeamId, Version};
use testkit::tlog_stream::{register_teams, set_commit};
use testkit::ChildProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEAM: StorageTeamId = StorageTeamId(1);

async fn start() -> Result<(tempfile::TempDir, ChildProcess, RpcClient)> {
    start_with(&["--commit-wait-timeout-ms", "300"]).await
}

/// A TLog started with `args`, its team registered and version 10 committed.
async fn start_with(args: &[&str]) -> Result<(tempfile::TempDir, ChildProcess, RpcClient)> {
    let dir = tempfile::tempdir()?;
    let tlog = ChildProcess::spawn(crate::exe(), dir.path(), args).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    register_teams(&client, &[TEAM]).await?;
    client
        .tlog_commit(set_commit(
            (Version(0), Version(10)),
            TEAM,
            Bytes::from_static(b"k"),
            Bytes::from_static(b"v"),
            &[],
        ))
        .await?;
    Ok((dir, tlog, client))
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await??;
    Ok(out)
}

fn remote_code(result: Result<impl std::fmt::Debug, RpcError>) -> Result<ErrorCode> {
    match result {
        Err(RpcError::Remote { code, .. }) => Ok(code),
        other => bail!("expected a remote error, got {other:?}"),
    }
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// The process's virtual size: memory set aside shows here even before it
/// is touched, unlike in the resident size.
fn vm_size_kib(pid: u32) -> Result<u64> {
    proc_status_kib(pid, "VmSize:")
}

fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} present"));
    Ok(line.split_whitespace().nth(1).expect("a number").parse()?)
}

async fn still_serving(client: &RpcClient) -> Result<()> {
    let reply = client
        .peek(PeekRequest {
            team: TEAM,
            begin: Version(10),
            max_bytes: 1 << 20,
            timeout_ms: 0,
        })
        .await?;
    assert_eq!(reply.blocks.len(), 1);
    Ok(())
}

#[tokio::test]
async fn garbage_and_broken_frames_close_only_their_connection() -> Result<()> {
    let (_dir, tlog, client) = start().await?;
    let pid = tlog.pid().expect("running");
    let rss_before = vm_rss_kib(pid)?;

    // Random bytes: not a frame at all.
    let mut stream = TcpStream::connect(tlog.addr).await?;
    stream
        .write_all(&[
            0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9,
        ])
        .await?;
    read_to_close(&mut stream).await?;
    still_serving(&client).await?;

    // A length over the cap is refused at once.
    let mut stream = TcpStream::connect(tlog.addr).await?;
    stream
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await?;
    read_to_close(&mut stream).await?;
    still_serving(&client).await?;

    // Lengths just under the cap, with no body: the server sets a frame's
    // buffer aside only once the frame has its share of the 256 MiB input
    // budget, so twelve of them set aside four frames' worth (256 MiB), not
    // 768 MiB.
    let size_before = vm_size_kib(pid)?;
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut stream = TcpStream::connect(tlog.addr).await?;
        let length = proto::DEFAULT_MAX_FRAME_LEN - 8;
        let mut header = length.to_le_bytes().to_vec();
        header.extend_from_slice(&[0, 0, 0, 0]);
        stream.write_all(&header).await?;
        held.push(stream);
    }
    // Until the server has read the headers and admitted four frames.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while vm_size_kib(pid)? < size_before + 256 * 1024 {
        assert!(tokio::time::Instant::now() < deadline, "no frame admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    still_serving(&client).await?;
    let rss_after = vm_rss_kib(pid)?;
    assert!(
        rss_after < rss_before + 64 * 1024,
        "rss grew from {rss_before} KiB to {rss_after} KiB"
    );
    let size_after = vm_size_kib(pid)?;
    assert!(
        size_after < size_before + 512 * 1024,
        "virtual size grew from {size_before} KiB to {size_after} KiB"
    );
    drop(held);

    // A frame whose crc does not match its payload.
    let mut stream = TcpStream::connect(tlog.addr).await?;
    let payload = b"not what the crc says";
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&(crc32c::crc32c(payload) ^ 1).to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await?;
    read_to_close(&mut stream).await?;
    still_serving(&client).await?;

    // A valid frame with a valid crc but no valid flatbuffer inside.
    let mut stream = TcpStream::connect(tlog.addr).await?;
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await?;
    read_to_close(&mut stream).await?;
    still_serving(&client).await?;
    Ok(tlog.stop().await?)
}

#[tokio::test]
async fn wrong_requests_get_clear_errors() -> Result<()> {
    let (_dir, tlog, client) = start().await?;
    let rpc = proto::transport::RpcClient::connect(tlog.addr, Default::default()).await?;

    // A reply-type message sent as a request.
    assert_eq!(
        remote_code(rpc.call(Message::PopReply).await)?,
        ErrorCode::UnknownMessage
    );

    // Unknown team, and a peek below what was popped.
    let peek = |team, begin| PeekRequest {
        team,
        begin,
        max_bytes: 1 << 20,
        timeout_ms: 0,
    };
    assert_eq!(
        remote_code(client.peek(peek(StorageTeamId(99), Version(1))).await)?,
        ErrorCode::UnknownTeam
    );
    // A commit naming a team nobody registered creates nothing.
    let stray = set_commit(
        (Version(10), Version(11)),
        StorageTeamId(99),
        Bytes::from_static(b"k"),
        Bytes::from_static(b"v"),
        &[],
    );
    assert_eq!(
        remote_code(client.tlog_commit(stray).await)?,
        ErrorCode::UnknownTeam
    );
    let status = client.status().await?;
    assert!(status.teams.iter().all(|t| t.team != StorageTeamId(99)));
    // No retry of that commit can join the chain here, so the TLog reports
    // the gap it leaves until its log moves past it.
    let stalled = status.stalled.unwrap_or_default();
    assert!(stalled.contains("unknown team team-99"), "{stalled:?}");
    // The team's one server pops.
    client
        .register_team(proto::rpc::RegisterTeamRequest {
            team: TEAM,
            servers: vec![StorageServerId(1)],
        })
        .await?;
    client
        .pop(proto::rpc::PopRequest {
            team: TEAM,
            server: StorageServerId(1),
            version: Version(10),
        })
        .await?;
    // The refusal names the popped version, so a reader knows where the
    // team's data now starts.
    match client.peek(peek(TEAM, Version(5))).await {
        Err(RpcError::Remote { code, version, .. }) => {
            assert_eq!(code, ErrorCode::PeekBeforePopped);
            assert_eq!(version, Some(Version(10)));
        }
        other => bail!("expected peek_before_popped, got {other:?}"),
    }

    // A commit that skips versions waits for its predecessor, then fails.
    let skip = set_commit(
        (Version(50), Version(60)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::from_static(b"v"),
        &[],
    );
    assert_eq!(
        remote_code(client.tlog_commit(skip).await)?,
        ErrorCode::MissingPredecessor
    );
    // Its chain now has a gap, and the TLog says so: a controller watching
    // its generation recovers.
    let stalled = client.status().await?.stalled.unwrap_or_default();
    assert!(stalled.contains("its chain has a gap"), "{stalled:?}");

    // version <= prev_version.
    let backwards = set_commit(
        (Version(10), Version(10)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    assert_eq!(
        remote_code(client.tlog_commit(backwards).await)?,
        ErrorCode::MalformedRequest
    );

    // A commit that forks the chain: its prev is behind the TLog's last version.
    let fork = set_commit(
        (Version(5), Version(11)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    assert_eq!(
        remote_code(client.tlog_commit(fork).await)?,
        ErrorCode::VersionConflict
    );

    // Blocks that are garbage, for the wrong team, or at the wrong version.
    let garbage = TLogCommitRequest {
        prev_version: Version(10),
        version: Version(11),
        known_committed_version: Version(0),
        teams: vec![TeamBlockData {
            team: TEAM,
            data: Bytes::from_static(b"\x01garbage"),
        }],
    };
    assert_eq!(
        remote_code(client.tlog_commit(garbage).await)?,
        ErrorCode::InvalidBlock
    );
    let mut wrong_team = set_commit(
        (Version(10), Version(11)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    wrong_team.teams[0].team = StorageTeamId(2);
    assert_eq!(
        remote_code(client.tlog_commit(wrong_team).await)?,
        ErrorCode::InvalidBlock
    );
    let mut wrong_version = set_commit(
        (Version(10), Version(12)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    wrong_version.version = Version(11);
    assert_eq!(
        remote_code(client.tlog_commit(wrong_version).await)?,
        ErrorCode::InvalidBlock
    );

    // None of it was applied: the next commit in the chain goes through,
    // and a duplicate of it is acknowledged without a second copy.
    let next = set_commit(
        (Version(10), Version(11)),
        TEAM,
        Bytes::from_static(b"k2"),
        Bytes::new(),
        &[],
    );
    assert_eq!(client.tlog_commit(next.clone()).await?.version, Version(11));
    assert_eq!(client.tlog_commit(next).await?.version, Version(11));
    let reply = client.peek(peek(TEAM, Version(10))).await?;
    assert_eq!(reply.blocks.len(), 2);
    assert_eq!(reply.end, Version(12));

    // After a lock, commits get tlog_stopped and peeks report end of stream.
    let lock = client.lock().await?;
    assert_eq!(lock.end_version, Version(11));
    let after = set_commit(
        (Version(11), Version(12)),
        TEAM,
        Bytes::from_static(b"k"),
        Bytes::new(),
        &[],
    );
    assert_eq!(
        remote_code(client.tlog_commit(after).await)?,
        ErrorCode::TLogStopped
    );
    let reply = client
        .peek(PeekRequest {
            timeout_ms: 5000,
            ..peek(TEAM, Version(12))
        })
        .await?;
    assert!(reply.end_of_stream && reply.blocks.is_empty());
    Ok(tlog.stop().await?)
}

/// A hundred connections each send most of a 48 MiB frame and stall. The
/// TLog reads the bodies of only as many as its input budget (256 MiB)
/// holds; the rest wait with a header read, so its memory stays within the
/// budget instead of growing by a frame per connection. Its metrics show
/// the bytes held and the connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_frames_are_held_within_the_input_budget() -> Result<()> {
    const CONNECTIONS: usize = 100;
    const FRAME: usize = 48 << 20;
    const ADMITTED: usize = (256 << 20) / FRAME;
    let metrics = testkit::free_local_addrs(1)?[0];
    let (_dir, tlog, client) = start_with(&["--metrics", &metrics.to_string()]).await?;
    let pid = tlog.pid().expect("running");
    let rss_before = vm_rss_kib(pid)?;

    let body = std::sync::Arc::new(vec![0u8; FRAME - 1]);
    let mut header = (FRAME as u32).to_le_bytes().to_vec();
    header.extend_from_slice(&[0, 0, 0, 0]);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(tlog.addr).await?;
        stream.write_all(&header).await?;
        let body = body.clone();
        writers.spawn(async move {
            // All but the last byte; then hold the connection open.
            stream.write_all(&body).await?;
            Ok::<_, std::io::Error>(stream)
        });
    }
    let mut written = Vec::new();
    while written.len() < ADMITTED {
        let joined = tokio::time::timeout(Duration::from_secs(60), writers.join_next())
            .await?
            .expect("writers left");
        written.push(joined??);
    }
    still_serving(&client).await?;
    let exposed = crate::status::scrape(metrics).await?;
    let held = crate::status::sample(&exposed, "teamlog_transport_input_bytes_held");
    let frame_and_header = FRAME + proto::frame::FRAME_HEADER_LEN;
    assert_eq!(
        held,
        Some((ADMITTED * frame_and_header) as f64),
        "{exposed}"
    );
    // Every stalled connection is open, and the client's: the last ones
    // may still be waiting in the accept queue on a busy machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let exposed = crate::status::scrape(metrics).await?;
        let connections = crate::status::sample(&exposed, "teamlog_transport_connections");
        if connections.is_some_and(|c| c > CONNECTIONS as f64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections: {connections:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = vm_rss_kib(pid)?;
    let bound = 256 * 1024 + 64 * 1024;
    assert!(
        rss_after < rss_before + bound,
        "rss grew from {rss_before} KiB to {rss_after} KiB, past the budget of 256 MiB and 64 MiB to spare"
    );
    writers.abort_all();
    drop(written);
    still_serving(&client).await?;
    Ok(tlog.stop().await?)
}
