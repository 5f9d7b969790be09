//! The server side: accepts connections and answers each request through
//! a [`Responder`], many at once per connection.
//!
//! ```text
//!  read loop ──grant──▶ Service::handle(request, Responder)
//!  (stops at the           │ reply now, keep the responder and reply
//!   in-flight cap and      │ later from anywhere, or reply_with(future)
//!   the reply budgets)     ▼
//!        writer task ◀── (frame, grant): the grant returns once it is written
//! ```
//!
//! A grant is the request's place under the connection's in-flight cap and
//! the reply bytes its service says it may need
//! ([`Service::reply_size_bound`]), from the connection's share and the
//! process's reply budget (see `budget`).
//!
//! A service that can answer without a task of its own (a TLog keeps each
//! commit's responder until the sync that makes it durable) costs no task,
//! no channel and no boxed future per request; the others run a future per
//! request with [`Responder::reply_with`]. A responder dropped unanswered,
//! as when its handler panics, answers `unknown`, so the caller is not left
//! waiting.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::budget::{ByteBudget, ReplyGrant};
use super::frame_reader::FrameReader;
use super::net::{Connected, Listener, Stream};
use super::{write_frames, Outbox, ServerConfig};
use crate::frame::{FrameCodec, FrameError, FramePayload, FRAME_HEADER_LEN};
use crate::rpc::{DecodeError, Envelope, ErrorCode, ErrorReply, Message};

/// What a server does with requests.
pub trait Service: Send + Sync + 'static {
    /// Answers one request through `responder`: at once, later from any
    /// thread, or with a future run as a task of the connection
    /// ([`Responder::reply_with`]). `Err(ErrorReply)` is sent as
    /// `Message::Error`.
    fn handle(&self, request: Message, responder: Responder);

    /// The most bytes `request`'s reply may take encoded; that much of the
    /// reply budgets is held from before the request is handled until its
    /// reply is written. A larger reply is still sent, counted only if the
    /// budgets have room for it then.
    fn reply_size_bound(&self, request: &Message) -> usize {
        let _ = request;
        SMALL_REPLY_BOUND
    }
}

/// The reply bound of requests whose service names none: room for a status
/// report or an error message.
pub const SMALL_REPLY_BOUND: usize = 16 << 10;

/// The way back to the caller of one request.
pub struct Responder {
    way: Way,
}

enum Way {
    /// Over a connection. It holds the request's grant (its place under the
    /// in-flight cap, and its reply bytes) until its reply is written;
    /// `None` once answered.
    Connection {
        request_id: u64,
        link: Arc<Link>,
        grant: Option<ReplyGrant>,
    },
    /// To a caller of this process ([`local`](super::local)); `None` once
    /// answered.
    Local {
        reply: Option<oneshot::Sender<Message>>,
        /// Cancelled when the server stops serving.
        stopped: CancellationToken,
    },
}

/// What a connection's responders share.
struct Link {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    max_frame_len: u32,
    /// Cancelled when the connection's unfinished requests are dropped.
    requests: CancellationToken,
    /// The connection's share of the reply budget, and the process's.
    reply_budgets: [ByteBudget; 2],
}

enum Outgoing {
    Reply(FramePayload, ReplyGrant),
    /// Write what is queued before this, then close the connection.
    Close,
}

impl Responder {
    /// The responder of a call from a role of this process.
    pub(super) fn local(reply: oneshot::Sender<Message>, stopped: CancellationToken) -> Responder {
        Responder {
            way: Way::Local {
                reply: Some(reply),
                stopped,
            },
        }
    }

    /// Sends the reply; `Err` goes out as `Message::Error`.
    pub fn reply(mut self, result: Result<Message, ErrorReply>) {
        self.send(result);
    }

