//! The RPC transport over real loopback sockets: multiplexing, error
//! replies, bad input from hostile peers, backpressure and shutdown.

mod support;

use support::{closed_by_server, within, TestServer};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use futures::{SinkExt, StreamExt};
use proto::transport::net::{Accept, BoxFuture, Listener, Stream};
use proto::transport::Peer;
use proto::{
    ClientConfig, Envelope, ErrorCode, ErrorReply, FrameCodec, Message, PeekReply, PeekRequest,
    PopRequest, RegisterTeamRequest, Responder, RpcClient, RpcError, ServerConfig, Service,
    StorageServerId, StorageTeamId, TLogCommitReply, TLogCommitRequest, TeamBlockData, Version,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::Framed;

/// Answers from the request alone, except where a test needs a handler
/// that waits, fails or panics.
#[derive(Default)]
struct EchoService {
    /// Notified when a `Status` request arrives; `Status` never answers.
    status_arrived: Notify,
}

impl Service for EchoService {
    fn handle(&self, request: Message, responder: Responder) {
        match request {
            Message::Peek(r) => responder.reply_with(async move { Ok(peek_reply(r)) }),
            Message::TLogCommit(r) => {
                responder.reply(Ok(Message::TLogCommitReply(TLogCommitReply {
                    version: Version(
                        r.version.0 + r.teams.iter().map(|t| t.data.len() as u64).sum::<u64>(),
                    ),
                })))
            }
            Message::Pop(_) => responder.reply(Ok(Message::PopReply)),
            Message::Lock => responder.reply(Err(ErrorReply::new(
                ErrorCode::TLogStopped,
                "already locked",
            ))),
            Message::Status => {
                self.status_arrived.notify_one();
                responder.reply_with(futures::future::pending());
            }
            Message::RegisterTeam(r) if r.servers.is_empty() => {
                responder.reply_with(async { panic!("handler bug") })
            }
            Message::RegisterTeam(_) => drop(responder),
            other => responder.reply(Err(ErrorReply::new(ErrorCode::Unknown, other.name()))),
        }
    }
}

fn peek(begin: u64) -> PeekRequest {
    PeekRequest {
        team: StorageTeamId(begin % 7),
        begin: Version(begin),
        max_bytes: 1000,
        timeout_ms: 0,
    }
}

fn peek_reply(r: PeekRequest) -> Message {
    Message::PeekReply(PeekReply {
        blocks: vec![TeamBlockData {
            team: r.team,
            data: Bytes::from(r.begin.0.to_le_bytes().to_vec()),
        }],
        end: r.begin,
        popped: Version(0),
        max_known_version: r.begin,
        known_committed_version: r.begin,
        end_of_stream: false,
    })
}

async fn echo_server() -> (TestServer, Arc<EchoService>) {
    let service = Arc::new(EchoService::default());
    let server = TestServer::start(service.clone(), ServerConfig::default()).await;
    (server, service)
}

async fn assert_peek_works(client: &RpcClient, begin: u64) {
    let reply = within(client.peek(peek(begin))).await.unwrap();
    assert_eq!(reply.end, Version(begin));
}

#[tokio::test]
async fn calls_get_their_replies_and_errors() {
    let (server, _) = echo_server().await;
    let client = server.client().await;
    assert_peek_works(&client, 5).await;
    let commit = TLogCommitRequest {
        prev_version: Version(1),
        version: Version(2),
        known_committed_version: Version(0),
        teams: vec![TeamBlockData {
            team: StorageTeamId(1),
            data: Bytes::from(vec![7u8; 3 << 20]),
        }],
    };
    let reply = within(client.tlog_commit(commit)).await.unwrap();
    assert_eq!(reply.version, Version(2 + (3 << 20)));
    within(client.pop(PopRequest {
        team: StorageTeamId(1),
        server: StorageServerId(2),
        version: Version(3),
    }))
    .await
    .unwrap();

    match within(client.lock()).await {
        Err(RpcError::Remote {
            code,
            message,
            version,
        }) => {
            assert_eq!(code, ErrorCode::TLogStopped);
            assert_eq!(message, "already locked");
            assert_eq!(version, None);
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(!client.is_closed());
    server.stop().await;
}

/// Holds every request until `expected` have arrived, so that all of them
/// are in flight on the connection at once, then answers them newest first,
/// keeping their responders meanwhile.
struct ReverseService {
    expected: usize,
    waiting: Mutex<Vec<(Message, Responder)>>,
}

impl Service for ReverseService {
    fn handle(&self, request: Message, responder: Responder) {
        let mut waiting = self.waiting.lock().unwrap();
        waiting.push((request, responder));
        if waiting.len() == self.expected {
            for (request, responder) in waiting.drain(..).rev() {
                responder.reply(match request {
                    Message::Peek(r) => Ok(peek_reply(r)),
                    other => Err(ErrorReply::new(ErrorCode::Unknown, other.name())),
                });
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_get_their_own_replies() {
    const CALLS: usize = 200;
    let service = Arc::new(ReverseService {
        expected: CALLS,
        waiting: Mutex::new(Vec::new()),
    });
    let server = TestServer::start(
        service,
        ServerConfig {
            max_in_flight_per_connection: CALLS,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = server.client().await;
    let calls: Vec<_> = (0..CALLS as u64)
        .map(|begin| {
            let client = client.clone();
            tokio::spawn(async move { (begin, client.peek(peek(begin)).await) })
        })
        .collect();
    for call in calls {
        let (begin, reply) = within(call).await.unwrap();
        let reply = reply.unwrap();
        assert_eq!(reply.end, Version(begin));
        assert_eq!(
            reply.blocks[0].data,
            Bytes::from(begin.to_le_bytes().to_vec())
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_call_times_out_and_the_connection_keeps_working() {
    let (server, service) = echo_server().await;
    let client = server.client().await;
    let result = within(client.call_with_timeout(Message::Status, Duration::from_millis(50))).await;
    assert!(matches!(result, Err(RpcError::Timeout)), "{result:?}");
    within(service.status_arrived.notified()).await;
    assert_peek_works(&client, 9).await;
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_unknown_and_the_server_survives() {
    let (server, _) = echo_server().await;
    let client = server.client().await;
    let result = within(client.register_team(RegisterTeamRequest {
        team: StorageTeamId(1),
        servers: vec![],
    }))
    .await;
    assert!(
        matches!(
            result,
            Err(RpcError::Remote {
                code: ErrorCode::Unknown,
                ..
            })
        ),
        "{result:?}"
    );
    assert_peek_works(&client, 3).await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_dropped_without_a_reply_is_answered_unknown() {
    let (server, _) = echo_server().await;
    let client = server.client().await;
    let result = within(client.register_team(RegisterTeamRequest {
        team: StorageTeamId(1),
        servers: vec![StorageServerId(2)],
    }))
    .await;
    match result {
        Err(RpcError::Remote {
            code: ErrorCode::Unknown,
            message,
            ..
        }) => assert!(message.contains("handler failed"), "{message}"),
        other => panic!("expected an unknown error, got {other:?}"),
    }
    assert_peek_works(&client, 4).await;
    server.stop().await;
}

/// Answers everything with `PopReply`.
struct PopService;

impl Service for PopService {
    fn handle(&self, _: Message, responder: Responder) {
        responder.reply(Ok(Message::PopReply));
    }
}

#[tokio::test]
async fn a_reply_of_the_wrong_kind_is_reported() {
    let server = TestServer::start(Arc::new(PopService), ServerConfig::default()).await;
    let client = server.client().await;
    let result = within(client.peek(peek(4))).await;
    assert!(
        matches!(result, Err(RpcError::UnexpectedReply("pop_reply"))),
        "{result:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_larger_than_the_cap_is_refused_locally() {
    let (server, _) = echo_server().await;
    let client = RpcClient::connect(
        server.addr,
        ClientConfig {
            max_frame_len: 1024,
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let commit = Message::TLogCommit(TLogCommitRequest {
        prev_version: Version(0),
        version: Version(1),
        known_committed_version: Version(0),
        teams: vec![TeamBlockData {
            team: StorageTeamId(1),
            data: Bytes::from(vec![0u8; 4096]),
        }],
    });
    let result = within(client.call(commit)).await;
    assert!(
        matches!(
            result,
            Err(RpcError::Frame(proto::FrameError::TooLarge {
                max: 1024,
                ..
            }))
        ),
        "{result:?}"
    );
    assert_peek_works(&client, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = within(RpcClient::connect(addr, ClientConfig::default())).await;
    assert!(matches!(result, Err(RpcError::Connect(_))));
}

/// A connection that speaks frames directly, to send what `RpcClient`
/// never would.
async fn raw_connection(addr: SocketAddr) -> Framed<TcpStream, FrameCodec> {
    Framed::new(
        TcpStream::connect(addr).await.unwrap(),
        FrameCodec::default(),
    )
}

/// Reads every frame until the server closes, decoding each as an envelope.
async fn replies_until_closed(conn: &mut Framed<TcpStream, FrameCodec>) -> Vec<Envelope> {
    let mut replies = Vec::new();
    while let Some(frame) = within(conn.next()).await {
        replies.push(Envelope::decode(frame.unwrap()).unwrap());
    }
    replies
}

fn error_code(envelope: &Envelope) -> ErrorCode {
    match &envelope.message {
        Message::Error(e) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Sends `bytes` on a fresh connection, closes the sending side, and returns
/// what the server answered before closing.
async fn send_raw(addr: SocketAddr, bytes: &[u8], close_after: bool) -> Vec<Envelope> {
    let mut conn = raw_connection(addr).await;
    conn.get_mut().write_all(bytes).await.unwrap();
    if close_after {
        conn.get_mut().shutdown().await.unwrap();
    }
    replies_until_closed(&mut conn).await
}

#[tokio::test]
async fn a_4_gib_length_prefix_gets_frame_too_large_and_a_close() {
    let (server, _) = echo_server().await;
    let bystander = server.client().await;
    assert_peek_works(&bystander, 1).await;

    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let replies = send_raw(server.addr, &header, false).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].request_id, 0);
    assert_eq!(error_code(&replies[0]), ErrorCode::FrameTooLarge);

    assert_peek_works(&bystander, 2).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_checksum_gets_malformed_request_and_a_close() {
    let (server, _) = echo_server().await;
    let bystander = server.client().await;
    let payload = Envelope {
        request_id: 5,
        message: Message::Peek(peek(5)),
    }
    .encode()
    .into_bytes();
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(crc32c::crc32c(&payload) ^ 1).to_le_bytes());
    frame.extend_from_slice(&payload);
    let replies = send_raw(server.addr, &frame, false).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].request_id, 0);
    assert_eq!(error_code(&replies[0]), ErrorCode::MalformedRequest);
    assert_peek_works(&bystander, 3).await;
    server.stop().await;
}

#[tokio::test]
async fn a_frame_that_is_not_a_flatbuffer_gets_malformed_request_and_a_close() {
    let (server, _) = echo_server().await;
    let mut conn = raw_connection(server.addr).await;
    within(conn.send(Bytes::from_static(b"\xff\xff\xff\xffnot a flatbuffer")))
        .await
        .unwrap();
    let replies = replies_until_closed(&mut conn).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(error_code(&replies[0]), ErrorCode::MalformedRequest);
    server.stop().await;
}

/// A small xorshift generator: the tests print its seed, and
/// `PROTO_TEST_SEED` replays one.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock(test: &str) -> Rng {
        let seed = std::env::var("PROTO_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (replay with PROTO_TEST_SEED={seed})");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_get_an_error_reply_and_a_close_while_others_are_served() {
    let (server, _) = echo_server().await;
    let bystander = server.client().await;
    let mut rng = Rng::from_env_or_clock("random_bytes");
    for round in 0..30 {
        // At least one byte: a connection closed before sending anything
        // is ended without a reply, having asked nothing.
        let len = 1 + (rng.next() % 2047) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let replies = send_raw(server.addr, &bytes, true).await;
        assert_eq!(replies.len(), 1, "round {round}: {replies:?}");
        assert_eq!(replies[0].request_id, 0, "round {round}");
        let code = error_code(&replies[0]);
        assert!(
            matches!(code, ErrorCode::FrameTooLarge | ErrorCode::MalformedRequest),
            "round {round}: {code}"
        );
        assert_peek_works(&bystander, round).await;
    }
    server.stop().await;
}

/// An envelope whose union type (200) this code does not know, built with
/// the generic flatbuffers builder as a newer peer's message would be.
fn unknown_message_frame(request_id: u64) -> Bytes {
    // Vtable slots of Envelope's fields: request_id, payload_type, payload.
    const REQUEST_ID: u16 = 4;
    const PAYLOAD_TYPE: u16 = 6;
    const PAYLOAD: u16 = 8;
    let mut fbb = FlatBufferBuilder::new();
    let start = fbb.start_table();
    let payload = fbb.end_table(start);
    let start = fbb.start_table();
    fbb.push_slot::<u64>(REQUEST_ID, request_id, 0);
    fbb.push_slot_always(PAYLOAD, payload);
    fbb.push_slot::<u8>(PAYLOAD_TYPE, 200, 0);
    let root = fbb.end_table(start);
    fbb.finish_minimal(root);
    Bytes::copy_from_slice(fbb.finished_data())
}

#[tokio::test]
async fn unknown_messages_and_replies_sent_as_requests_are_answered_and_the_connection_stays() {
    let (server, _) = echo_server().await;
    let mut conn = raw_connection(server.addr).await;

    within(conn.send(unknown_message_frame(77))).await.unwrap();
    let reply = Envelope::decode(within(conn.next()).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply.request_id, 77);
    assert_eq!(error_code(&reply), ErrorCode::UnknownMessage);

    let reply_as_request = Envelope {
        request_id: 78,
        message: Message::PopReply,
    };
    within(conn.send(reply_as_request.encode().into_bytes()))
        .await
        .unwrap();
    let reply = Envelope::decode(within(conn.next()).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply.request_id, 78);
    assert_eq!(error_code(&reply), ErrorCode::UnknownMessage);

    let request = Envelope {
        request_id: 79,
        message: Message::Peek(peek(79)),
    };
    within(conn.send(request.encode().into_bytes()))
        .await
        .unwrap();
    let reply = Envelope::decode(within(conn.next()).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply.request_id, 79);
    assert_eq!(reply.message, peek_reply(peek(79)));
    server.stop().await;
}

#[tokio::test]
async fn server_shutdown_ends_pending_calls_with_connection_closed() {
    let (server, service) = echo_server().await;
    let client = server.client().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call(Message::Status).await }
    });
    within(service.status_arrived.notified()).await;
    server.stop().await;
    let result = within(pending).await.unwrap();
    assert!(
        matches!(result, Err(RpcError::ConnectionClosed)),
        "{result:?}"
    );
    assert!(client.is_closed());
    let later = within(client.call(Message::Peek(peek(1)))).await;
    assert!(
        matches!(later, Err(RpcError::ConnectionClosed)),
        "{later:?}"
    );
}

/// Counts the peeks in its handler and holds each until the test adds a
/// permit to `gate`; anything else is answered at once.
struct Gate {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    arrived: Notify,
    gate: Semaphore,
}

struct GatedService(Arc<Gate>);

impl Service for GatedService {
    fn handle(&self, request: Message, responder: Responder) {
        let Message::Peek(r) = request else {
            return responder.reply(Ok(Message::PopReply));
        };
        let gate = self.0.clone();
        let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        gate.max_in_flight.fetch_max(now, Ordering::SeqCst);
        gate.arrived.notify_one();
        responder.reply_with(async move {
            if let Ok(permit) = gate.gate.acquire().await {
                permit.forget();
            }
            gate.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(peek_reply(r))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stops_being_read_at_its_in_flight_cap() {
    const CALLS: u64 = 6;
    let gate = Arc::new(Gate {
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        arrived: Notify::new(),
        gate: Semaphore::new(0),
    });
    let server = TestServer::start(
        Arc::new(GatedService(gate.clone())),
        ServerConfig {
            max_in_flight_per_connection: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = server.client().await;
    let calls: Vec<_> = (0..CALLS)
        .map(|begin| {
            let client = client.clone();
            tokio::spawn(async move { (begin, client.peek(peek(begin)).await) })
        })
        .collect();
    while gate.in_flight.load(Ordering::SeqCst) < 2 {
        within(gate.arrived.notified()).await;
    }
    // A round trip on another connection gives the server time to read more
    // of the first one, which it must not do while two are in flight.
    let other = server.client().await;
    within(other.pop(PopRequest {
        team: StorageTeamId(1),
        server: StorageServerId(1),
        version: Version(1),
    }))
    .await
    .unwrap();
    assert_eq!(gate.in_flight.load(Ordering::SeqCst), 2);

    gate.gate.add_permits(CALLS as usize);
    for call in calls {
        let (begin, reply) = within(call).await.unwrap();
        assert_eq!(reply.unwrap().end, Version(begin));
    }
    assert_eq!(gate.max_in_flight.load(Ordering::SeqCst), 2);
    server.stop().await;
}

fn short_timeouts() -> ServerConfig {
    ServerConfig {
        frame_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_a_freed_slot_is_reused() {
    let server = TestServer::start(
        Arc::new(EchoService::default()),
        ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let first = server.client().await;
    assert_peek_works(&first, 1).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    // Accepted after the two above: no slot, closed unanswered.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    closed_by_server(&mut third).await;
    assert_peek_works(&first, 2).await;
    second.shutdown().await.unwrap();
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let client = RpcClient::connect(server.addr, ClientConfig::default())
            .await
            .unwrap();
        if within(client.peek(peek(3))).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_frame_trickled_in_too_slowly_closes_its_connection() {
    let server = TestServer::start(Arc::new(EchoService::default()), short_timeouts()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    // Half a header, and then nothing.
    slow.write_all(&[0x10, 0, 0, 0]).await.unwrap();
    closed_by_server(&mut slow).await;
    assert_peek_works(&server.client().await, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_peer_reconnects() {
    let server = TestServer::start(Arc::new(EchoService::default()), short_timeouts()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    closed_by_server(&mut idle).await;
    let peer = Peer::new(server.addr, ClientConfig::default());
    let first = peer.client().await.unwrap();
    assert_peek_works(&first, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !first.is_closed() {
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::task::yield_now().await;
    }
    assert_peek_works(&peer.client().await.unwrap(), 2).await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_keeps_a_quiet_connection_open() {
    let service = Arc::new(EchoService::default());
    let server = TestServer::start(service.clone(), short_timeouts()).await;
    let client = server.client().await;
    // `Status` is never answered: a long poll that outlasts the idle
    // timeout many times over.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.call(Message::Status).await }
    });
    within(service.status_arrived.notified()).await;
    // The time under test, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_peek_works(&client, 5).await;
    assert!(!waiting.is_finished(), "the call was ended");
    waiting.abort();
    server.stop().await;
}

/// Takes a listener's connections, but keeps the first to itself: it stays
/// open and nothing sent on it is ever read or answered, like a connection
/// whose bytes a network lost for good.
struct FirstConnectionSwallowed {
    listener: TcpListener,
    swallowed: Arc<Mutex<Vec<TcpStream>>>,
}

impl Accept for FirstConnectionSwallowed {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(async move {
            loop {
                let (stream, peer) = self.listener.accept().await?;
                let mut swallowed = self.swallowed.lock().unwrap();
                if swallowed.is_empty() {
                    swallowed.push(stream);
                    continue;
                }
                return Ok((Box::new(stream) as Box<dyn Stream>, peer));
            }
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A call through a `Peer` that gets no reply drops its connection, so the
/// next call connects anew instead of waiting on the dead one too.
#[tokio::test]
async fn a_peer_call_without_a_reply_drops_the_connection_and_the_next_connects_anew() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swallowed = Arc::new(Mutex::new(Vec::new()));
    let accept = FirstConnectionSwallowed {
        listener,
        swallowed: Arc::clone(&swallowed),
    };
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proto::serve(
        Listener::Other(Box::new(accept)),
        Arc::new(EchoService::default()),
        ServerConfig::default(),
        async move {
            let _ = stop.await;
        },
    ));
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let peer = Peer::new(addr, config);
    let first = within(peer.call(|c| async move { c.peek(peek(3)).await })).await;
    assert!(matches!(first, Err(RpcError::Timeout)), "{first:?}");
    assert_eq!(swallowed.lock().unwrap().len(), 1);
    let second = within(peer.call(|c| async move { c.peek(peek(4)).await })).await;
    assert_eq!(
        second.expect("answered on a new connection").end,
        Version(4)
    );
    let _ = shutdown.send(());
    within(served).await.unwrap().unwrap();
}
