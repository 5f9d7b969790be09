//! Multiplexed RPC over TCP: one connection carries many requests at once,
//! each reply matched to its request by `request_id`.
//!
//! ```text
//!  RpcClient::call ──▶ writer task ══ frames ══▶ read loop ──▶ Service::handle(request, Responder)
//!   (pending map:                                 (stops reading     │
//!    request_id →                                  at the in-flight  ▼
//!    oneshot)     ◀── reader task ◀══ frames ══  writer task ◀── Responder::reply
//! ```
//!
//! Bad input on a server connection never takes the server down: a frame
//! that is too large, fails its checksum or is not a flatbuffer gets an
//! [`ErrorReply`](crate::rpc::ErrorReply) with request id 0 and the
//! connection is closed; a well-formed frame with a message the server does
//! not answer gets `unknown_message` for its request id and the connection
//! stays open.
//!
//! Roles of one process that share a [`local::LocalNetwork`] skip all of
//! this: a call hands its request to the server's `Service` directly.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::Instant;

use frame_writer::FrameWriter;

use crate::frame::{FrameError, FramePayload, DEFAULT_MAX_FRAME_LEN};
use crate::rpc::{DecodeError, ErrorCode};
use crate::types::Version;

mod budget;
mod client;
mod frame_reader;
mod frame_writer;
pub mod local;
pub mod net;
mod peer;
mod server;
pub mod tls;

pub use client::RpcClient;
pub use peer::{Peer, PeerPool};
pub use server::{serve, Responder, Service, SMALL_REPLY_BOUND};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connection i/o: {0}")]
    Io(io::Error),
    #[error("framing: {0}")]
    Frame(FrameError),
    #[error("undecodable reply: {0}")]
    Decode(DecodeError),
    /// The server answered the request with an error; `version` is the
    /// version the refusal concerns, when it names one.
    #[error("remote error {code}: {message}")]
    Remote {
        code: ErrorCode,
        message: String,
        version: Option<Version>,
    },
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection ended before the reply came; the request may or may
    /// not have been carried out.
    #[error("connection closed")]
    ConnectionClosed,
    /// The reply is of a different kind than the request calls for.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(&'static str),
}

impl RpcError {
    /// Whether the same request, sent again, may succeed: the connection
    /// failed or timed out, or the server was busy or dropped the request.
    /// Whether the first attempt was carried out is unknown, so only
    /// requests the server takes idempotently may be sent again.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Connect(_)
            | RpcError::Io(_)
            | RpcError::Timeout
            | RpcError::ConnectionClosed => true,
            RpcError::Remote { code, .. } => matches!(
                code,
                ErrorCode::Unknown
                    | ErrorCode::Unavailable
                    | ErrorCode::Overloaded
                    | ErrorCode::Timeout
            ),
            RpcError::Frame(_) | RpcError::Decode(_) | RpcError::UnexpectedReply(_) => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The largest frame sent or accepted; match the server's.
    pub max_frame_len: u32,
    pub connect_timeout: Duration,
    /// The default wait for a reply in [`RpcClient::call`].
    pub request_timeout: Duration,
    /// Connect over TLS with this configuration (see [`tls`]); plain TCP
    /// when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect through this network instead of the operating system's TCP
    /// (a simulation's).
    pub dialer: Option<Arc<dyn net::Dialer>>,
    /// Reach the servers of this process that serve on the same network
    /// through an in-memory pipe instead of a socket (see [`local`]).
    pub local: Option<Arc<local::LocalNetwork>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            tls: None,
            dialer: None,
            local: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_frame_len: u32,
    /// Requests of one connection handled at once; past it the server stops
    /// reading that connection until one finishes (at least 1).
    pub max_in_flight_per_connection: usize,
    /// Connections served at once; one more is closed as soon as it is
    /// accepted.
    pub max_connections: usize,
    /// How long a frame may take to arrive once its first bytes have, and
    /// how long the peer may take to take a burst of replies: a peer that
    /// trickles a frame, or does not read, is closed.
    pub frame_timeout: Duration,
    /// How long a connection with no request in flight may send nothing
    /// before it is closed (clients reconnect on their next call).
    pub idle_timeout: Duration,
    /// Bytes of large frames (32 KiB or more) being received at once,
    /// across every connection; a connection whose next frame does not fit
    /// waits before reading its body. At least one largest frame.
    pub input_budget: usize,
    /// Reply bytes held at once across every connection, from before a
    /// request is handled until its reply is written (each request holds
    /// its service's [`Service::reply_size_bound`]); requests wait to be
    /// read while it is spent.
    pub reply_budget: usize,
    /// One connection's share of `reply_budget`: a peer that does not read
    /// its replies stops being read once it holds this much.
    pub reply_budget_per_connection: usize,
    /// Serve over TLS with this configuration (see [`tls`]): a peer that
    /// presents no certificate may send client requests only. Plain TCP
    /// when `None`, and then every peer is trusted as a member.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Also take connections from the clients of this process on this
    /// network, as members, without TLS (see [`local`]).
    pub local: Option<Arc<local::LocalNetwork>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_in_flight_per_connection: 256,
            max_connections: 1024,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            input_budget: 256 << 20,
            reply_budget: 256 << 20,
            reply_budget_per_connection: 32 << 20,
            tls: None,
            local: None,
        }
    }
}