    /// Answers with what `future` resolves to, run as a task that is dropped
    /// if the connection drops its unfinished requests (or, for a call of
    /// this process, when the server stops).
    pub fn reply_with<F>(self, future: F)
    where
        F: Future<Output = Result<Message, ErrorReply>> + Send + 'static,
    {
        let requests = match &self.way {
            Way::Connection { link, .. } => link.requests.clone(),
            Way::Local { stopped, .. } => stopped.clone(),
        };
        tokio::spawn(async move {
            if let Some(result) = requests.run_until_cancelled(future).await {
                self.reply(result);
            }
        });
    }

    fn send(&mut self, result: Result<Message, ErrorReply>) {
        let message = result.unwrap_or_else(Message::Error);
        match &mut self.way {
            Way::Connection {
                request_id,
                link,
                grant,
            } => {
                let Some(mut grant) = grant.take() else {
                    return;
                };
                let frame = encode_reply(*request_id, message, link.max_frame_len);
                let [connection, process] = &link.reply_budgets;
                grant.cover(frame.len(), [connection, process]);
                // A closed queue means the connection is gone; nobody waits.
                let _ = link.outgoing.send(Outgoing::Reply(frame, grant));
            }
            Way::Local { reply, .. } => {
                if let Some(reply) = reply.take() {
                    // The caller may have given up; nobody waits then.
                    let _ = reply.send(message);
                }
            }
        }
    }

    /// Whether a reply is still owed to a caller who can get it.
    fn owed(&self) -> bool {
        match &self.way {
            Way::Connection { link, grant, .. } => grant.is_some() && !link.requests.is_cancelled(),
            Way::Local { reply, stopped } => reply.is_some() && !stopped.is_cancelled(),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.owed() {
            self.send(Err(ErrorReply::new(
                ErrorCode::Unknown,
                "the request's handler failed",
            )));
        }
    }
}

/// The server's end of a connection's outgoing queue: replies, until
/// [`Outgoing::Close`] or until every sender is gone.
struct ReplyQueue {
    queue: mpsc::UnboundedReceiver<Outgoing>,
    closing: bool,
    /// The grants of replies handed to the writer and not yet written.
    unwritten: Vec<ReplyGrant>,
    /// The link's `requests`: once the writer is gone no reply can be
    /// delivered, so no request is worth handling.
    requests: CancellationToken,
}

impl Drop for ReplyQueue {
    fn drop(&mut self) {
        // Before the grants go back, so that a request admitted with them
        // sees the connection is over.
        self.requests.cancel();
    }
}

impl ReplyQueue {
    fn frame(&mut self, outgoing: Option<Outgoing>) -> Option<FramePayload> {
        match outgoing {
            Some(Outgoing::Reply(frame, grant)) => {
                self.unwritten.push(grant);
                Some(frame)
            }
            Some(Outgoing::Close) | None => {
                self.closing = true;
                None
            }
        }
    }
}

impl Outbox for ReplyQueue {
    async fn next(&mut self) -> Option<FramePayload> {
        if self.closing {
            return None;
        }
        let outgoing = self.queue.recv().await;
        self.frame(outgoing)
    }

    fn try_next(&mut self) -> Option<FramePayload> {
        if self.closing {
            return None;
        }
        let outgoing = self.queue.try_recv().ok()?;
        self.frame(Some(outgoing))
    }

