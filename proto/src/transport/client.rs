//! The client side: many concurrent calls over one connection.
//!
//! A call registers a oneshot under a fresh request id, queues its frame to
//! the writer task and waits; the reader task completes the oneshot whose id
//! the reply carries. When either task ends, the connection is closed and
//! every pending call gets `ConnectionClosed`. A server of this process is
//! called through a [`LocalLink`] instead, with no connection at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::local::LocalLink;
use super::net::{Connected, Stream};
use super::tls::member_server_name;
use super::{write_frames, ClientConfig, RpcError, OUTGOING_QUEUE};
use crate::frame::{FrameCodec, FrameError, FramePayload};
use crate::rpc::{
    DecodeError, Envelope, LockReply, Message, PeekReply, PeekRequest, PopRequest,
    RegisterTeamRequest, TLogCommitReply, TLogCommitRequest, TLogStatusReply,
};

type ReplySender = oneshot::Sender<Result<Message, RpcError>>;

/// A connection to one server. Clones share the connection; it closes when
/// the last clone is dropped.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    peer: SocketAddr,
    config: ClientConfig,
    way: Way,
}

enum Way {
    Connection(Connection),
    Local(LocalLink),
}

/// The caller's side of a connection's two tasks.
struct Connection {
    outgoing: mpsc::Sender<FramePayload>,
    shared: Arc<Shared>,
    next_request_id: AtomicU64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// What the caller side and the connection tasks share.
struct Shared {
    pending: Mutex<Pending>,
    closed: AtomicBool,
    /// Ends both connection tasks.
    stop: CancellationToken,
}

struct Pending {
    /// Ordered, so that a close wakes its callers in the same order in
    /// every run of a simulation.
    calls: BTreeMap<u64, ReplySender>,
    /// Set under the lock together with draining `calls`, so no call can
    /// register after the drain and wait forever.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves the map consistent (every
        // operation on it is a single insert or remove), so keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, request_id: u64, reply: ReplySender) -> Result<(), RpcError> {
        let mut pending = self.lock();
        if pending.closed {
            return Err(RpcError::ConnectionClosed);
        }
        pending.calls.insert(request_id, reply);
        Ok(())
    }

    fn complete(&self, request_id: u64, reply: Result<Message, RpcError>) {
        let sender = self.lock().calls.remove(&request_id);
        match sender {
            // The caller may have given up in the meantime; nothing to do.
            Some(sender) => drop(sender.send(reply)),
            None => debug!(request_id, "reply for a call no longer waiting"),
        }
    }

    fn forget(&self, request_id: u64) {
        self.lock().calls.remove(&request_id);
    }

    /// Ends the connection; dropping the senders wakes every pending call
    /// with `ConnectionClosed`.
    fn close(&self) {
        let calls = {
            let mut pending = self.lock();
            pending.closed = true;
            std::mem::take(&mut pending.calls)
        };
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        drop(calls);
    }
}

/// Removes a call's entry however the call ends (reply, timeout, or the
/// caller dropping the future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.request_id);
    }
}