/// Requests a client connection queues for writing before callers wait.
const OUTGOING_QUEUE: usize = 1024;

/// Where a connection's writer takes the frames to send.
trait Outbox: Send {
    /// The next frame, waiting for one; `None` once the queue is closed.
    fn next(&mut self) -> impl std::future::Future<Output = Option<FramePayload>> + Send;
    /// The next frame if one is queued.
    fn try_next(&mut self) -> Option<FramePayload>;
    /// Every frame handed out so far has been written.
    fn written(&mut self) {}
}

impl Outbox for mpsc::Receiver<FramePayload> {
    async fn next(&mut self) -> Option<FramePayload> {
        self.recv().await
    }

    fn try_next(&mut self) -> Option<FramePayload> {
        self.try_recv().ok()
    }
}

/// Writes closer together than this mark a busy connection.
const BUSY_WRITE_INTERVAL: Duration = Duration::from_micros(100);

/// Writes queued payloads as frames until the queue closes, flushing only
/// when the queue runs dry so that a burst of frames shares one write. A
/// flush that takes longer than `flush_timeout` (the peer is not reading)
/// ends the writer with a timed-out error.
///
/// While the connection is busy (the last write carried more than one
/// frame, or ended less than [`BUSY_WRITE_INTERVAL`] ago) it yields once
/// before flushing: tasks woken together (the waiters
/// of one TLog sync, say) then queue their frames first and share the
/// write, which saves a system call per frame. A lone request is written at
/// once, since the yield costs a pass of the scheduler on every hop.
async fn write_frames<W: AsyncWrite + Unpin>(
    io: W,
    max_frame_len: u32,
    mut queue: impl Outbox,
    flush_timeout: Option<Duration>,
) -> Result<(), FrameError> {
    let mut sink = FrameWriter::new(io, max_frame_len);
    let mut last_flush: Option<(Instant, usize)> = None;
    while let Some(frame) = queue.next().await {
        sink.push(frame)?;
        let mut frames = 1 + push_queued(&mut sink, &mut queue)?;
        let busy =
            last_flush.is_some_and(|(at, frames)| frames > 1 || at.elapsed() < BUSY_WRITE_INTERVAL);
        if busy {
            tokio::task::yield_now().await;
            frames += push_queued(&mut sink, &mut queue)?;
        }
        within(flush_timeout, sink.flush()).await?;
        queue.written();
        last_flush = Some((Instant::now(), frames));
    }
    within(flush_timeout, sink.close()).await
}

/// Runs a write, failing it as timed out past `limit`.
async fn within(
    limit: Option<Duration>,
    write: impl std::future::Future<Output = Result<(), FrameError>>,
) -> Result<(), FrameError> {
    match limit {
        None => write.await,
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the peer is not reading").into())
            }),
    }
}

/// Queues every frame already waiting; returns how many.
fn push_queued<W: AsyncWrite + Unpin>(
    sink: &mut FrameWriter<W>,
    queue: &mut impl Outbox,
) -> Result<usize, FrameError> {
    let mut pushed = 0;
    while let Some(frame) = queue.try_next() {
        sink.push(frame)?;
        pushed += 1;
    }
    Ok(pushed)
}