    fn written(&mut self) {
        self.unwritten.clear();
    }
}

/// After closing a connection for bad input, how long to keep reading (and
/// discarding) what the peer still sends, so that closing with unread data
/// does not reset the connection before the peer has read the error reply.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Back-off after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown` resolves; replies go back through
/// one writer task per connection. On shutdown every connection is closed
/// and its unfinished requests dropped.
pub async fn serve(
    listener: impl Into<Listener>,
    service: Arc<dyn Service>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut listener = listener.into();
    let local = listener.local_addr()?;
    debug!(%local, "serving");
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let budgets = ProcessBudgets {
        // Room for the largest frame, or it could never be read.
        input: ByteBudget::new(
            config
                .input_budget
                .max(FRAME_HEADER_LEN + config.max_frame_len as usize),
        )
        .counted_as("teamlog_transport_input_bytes_held"),
        replies: ByteBudget::new(config.reply_budget)
            .counted_as("teamlog_transport_reply_bytes_held"),
    };
    let registration = config
        .local
        .as_ref()
        .map(|network| network.register(local, &service));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    warn!(%local, %peer, "connection cap reached; closing a new connection");
                    continue;
                };
                let connection = serve_stream(
                    stream,
                    peer,
                    Arc::clone(&service),
                    config.clone(),
                    budgets.clone(),
                    stop.child_token(),
                );
                metrics::gauge!("teamlog_transport_connections").increment(1.0);
                connections.spawn(async move {
                    connection.await;
                    metrics::gauge!("teamlog_transport_connections").decrement(1.0);
                    drop(slot);
                });
            }
            Err(e) if is_per_connection(&e) => {
                debug!(%local, error = %e, "accept failed for one connection");
            }
            Err(e) => {
                warn!(%local, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // No new call of this process reaches a server that stopped, and the
    // calls waiting on it end.
    drop(registration);
    debug!(%local, connections = connections.len(), "shutting down");
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// How a connection's read loop ended.
enum Ending {
    /// The peer closed its side: finish the requests in flight first.
    PeerClosed,
    /// Bad input or a failed read: drop the requests in flight.
    Abort,
    /// The writer task ended (the peer stopped taking replies).
    WriterEnded,
    /// Server shutdown.
    Stopped,
    /// The peer held a frame half sent, or an idle connection, too long.
    TimedOut,
}

/// The byte budgets every connection of a server shares.
#[derive(Clone)]
struct ProcessBudgets {
    input: ByteBudget,
    replies: ByteBudget,
}

async fn serve_stream(
    stream: Connected,
    peer: SocketAddr,
    service: Arc<dyn Service>,
    config: ServerConfig,
    budgets: ProcessBudgets,
    stop: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay() {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    debug!(%peer, "connection accepted");
    // Without TLS every peer is trusted as a member.
    let trusted = PeerInfo {
        addr: peer,
        member: true,
    };
    match (stream, config.tls.clone()) {
        (Connected::Tcp(stream), None) => {
            let (read_half, write_half) = stream.into_split();
            serve_connection(
                read_half, write_half, trusted, service, config, budgets, stop,
            )
            .await
        }
        (Connected::Other(stream), None) => {
            let (read_half, write_half) = tokio::io::split(stream);
            serve_connection(
                read_half, write_half, trusted, service, config, budgets, stop,
            )
            .await
        }
        (Connected::Tcp(stream), Some(tls)) => {
            serve_tls(stream, tls, peer, service, config, budgets, stop).await
        }
        (Connected::Other(stream), Some(tls)) => {
            serve_tls(stream, tls, peer, service, config, budgets, stop).await
        }
    }
}

/// Shakes hands (bounded by the frame timeout), tells a member from a
/// client by its certificate, then serves the encrypted stream.
async fn serve_tls<S: Stream>(
    stream: S,
    tls: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    service: Arc<dyn Service>,
    config: ServerConfig,
    budgets: ProcessBudgets,
    stop: CancellationToken,
) {
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        accepted = tokio::time::timeout(config.frame_timeout, handshake) => match accepted {
            Ok(Ok(stream)) => stream,
            // A port probe connects and closes without a word.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!(%peer, "connection closed before the TLS handshake");
                return;
            }
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "TLS handshake failed; closing connection");
                return;
            }
            Err(_) => {
                warn!(%peer, "TLS handshake took too long; closing connection");
                return;
            }
        },
    };
    // The verifier let the certificate in only if it chains to the
    // cluster's CA; a peer without one is a client.
    let member = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|chain| !chain.is_empty());
    debug!(%peer, member, "TLS connection established");
    let (read_half, write_half) = tokio::io::split(stream);
    let peer = PeerInfo { addr: peer, member };
    serve_connection(read_half, write_half, peer, service, config, budgets, stop).await;
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug)]
struct PeerInfo {
    addr: SocketAddr,
    /// Authenticated as a cluster member (or trusted, without TLS): may send
    /// any request, not only client requests.
    member: bool,
}

