//! The in-process network between a process's roles: a client handed the
//! process's `LocalNetwork` calls a server of the same process directly, as
//! a member and without TLS; every other client still goes over TCP and TLS
//! and gets no more trust than before. A server that stops ends the calls
//! waiting on it, and its links do not keep it alive.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::tls_files::{self, TlsEntry};
use proto::rpc::{
    ErrorCode, ErrorReply, Message, PeekReply, PeekRequest, PopRequest, TeamBlockData,
};
use proto::transport::local::LocalNetwork;
use proto::transport::net::{Accept, BoxFuture, Listener, Stream};
use proto::transport::tls::TlsSettings;
use proto::{serve, ClientConfig, Responder, RpcClient, RpcError, ServerConfig, Service};
use proto::{StorageServerId, StorageTeamId, Version};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Answers peeks, a request only members may send.
struct PeekService;

impl Service for PeekService {
    fn handle(&self, request: Message, responder: Responder) {
        match request {
            Message::Peek(r) => responder.reply(Ok(Message::PeekReply(PeekReply {
                blocks: vec![TeamBlockData {
                    team: r.team,
                    data: Bytes::new(),
                }],
                end: r.begin,
                popped: Version(0),
                max_known_version: r.begin,
                known_committed_version: r.begin,
                end_of_stream: false,
            }))),
            other => responder.reply(Err(ErrorReply::new(ErrorCode::Unknown, other.name()))),
        }
    }
}

/// A listener that never takes a connection from the network: whatever
/// reaches its server came through the pipe.
struct NoSocket(SocketAddr);

impl Accept for NoSocket {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(std::future::pending())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    fn start(listener: Listener, config: ServerConfig) -> Running {
        Running::start_serving(listener, Arc::new(PeekService), config)
    }

    fn start_serving(
        listener: Listener,
        service: Arc<dyn Service>,
        config: ServerConfig,
    ) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, service, config, async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within(self.task).await.unwrap().unwrap();
    }
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("test step did not finish in time")
}

