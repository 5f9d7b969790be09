//! The baselines `teamlog bench tlog` measures next to the TLog in the same
//! run: what the disk does without the TLog, and what the transport does
//! without a disk.
//!
//! ```text
//!  raw appends:      write(batch) + fdatasync, in a loop    (the disk alone)
//!  instant commits:  committers ─commit─▶ reply at once      (the RPC path alone)
//! ```
//!
//! Together with the TLog on tmpfs (everything but the disk)
//! they say where a durable commit's time goes: the disk's share is the gap
//! between the file and memory TLogs, the TLog's own share the gap between
//! the memory TLog and instant commits.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use proto::rpc::{ErrorCode, ErrorReply, Message, TLogCommitReply};
use proto::transport::{serve, Responder, ServerConfig, Service};
use tokio::net::TcpListener;

use crate::bench::measure::{new_histogram, Sample};

/// Sequential appends of `batch` bytes, each followed by fdatasync, into a
/// zero-filled preallocated file (as the log's segments are).
pub(crate) fn raw_appends(path: &Path, batch: usize, seconds: Duration) -> Result<Sample> {
    const FILE_SIZE: u64 = 256 << 20;
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    if file.metadata()?.len() < FILE_SIZE {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..FILE_SIZE >> 20 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    let data = vec![0xa5u8; batch];
    let mut histogram = new_histogram();
    let mut offset = 0u64;
    let mut syncs = 0u64;
    let started = Instant::now();
    while started.elapsed() < seconds {
        if offset + batch as u64 > FILE_SIZE {
            offset = 0;
        }
        let sent = Instant::now();
        file.write_all_at(&data, offset)?;
        file.sync_data()?;
        histogram.record(sent.elapsed().as_micros() as u64)?;
        offset += batch as u64;
        syncs += 1;
    }
    let sample = Sample {
        ops: syncs,
        bytes: 0,
        latencies: histogram,
        elapsed: started.elapsed(),
    };
    Ok(sample.sized(batch))
}

/// Answers every commit at once with its version, keeping nothing.
struct InstantCommits;

impl Service for InstantCommits {
    fn handle(&self, request: Message, responder: Responder) {
        let reply = match request {
            Message::TLogCommit(commit) => Ok(Message::TLogCommitReply(TLogCommitReply {
                version: commit.version,
            })),
            other => Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("instant commits answer only commits, not {}", other.name()),
            )),
        };
        responder.reply(reply);
    }
}

/// Serves instant commits on `listener` until `shutdown` resolves.
pub(crate) async fn serve_instant_commits(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve(
        listener,
        Arc::new(InstantCommits),
        ServerConfig::default(),
        shutdown,
    )
    .await
}