async fn serve_connection<R, W>(
    read_half: R,
    write_half: W,
    peer_info: PeerInfo,
    service: Arc<dyn Service>,
    config: ServerConfig,
    budgets: ProcessBudgets,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = peer_info.addr;
    let (outgoing, queue) = mpsc::unbounded_channel();
    let max_frame_len = config.max_frame_len;
    let requests = stop.child_token();
    let replies = ReplyQueue {
        queue,
        closing: false,
        unwritten: Vec::new(),
        requests: requests.clone(),
    };
    let mut writer = tokio::spawn(write_frames(
        write_half,
        max_frame_len,
        replies,
        Some(config.frame_timeout),
    ));

    let max_in_flight = config
        .max_in_flight_per_connection
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let connection = Connection {
        peer,
        member: peer_info.member,
        service,
        link: Arc::new(Link {
            outgoing,
            max_frame_len,
            requests,
            reply_budgets: [
                ByteBudget::new(
                    config
                        .reply_budget_per_connection
                        .min(budgets.replies.capacity()),
                ),
                budgets.replies,
            ],
        }),
        in_flight: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
        frame_timeout: config.frame_timeout,
        idle_timeout: config.idle_timeout,
        stop: stop.clone(),
    };
    let mut frames = FrameReader::new(read_half, FrameCodec::new(max_frame_len), budgets.input);
    let ending = connection.read_loop(&mut frames, &mut writer).await;

    match ending {
        Ending::PeerClosed => connection.finish_requests().await,
        Ending::Abort | Ending::Stopped | Ending::WriterEnded | Ending::TimedOut => {
            connection.link.requests.cancel()
        }
    }
    // The writer writes what is queued, then closes its half.
    let _ = connection.link.outgoing.send(Outgoing::Close);
    drop(connection);
    if !matches!(ending, Ending::WriterEnded) {
        tokio::select! {
            biased;
            result = &mut writer => {
                if let Ok(Err(e)) = result {
                    debug!(%peer, error = %e, "connection write failed");
                }
            }
            () = stop.cancelled() => writer.abort(),
        }
    }
    if matches!(ending, Ending::Abort) {
        linger(frames.into_inner(), &stop).await;
    }
    debug!(%peer, "connection closed");
}