/// Waits until `network` lists `addr` as served here, or fails the test.
async fn until_served(network: &LocalNetwork, addr: SocketAddr) {
    within(async {
        while !network.serves(addr) {
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// A server that only `network`'s links reach, serving with `config`.
async fn start_without_socket(
    network: &Arc<LocalNetwork>,
    config: ServerConfig,
) -> (SocketAddr, Running) {
    start_serving_without_socket(network, Arc::new(PeekService), config).await
}

async fn start_serving_without_socket(
    network: &Arc<LocalNetwork>,
    service: Arc<dyn Service>,
    config: ServerConfig,
) -> (SocketAddr, Running) {
    let addr = closed_port().await;
    let server = Running::start_serving(
        Listener::Other(Box::new(NoSocket(addr))),
        service,
        ServerConfig {
            local: Some(Arc::clone(network)),
            ..config
        },
    );
    until_served(network, addr).await;
    (addr, server)
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A new cluster CA with a member identity: its files, and them read.
fn member_files(dir: &tempfile::TempDir) -> (TlsEntry, TlsSettings) {
    let entry = tls_files::generate(dir.path()).unwrap();
    let settings = entry.settings().unwrap();
    (entry, settings)
}

async fn peek(addr: SocketAddr, config: ClientConfig) -> Result<Version, RpcError> {
    let client = RpcClient::connect(addr, config).await?;
    let request = PeekRequest {
        team: StorageTeamId(3),
        begin: Version(42),
        max_bytes: 1000,
        timeout_ms: 0,
    };
    Ok(within(client.peek(request)).await?.end)
}

#[tokio::test]
async fn a_role_of_the_same_process_is_called_directly_as_a_member_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (_, settings) = member_files(&dir);
    let network = LocalNetwork::new();
    let (addr, server) =
        start_without_socket(&network, tls_files::server_config(Some(&settings)).unwrap()).await;

    let same_process = ClientConfig {
        local: Some(Arc::clone(&network)),
        ..ClientConfig::default()
    };
    assert_eq!(peek(addr, same_process.clone()).await.unwrap(), Version(42));

    // A member over the network finds no socket there: the peek above was
    // a call within the process.
    let over_tcp = tls_files::client_config(Some(&settings));
    assert!(matches!(
        peek(addr, over_tcp).await,
        Err(RpcError::Connect(_))
    ));

    server.stop().await;
    assert!(!network.serves(addr));
    assert!(
        matches!(peek(addr, same_process).await, Err(RpcError::Connect(_))),
        "a stopped server's clients fall back to the network, where nothing listens"
    );
}

#[tokio::test]
async fn a_client_without_the_network_gets_tcp_tls_and_no_more_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (entry, settings) = member_files(&dir);
    let network = LocalNetwork::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Running::start(
        Listener::Tcp(listener),
        ServerConfig {
            local: Some(Arc::clone(&network)),
            ..tls_files::server_config(Some(&settings)).unwrap()
        },
    );
    until_served(&network, addr).await;

    // Another process's network (another `LocalNetwork`) does not reach
    // this server: its plain-text client meets the TLS handshake and fails.
    let elsewhere = ClientConfig {
        local: Some(LocalNetwork::new()),
        ..ClientConfig::default()
    };
    assert!(peek(addr, elsewhere).await.is_err());

    // A client without a member certificate is still refused member
    // requests over TCP, and a member over TCP is served.
    let client_only = TlsEntry {
        cert: None,
        key: None,
        ..entry
    };
    let outsider = tls_files::client_config(Some(&client_only.settings().unwrap()));
    assert!(matches!(
        peek(addr, outsider).await,
        Err(RpcError::Remote {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    let member = tls_files::client_config(Some(&settings));
    assert_eq!(peek(addr, member).await.unwrap(), Version(42));

    server.stop().await;
}

/// Holds the responders of long polls, drops those of pops unanswered, and
/// answers locks from a future that never ends.
#[derive(Default)]
struct HoldingService {
    held: Mutex<Vec<Responder>>,
    /// Set when the service itself is dropped.
    dropped: Arc<AtomicBool>,
    /// Set when a lock's reply future is dropped.
    lock_future_dropped: Arc<AtomicBool>,
    /// Requests handled.
    handled: Arc<AtomicUsize>,
}

impl Drop for HoldingService {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Service for HoldingService {
    fn handle(&self, request: Message, responder: Responder) {
        self.handled.fetch_add(1, Ordering::SeqCst);
        match request {
            Message::Peek(r) if r.timeout_ms > 0 => self.held.lock().unwrap().push(responder),
            Message::Pop(_) => drop(responder),
            Message::Lock => {
                let flag = DropFlag(Arc::clone(&self.lock_future_dropped));
                responder.reply_with(async move {
                    let _flag = flag;
                    std::future::pending().await
                })
            }
            other => PeekService.handle(other, responder),
        }
    }
}

#[tokio::test]
async fn a_stopped_server_ends_the_calls_waiting_on_it_and_is_not_kept_alive() {
    let network = LocalNetwork::new();
    let service = Arc::new(HoldingService::default());
    let (service_dropped, lock_future_dropped, handled) = (
        Arc::clone(&service.dropped),
        Arc::clone(&service.lock_future_dropped),
        Arc::clone(&service.handled),
    );
    let (addr, server) =
        start_serving_without_socket(&network, service, ServerConfig::default()).await;
    let client = RpcClient::connect(
        addr,
        ClientConfig {
            local: Some(Arc::clone(&network)),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();

    // A handler that drops its responder unanswered answers `unknown`.
    let popped = client
        .pop(PopRequest {
            team: StorageTeamId(1),
            server: StorageServerId(1),
            version: Version(1),
        })
        .await;
    assert!(
        matches!(
            popped,
            Err(RpcError::Remote {
                code: ErrorCode::Unknown,
                ..
            })
        ),
        "{popped:?}"
    );

    // A long poll the service holds, and a reply future, wait on the server...
    let long_poll = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .peek(PeekRequest {
                    team: StorageTeamId(1),
                    begin: Version(7),
                    max_bytes: 1000,
                    timeout_ms: 600_000,
                })
                .await
        }
    });
    let lock = tokio::spawn({
        let client = client.clone();
        async move { client.lock().await }
    });
    within(async {
        while handled.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(!lock.is_finished() && !long_poll.is_finished());
    assert!(!client.is_closed());

    // ...until it stops: both end at once, the reply future is dropped, and
    // the client still holding its link does not keep the service alive.
    server.stop().await;
    assert!(matches!(
        within(long_poll).await.unwrap(),
        Err(RpcError::ConnectionClosed)
    ));
    assert!(matches!(
        within(lock).await.unwrap(),
        Err(RpcError::ConnectionClosed)
    ));
    assert!(lock_future_dropped.load(Ordering::SeqCst));
    assert!(service_dropped.load(Ordering::SeqCst));
    assert!(client.is_closed());
    assert!(matches!(
        within(client.lock()).await,
        Err(RpcError::ConnectionClosed)
    ));
}