impl RpcClient {
    /// Connects, over TLS when `config.tls` says so, checking that the
    /// server is a cluster member.
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<RpcClient, RpcError> {
        let timed_out = || {
            RpcError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection to {addr} within {:?}",
                    config.connect_timeout
                ),
            ))
        };
        if let Some(link) = config.local.as_ref().and_then(|network| network.link(addr)) {
            debug!(peer = %addr, "calling a server of this process");
            return Ok(RpcClient {
                inner: Arc::new(ClientInner {
                    peer: addr,
                    config,
                    way: Way::Local(link),
                }),
            });
        }
        let connecting = async {
            let stream = Connected::connect(addr, &config)
                .await
                .map_err(RpcError::Connect)?;
            stream.set_nodelay().map_err(RpcError::Connect)?;
            match (stream, config.tls.clone()) {
                (Connected::Tcp(stream), None) => {
                    let (read_half, write_half) = stream.into_split();
                    Ok(Self::start(read_half, write_half, addr, config.clone()))
                }
                (Connected::Other(stream), None) => {
                    let (read_half, write_half) = tokio::io::split(stream);
                    Ok(Self::start(read_half, write_half, addr, config.clone()))
                }
                (Connected::Tcp(stream), Some(tls)) => {
                    Self::start_tls(stream, tls, addr, config.clone()).await
                }
                (Connected::Other(stream), Some(tls)) => {
                    Self::start_tls(stream, tls, addr, config.clone()).await
                }
            }
        };
        tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| timed_out())?
    }

    /// Shakes hands over `stream`, checking that the server is a member,
    /// then runs the connection over the encrypted stream.
    async fn start_tls<S: Stream>(
        stream: S,
        tls: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<RpcClient, RpcError> {
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(member_server_name(), stream)
            .await
            .map_err(RpcError::Connect)?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(Self::start(read_half, write_half, addr, config))
    }

    /// Runs the connection's writer and reader tasks over its two halves.
    fn start<R, W>(read_half: R, write_half: W, addr: SocketAddr, config: ClientConfig) -> RpcClient
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                calls: BTreeMap::new(),
                closed: false,
            }),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);

        let writer_shared = Arc::clone(&shared);
        let max_frame_len = config.max_frame_len;
        tokio::spawn(async move {
            tokio::select! {
                biased;
                result = write_frames(write_half, max_frame_len, queue, None) => {
                    if let Err(e) = result {
                        debug!(peer = %addr, error = %e, "client connection write failed");
                    }
                }
                () = writer_shared.stop.cancelled() => {}
            }
            writer_shared.close();
        });

        let reader_shared = Arc::clone(&shared);
        let reader = FramedRead::new(read_half, FrameCodec::new(max_frame_len));
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = read_replies(reader, &reader_shared, addr) => {}
                () = reader_shared.stop.cancelled() => {}
            }
            reader_shared.close();
        });

        debug!(peer = %addr, "client connected");
        RpcClient {
            inner: Arc::new(ClientInner {
                peer: addr,
                config,
                way: Way::Connection(Connection {
                    outgoing,
                    shared,
                    next_request_id: AtomicU64::new(1),
                }),
            }),
        }
    }

    /// Sends a request and waits for its reply for up to the configured
    /// request timeout. An error reply comes back as
    /// `Err(RpcError::Remote{..})`.
    pub async fn call(&self, message: Message) -> Result<Message, RpcError> {
        self.call_with_timeout(message, self.inner.config.request_timeout)
            .await
    }

    pub async fn call_with_timeout(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RpcError> {
        let exchange = async {
            match &self.inner.way {
                Way::Connection(connection) => {
                    connection
                        .call(message, self.inner.config.max_frame_len)
                        .await
                }
                Way::Local(link) => link.call(message).await,
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(RpcError::Timeout),
            Ok(Ok(Message::Error(e))) => Err(RpcError::Remote {
                code: e.code,
                message: e.message,
                version: e.version,
            }),
            Ok(reply) => reply,
        }
    }

    /// Whether the two are clones of one connection.
    pub(super) fn same_connection(&self, other: &RpcClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the connection has ended; every later call fails with
    /// `ConnectionClosed`.
    pub fn is_closed(&self) -> bool {
        match &self.inner.way {
            Way::Connection(connection) => connection.shared.closed.load(Ordering::Acquire),
            Way::Local(link) => link.is_closed(),
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    pub async fn tlog_commit(
        &self,
        request: TLogCommitRequest,
    ) -> Result<TLogCommitReply, RpcError> {
        match self.call(Message::TLogCommit(request)).await? {
            Message::TLogCommitReply(reply) => Ok(reply),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }

    pub async fn peek(&self, request: PeekRequest) -> Result<PeekReply, RpcError> {
        // A long poll may legitimately take its whole timeout before the
        // reply is sent.
        let timeout = self.inner.config.request_timeout
            + Duration::from_millis(u64::from(request.timeout_ms));
        match self
            .call_with_timeout(Message::Peek(request), timeout)
            .await?
        {
            Message::PeekReply(reply) => Ok(reply),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }

    pub async fn pop(&self, request: PopRequest) -> Result<(), RpcError> {
        match self.call(Message::Pop(request)).await? {
            Message::PopReply => Ok(()),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }

    pub async fn lock(&self) -> Result<LockReply, RpcError> {
        match self.call(Message::Lock).await? {
            Message::LockReply(reply) => Ok(reply),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }

    pub async fn register_team(&self, request: RegisterTeamRequest) -> Result<(), RpcError> {
        match self.call(Message::RegisterTeam(request)).await? {
            Message::RegisterTeamReply => Ok(()),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }

    pub async fn status(&self) -> Result<TLogStatusReply, RpcError> {
        match self.call(Message::Status).await? {
            Message::TLogStatus(reply) => Ok(reply),
            other => Err(RpcError::UnexpectedReply(other.name())),
        }
    }
}

impl Connection {
    /// Sends `message` framed and waits for the reply with its request id.
    async fn call(&self, message: Message, max_frame_len: u32) -> Result<Message, RpcError> {
        // Id 0 is what servers use for errors about the connection itself.
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = Envelope {
            request_id,
            message,
        }
        .encode();
        if frame.len() > max_frame_len as usize {
            return Err(RpcError::Frame(FrameError::TooLarge {
                len: frame.len() as u64,
                max: max_frame_len,
            }));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.register(request_id, reply_tx)?;
        let _guard = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        self.outgoing
            .send(frame)
            .await
            .map_err(|_| RpcError::ConnectionClosed)?;
        reply_rx.await.map_err(|_| RpcError::ConnectionClosed)?
    }
}

/// Hands each reply to its waiting call until the stream ends or carries
/// something that cannot be matched to a call.
async fn read_replies<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, FrameCodec>,
    shared: &Shared,
    peer: SocketAddr,
) {
    while let Some(frame) = frames.next().await {
        let payload = match frame {
            Ok(payload) => payload,
            Err(FrameError::Io(e)) => {
                debug!(%peer, error = %e, "client connection read failed");
                return;
            }
            Err(e) => {
                warn!(%peer, error = %e, "bad frame from server; closing connection");
                return;
            }
        };
        match Envelope::decode(payload) {
            Ok(Envelope {
                request_id: 0,
                message: Message::Error(e),
            }) => {
                warn!(%peer, code = %e.code, message = %e.message, "server refused the connection");
            }
            Ok(envelope) => shared.complete(envelope.request_id, Ok(envelope.message)),
            Err(e @ DecodeError::UnknownMessage { request_id }) => {
                shared.complete(request_id, Err(RpcError::Decode(e)));
            }
            Err(e) => {
                warn!(%peer, error = %e, "undecodable reply; closing connection");
                return;
            }
        }
    }
    debug!(%peer, "server closed the connection");
}