/// Reads and discards what the peer still sends, for a bounded time and
/// amount, until it closes.
async fn linger(mut read_half: impl AsyncRead + Unpin, stop: &CancellationToken) {
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_MAX_BYTES {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    tokio::select! {
        biased;
        _ = tokio::time::timeout(LINGER, drain) => {}
        () = stop.cancelled() => {}
    }
}

/// What a connection's timeouts go by.
struct Watch {
    every: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether a frame arrived since the last check.
    activity: bool,
    idle_since: Instant,
    /// Since when the read buffer has held part of a frame.
    partial_since: Option<Instant>,
}

struct Connection {
    peer: SocketAddr,
    /// May send requests other than client requests.
    member: bool,
    service: Arc<dyn Service>,
    link: Arc<Link>,
    /// One permit per request being handled; past the cap the loop stops
    /// reading until a reply is written.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    frame_timeout: Duration,
    idle_timeout: Duration,
    stop: CancellationToken,
}

impl Connection {
    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        frames: &mut FrameReader<R>,
        writer: &mut tokio::task::JoinHandle<Result<(), FrameError>>,
    ) -> Ending {
        let every = self.frame_timeout.min(self.idle_timeout) / 4;
        let mut watch = Watch {
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            activity: false,
            idle_since: Instant::now(),
            partial_since: None,
        };
        loop {
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ending::Stopped,
                result = &mut *writer => return self.writer_ended(result),
                permit = self.in_flight.clone().acquire_owned() => {
                    permit.expect("the in-flight semaphore is never closed")
                }
            };
            let frame = match self.next_frame(frames, writer, &mut watch).await {
                Ok(frame) => frame,
                Err(ending) => return ending,
            };
            let Some(frame) = frame else {
                return Ending::PeerClosed;
            };
            if let Err(ending) = self.on_frame(frame, permit, writer).await {
                return ending;
            }
        }
    }

    /// Waits for the next frame, closing the connection when a frame takes
    /// longer than `frame_timeout` to arrive once begun, or when nothing
    /// comes for `idle_timeout` while no request is in flight (a request in
    /// flight, such as a long poll, keeps it open). One timer per
    /// connection checks a few times per timeout, from what arrived since
    /// and what the read buffer holds, so reading a frame arms no timer.
    async fn next_frame<R: AsyncRead + Unpin>(
        &self,
        frames: &mut FrameReader<R>,
        writer: &mut tokio::task::JoinHandle<Result<(), FrameError>>,
        watch: &mut Watch,
    ) -> Result<Option<Result<Bytes, FrameError>>, Ending> {
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(Ending::Stopped),
                result = &mut *writer => return Err(self.writer_ended(result)),
                frame = frames.next() => {
                    watch.activity = true;
                    return Ok(frame);
                }
                () = &mut watch.timer => {}
            }
            let now = Instant::now();
            watch.timer.as_mut().reset(now + watch.every);
            let activity = std::mem::take(&mut watch.activity);
            if activity {
                watch.idle_since = now;
            }
            if frames.read_buffer().is_empty() {
                watch.partial_since = None;
                // The permit the read loop holds is not a request in flight.
                let busy = self.in_flight.available_permits() + 1 < self.max_in_flight;
                if busy {
                    watch.idle_since = now;
                } else if now.duration_since(watch.idle_since) >= self.idle_timeout {
                    debug!(peer = %self.peer, "idle connection; closing");
                    return Err(Ending::TimedOut);
                }
            } else {
                watch.idle_since = now;
                if activity {
                    watch.partial_since = Some(now);
                }
                let since = *watch.partial_since.get_or_insert(now);
                if now.duration_since(since) >= self.frame_timeout {
                    warn!(peer = %self.peer, "a frame took too long to arrive; closing");
                    return Err(Ending::TimedOut);
                }
            }
        }
    }

    fn writer_ended(
        &self,
        result: Result<Result<(), FrameError>, tokio::task::JoinError>,
    ) -> Ending {
        if let Ok(Err(e)) = result {
            debug!(peer = %self.peer, error = %e, "connection write failed");
        }
        Ending::WriterEnded
    }

    fn responder(&self, request_id: u64, grant: ReplyGrant) -> Responder {
        Responder {
            way: Way::Connection {
                request_id,
                link: Arc::clone(&self.link),
                grant: Some(grant),
            },
        }
    }

    /// Reserves `bytes` of reply (at most the connection's share) on the
    /// connection and then in the process, waiting while either is spent.
    async fn reserve_reply(
        &self,
        in_flight: OwnedSemaphorePermit,
        bytes: usize,
        writer: &mut tokio::task::JoinHandle<Result<(), FrameError>>,
    ) -> Result<ReplyGrant, Ending> {
        let [connection, process] = &self.link.reply_budgets;
        let bytes = bytes.min(connection.capacity());
        let reserve = async {
            let on_connection = connection.acquire(bytes).await;
            let in_process = process.acquire(bytes).await;
            ReplyGrant::new(in_flight, [on_connection, in_process], bytes)
        };
        let grant = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(Ending::Stopped),
            result = &mut *writer => return Err(self.writer_ended(result)),
            grant = reserve => grant,
        };
        if self.link.requests.is_cancelled() {
            // The writer gave its grants back as it ended.
            return Err(Ending::WriterEnded);
        }
        Ok(grant)
    }

    /// Handles one frame; `Err` ends the connection.
    async fn on_frame(
        &self,
        frame: Result<Bytes, FrameError>,
        permit: OwnedSemaphorePermit,
        writer: &mut tokio::task::JoinHandle<Result<(), FrameError>>,
    ) -> Result<(), Ending> {
        let unreserved = ReplyGrant::unreserved;
        let payload = match frame {
            Ok(payload) => payload,
            Err(FrameError::Io(e)) => {
                debug!(peer = %self.peer, error = %e, "connection read failed");
                return Err(Ending::Abort);
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "bad frame; closing connection");
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    _ => ErrorCode::MalformedRequest,
                };
                self.responder(0, unreserved(permit))
                    .reply(Err(ErrorReply::new(code, e.to_string())));
                return Err(Ending::Abort);
            }
        };
        match Envelope::decode(payload) {
            Ok(envelope) if !self.member && !envelope.message.is_client_request() => {
                let name = envelope.message.name();
                warn!(peer = %self.peer, message = name, "cluster-internal request from a non-member; refused");
                let error = ErrorReply::new(
                    ErrorCode::Unauthorized,
                    format!("{name} is for cluster members, and this connection presented no member certificate"),
                );
                self.responder(envelope.request_id, unreserved(permit))
                    .reply(Err(error));
            }
            Ok(envelope) if envelope.message.is_request() => {
                let bound = self.service.reply_size_bound(&envelope.message);
                let grant = self.reserve_reply(permit, bound, writer).await?;
                let responder = self.responder(envelope.request_id, grant);
                self.service.handle(envelope.message, responder);
            }
            Ok(envelope) => {
                warn!(peer = %self.peer, message = envelope.message.name(), "reply sent as a request");
                self.responder(envelope.request_id, unreserved(permit))
                    .reply(Err(not_a_request(&envelope.message)));
            }
            Err(DecodeError::UnknownMessage { request_id }) => {
                warn!(peer = %self.peer, request_id, "unknown message type");
                let error = ErrorReply::new(ErrorCode::UnknownMessage, "unknown message type");
                self.responder(request_id, unreserved(permit))
                    .reply(Err(error));
            }
            Err(DecodeError::InvalidContent { request_id, reason }) => {
                warn!(peer = %self.peer, request_id, %reason, "invalid request");
                let error = ErrorReply::new(ErrorCode::MalformedRequest, reason);
                self.responder(request_id, unreserved(permit))
                    .reply(Err(error));
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "undecodable request; closing connection");
                let error = ErrorReply::new(ErrorCode::MalformedRequest, e.to_string());
                self.responder(0, unreserved(permit)).reply(Err(error));
                return Err(Ending::Abort);
            }
        }
        Ok(())
    }

    /// Waits until every request in flight has its reply queued, unless the
    /// server shuts down.
    async fn finish_requests(&self) {
        tokio::select! {
            biased;
            _ = self.in_flight.acquire_many(self.max_in_flight as u32) => {}
            () = self.stop.cancelled() => self.link.requests.cancel(),
        }
    }
}

/// The answer to a reply sent where a request belongs.
pub(super) fn not_a_request(message: &Message) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::UnknownMessage,
        format!("{} is not a request", message.name()),
    )
}

/// Encodes a reply, replacing one too large to frame with an error so the
/// caller hears about it instead of the connection dying.
fn encode_reply(request_id: u64, message: Message, max_frame_len: u32) -> FramePayload {
    let frame = Envelope {
        request_id,
        message,
    }
    .encode();
    if frame.len() <= max_frame_len as usize {
        return frame;
    }
    let error = ErrorReply::new(
        ErrorCode::FrameTooLarge,
        format!(
            "reply of {} bytes exceeds the frame cap of {max_frame_len} bytes",
            frame.len()
        ),
    );
    Envelope {
        request_id,
        message: Message::Error(error),
    }
    .encode()
}
