//! The in-process network between a process's roles: a client handed the
//! process's `LocalNetwork` reaches a server of the same process through a
//! pipe, as a member and without TLS; every other client still goes over
//! TCP and TLS and gets no more trust than before.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::tls_files::{self, TlsEntry};
use proto::rpc::{ErrorCode, ErrorReply, Message, PeekReply, PeekRequest, TeamBlockData};
use proto::transport::local::LocalNetwork;
use proto::transport::net::{Accept, BoxFuture, Listener, Stream};
use proto::transport::tls::TlsSettings;
use proto::{serve, ClientConfig, Responder, RpcClient, RpcError, ServerConfig, Service};
use proto::{StorageTeamId, Version};
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
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(PeekService), config, async move {
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

/// A server that only `network`'s pipes reach, serving with `config`.
async fn start_without_socket(
    network: &Arc<LocalNetwork>,
    config: ServerConfig,
) -> (SocketAddr, Running) {
    let addr = closed_port().await;
    let server = Running::start(
        Listener::Other(Box::new(NoSocket(addr))),
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
async fn a_role_of_the_same_process_is_served_through_a_pipe_as_a_member_without_tls() {
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

    // A member over the network finds no socket there: the peek above came
    // through the pipe.
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

#[tokio::test]
async fn pipes_count_against_the_connection_cap() {
    let network = LocalNetwork::new();
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let (addr, server) = start_without_socket(&network, config).await;
    let config = ClientConfig {
        local: Some(Arc::clone(&network)),
        ..ClientConfig::default()
    };
    let first = RpcClient::connect(addr, config.clone()).await.unwrap();
    let request = PeekRequest {
        team: StorageTeamId(1),
        begin: Version(7),
        max_bytes: 1000,
        timeout_ms: 0,
    };
    assert_eq!(within(first.peek(request)).await.unwrap().end, Version(7));
    assert!(
        peek(addr, config.clone()).await.is_err(),
        "a second pipe past a cap of one is closed"
    );
    drop(first);
    within(async {
        loop {
            if peek(addr, config.clone()).await.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
}
