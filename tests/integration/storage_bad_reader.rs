//! A peer that floods a storage server with range reads over large values
//! and never reads the replies: the server produces replies only up to the
//! connection's share of its reply budget, so its memory stays bounded,
//! and it keeps serving others.

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use client::Client;
use proto::rpc::{Envelope, GetRangeRequest, Message};
use proto::transport::RpcClient;
use proto::{Mutation, Version};
use testkit::{ClusterSpec, LocalCluster};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const VALUES: usize = 60;
const VALUE_BYTES: usize = 100_000;
const FLOOD: u64 = 200;

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS present");
    Ok(line.split_whitespace().nth(1).expect("a number").parse()?)
}

fn whole_range(version: Version) -> GetRangeRequest {
    GetRangeRequest {
        begin: Bytes::new(),
        end: Bytes::from_static(b"\xff"),
        limit: 10_000,
        reverse: false,
        version,
        copy: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_range_replies_holds_a_bounded_share() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        teams: 1,
        // Raw frames are written below; plain TCP keeps that simple.
        tls: false,
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let client = Client::new(&local.cluster)?;
    let mut version = Version::ZERO;
    for i in 0..VALUES {
        version = client
            .commit(vec![Mutation::SetValue {
                key: Bytes::from(format!("k{i:03}")),
                value: Bytes::from(vec![b'v'; VALUE_BYTES]),
            }])
            .await?;
    }
    let entry = &local.cluster.storage_servers[0];
    let pid = local.storage[&entry.id]
        .as_ref()
        .and_then(|s| s.pid())
        .expect("running");
    // Each range reply is about 4 MiB; a reader must see them all.
    let reader = RpcClient::connect(entry.address, local.cluster.client_config()?).await?;
    let read_all = || async {
        match reader.call(Message::GetRange(whole_range(version))).await? {
            Message::GetRangeReply(reply) => Ok(reply.pairs.len()),
            other => bail!("unexpected {}", other.name()),
        }
    };
    ensure!(read_all().await? > 0);
    let rss_before = vm_rss_kib(pid)?;

    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut flood = socket.connect(entry.address).await?;
    for request_id in 1..=FLOOD {
        let payload = Envelope {
            request_id,
            message: Message::GetRange(whole_range(version)),
        }
        .encode()
        .into_bytes();
        flood
            .write_all(&proto::frame::frame_header(&payload, u32::MAX)?)
            .await?;
        flood.write_all(&payload).await?;
    }
    // The server keeps answering others meanwhile; twenty of their reads
    // give it time to take in the flood.
    for _ in 0..20 {
        read_all().await?;
    }
    let rss_after = vm_rss_kib(pid)?;
    ensure!(
        rss_after < rss_before + 160 * 1024,
        "rss grew from {rss_before} KiB to {rss_after} KiB: replies to a peer that does not read were not bounded"
    );
    drop(flood);
    Ok(local.stop().await?)
}
