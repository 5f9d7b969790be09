//! The server's byte budgets against peers that do not read their replies:
//! such a peer holds only its connection's share of the reply budget, stops
//! being read, and is closed once it has not taken a reply for the frame
//! timeout, which gives its share back.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use proto::{
    Envelope, FrameCodec, Message, PeekReply, PeekRequest, Responder, ServerConfig, Service,
    StorageTeamId, TeamBlockData, Version,
};
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_util::codec::Framed;

use support::{closed_by_server, within, TestServer};

/// Larger than what kernel socket buffers take in (4 MiB by default, 16 MiB
/// where tuned up), so a reply to a peer that does not read never finishes.
const REPLY_BYTES: usize = 32 << 20;
/// What each peek's reply is said to need: the block and its encoding.
const BOUND: usize = REPLY_BYTES + 4096;
/// Requests the peer that does not read sends.
const UNREAD_REQUESTS: u64 = 10;

/// Answers each peek with a block of [`REPLY_BYTES`], counting the peeks
/// of the peer that does not read (those with `begin` below 1000).
#[derive(Default)]
struct LargeReplies {
    unread_handled: AtomicUsize,
    handled: Notify,
}

impl Service for LargeReplies {
    fn reply_size_bound(&self, _request: &Message) -> usize {
        BOUND
    }

    fn handle(&self, request: Message, responder: Responder) {
        let Message::Peek(peek) = request else {
            return responder.reply(Ok(Message::PopReply));
        };
        if peek.begin.0 < 1000 {
            self.unread_handled.fetch_add(1, Ordering::SeqCst);
            self.handled.notify_one();
        }
        responder.reply(Ok(Message::PeekReply(PeekReply {
            blocks: vec![TeamBlockData {
                team: peek.team,
                data: Bytes::from(vec![1u8; REPLY_BYTES]),
            }],
            end: peek.begin,
            popped: Version(0),
            max_known_version: peek.begin,
            known_committed_version: peek.begin,
            end_of_stream: false,
        })));
    }
}

fn peek(begin: u64) -> PeekRequest {
    PeekRequest {
        team: StorageTeamId(1),
        begin: Version(begin),
        max_bytes: REPLY_BYTES as u32,
        timeout_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_holds_only_its_share_until_it_is_closed() {
    let service = Arc::new(LargeReplies::default());
    let server = TestServer::start(
        service.clone(),
        ServerConfig {
            max_frame_len: 2 * REPLY_BYTES as u32,
            // Two replies on one connection; the process has room for two
            // and a half.
            reply_budget_per_connection: 2 * BOUND + (1 << 20),
            reply_budget: 2 * BOUND + BOUND / 2,
            frame_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
    )
    .await;

    // A small receive buffer, never read: the server cannot write even one
    // reply to it.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut unread = Framed::new(stream, FrameCodec::new(2 * REPLY_BYTES as u32));
    for request_id in 1..=UNREAD_REQUESTS {
        let envelope = Envelope {
            request_id,
            message: Message::Peek(peek(request_id)),
        };
        within(unread.send(envelope.encode().into_bytes()))
            .await
            .unwrap();
    }
    while service.unread_handled.load(Ordering::SeqCst) < 2 {
        within(service.handled.notified()).await;
    }

    // The process budget is spent but for half a reply: another client's
    // peek waits until the silent connection is closed and gives its share
    // back.
    let client = server.client().await;
    let reply = within(client.peek(peek(1000))).await.unwrap();
    assert_eq!(reply.blocks[0].data.len(), REPLY_BYTES);
    assert_eq!(
        service.unread_handled.load(Ordering::SeqCst),
        2,
        "the connection that did not read was read past its share"
    );
    closed_by_server(unread.get_mut()).await;
    server.stop().await;
}
