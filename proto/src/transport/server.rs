//! The server side: accepts connections and runs a [`Service`] for each
//! request, many at once per connection.
//!
//! Per connection, one loop reads frames and spawns a task per request (up to
//! the in-flight cap, after which it stops reading); replies go through one
//! writer task. A request whose handler panics is answered `unknown` so its
//! caller is not left waiting.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{write_frames, ServerConfig, OUTGOING_QUEUE};
use crate::frame::{FrameCodec, FrameError};
use crate::rpc::{DecodeError, Envelope, ErrorCode, ErrorReply, Message};

/// What a server does with requests.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. `Ok(reply)`, or `Err(ErrorReply)` which is sent
    /// as `Message::Error`.
    fn handle(&self, request: Message) -> BoxFuture<'static, Result<Message, ErrorReply>>;
}

/// After closing a connection for bad input, how long to keep reading (and
/// discarding) what the peer still sends, so that closing with unread data
/// does not reset the connection before the peer has read the error reply.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Back-off after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown` resolves; each request runs as its
/// own task; replies go back through one writer task per connection. On
/// shutdown every connection is closed and its unfinished requests dropped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<dyn Service>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    debug!(%local, "serving");
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&service),
                        config.clone(),
                        stop.child_token(),
                    ));
                }
                Err(e) if is_per_connection(&e) => {
                    debug!(%local, error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    warn!(%local, error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
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
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<dyn Service>,
    config: ServerConfig,
    stop: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    debug!(%peer, "connection accepted");
    let (read_half, write_half) = stream.into_split();
    let (replies, queue) = mpsc::channel(OUTGOING_QUEUE);
    let max_frame_len = config.max_frame_len;
    let mut writer = tokio::spawn(write_frames(write_half, max_frame_len, queue));

    let mut connection = Connection {
        peer,
        service,
        max_frame_len,
        max_in_flight: config.max_in_flight_per_connection.max(1),
        replies,
        requests: JoinSet::new(),
        request_ids: HashMap::new(),
        stop: stop.clone(),
    };
    let mut frames = FramedRead::new(read_half, FrameCodec::new(max_frame_len));
    let ending = connection.read_loop(&mut frames, &mut writer).await;

    match ending {
        Ending::PeerClosed => connection.finish_requests().await,
        Ending::Abort | Ending::Stopped | Ending::WriterEnded => connection.requests.abort_all(),
    }
    // Once every reply sender is gone the writer flushes what is queued and
    // closes its half.
    drop(connection);
    if !matches!(ending, Ending::WriterEnded) {
        tokio::select! {
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
async fn linger(mut read_half: OwnedReadHalf, stop: &CancellationToken) {
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
        _ = tokio::time::timeout(LINGER, drain) => {}
        () = stop.cancelled() => {}
    }
}

struct Connection {
    peer: SocketAddr,
    service: Arc<dyn Service>,
    max_frame_len: u32,
    max_in_flight: usize,
    replies: mpsc::Sender<Bytes>,
    requests: JoinSet<()>,
    /// Which request each task answers, to answer it should its handler
    /// panic.
    request_ids: HashMap<Id, u64>,
    stop: CancellationToken,
}

impl Connection {
    async fn read_loop(
        &mut self,
        frames: &mut FramedRead<OwnedReadHalf, FrameCodec>,
        writer: &mut tokio::task::JoinHandle<Result<(), FrameError>>,
    ) -> Ending {
        let stop = self.stop.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ending::Stopped,
                Some(done) = self.requests.join_next_with_id(), if !self.requests.is_empty() => {
                    self.request_done(done).await;
                }
                result = &mut *writer => {
                    if let Ok(Err(e)) = result {
                        debug!(peer = %self.peer, error = %e, "connection write failed");
                    }
                    return Ending::WriterEnded;
                }
                frame = frames.next(), if self.requests.len() < self.max_in_flight => {
                    match frame {
                        None => return Ending::PeerClosed,
                        Some(frame) => {
                            if let Err(ending) = self.on_frame(frame).await {
                                return ending;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Handles one frame; `Err` ends the connection.
    async fn on_frame(&mut self, frame: Result<Bytes, FrameError>) -> Result<(), Ending> {
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
                self.reply(0, Message::Error(ErrorReply::new(code, e.to_string())))
                    .await;
                return Err(Ending::Abort);
            }
        };
        match Envelope::decode(payload) {
            Ok(envelope) if envelope.message.is_request() => self.spawn_request(envelope),
            Ok(envelope) => {
                warn!(peer = %self.peer, message = envelope.message.name(), "reply sent as a request");
                let error = ErrorReply::new(
                    ErrorCode::UnknownMessage,
                    format!("{} is not a request", envelope.message.name()),
                );
                self.reply(envelope.request_id, Message::Error(error)).await;
            }
            Err(DecodeError::UnknownMessage { request_id }) => {
                warn!(peer = %self.peer, request_id, "unknown message type");
                let error = ErrorReply::new(ErrorCode::UnknownMessage, "unknown message type");
                self.reply(request_id, Message::Error(error)).await;
            }
            Err(DecodeError::InvalidContent { request_id, reason }) => {
                warn!(peer = %self.peer, request_id, %reason, "invalid request");
                let error = ErrorReply::new(ErrorCode::MalformedRequest, reason);
                self.reply(request_id, Message::Error(error)).await;
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "undecodable request; closing connection");
                let error = ErrorReply::new(ErrorCode::MalformedRequest, e.to_string());
                self.reply(0, Message::Error(error)).await;
                return Err(Ending::Abort);
            }
        }
        Ok(())
    }

    fn spawn_request(&mut self, envelope: Envelope) {
        let request_id = envelope.request_id;
        let reply = self.service.handle(envelope.message);
        let replies = self.replies.clone();
        let max_frame_len = self.max_frame_len;
        let handle = self.requests.spawn(async move {
            let message = match reply.await {
                Ok(message) => message,
                Err(error) => Message::Error(error),
            };
            let _ = replies
                .send(encode_reply(request_id, message, max_frame_len))
                .await;
        });
        self.request_ids.insert(handle.id(), request_id);
    }

    async fn request_done(&mut self, done: Result<(Id, ()), tokio::task::JoinError>) {
        match done {
            Ok((id, ())) => {
                self.request_ids.remove(&id);
            }
            Err(e) => {
                let request_id = self.request_ids.remove(&e.id());
                if e.is_panic() {
                    warn!(peer = %self.peer, ?request_id, "request handler panicked");
                    if let Some(request_id) = request_id {
                        let error = ErrorReply::new(ErrorCode::Unknown, "request handler failed");
                        self.reply(request_id, Message::Error(error)).await;
                    }
                }
            }
        }
    }

    /// Lets the requests in flight finish and send their replies.
    async fn finish_requests(&mut self) {
        let stop = self.stop.clone();
        while !self.requests.is_empty() {
            tokio::select! {
                () = stop.cancelled() => {
                    self.requests.abort_all();
                    return;
                }
                Some(done) = self.requests.join_next_with_id() => self.request_done(done).await,
            }
        }
    }

    /// Queues a reply, waiting while the queue is full (the peer is not
    /// reading) unless the server shuts down.
    async fn reply(&self, request_id: u64, message: Message) {
        let frame = encode_reply(request_id, message, self.max_frame_len);
        tokio::select! {
            // A failed send means the writer has ended; the read loop notices.
            _ = self.replies.send(frame) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

/// Encodes a reply, replacing one too large to frame with an error so the
/// caller hears about it instead of the connection dying.
fn encode_reply(request_id: u64, message: Message, max_frame_len: u32) -> Bytes {
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
