//! A server known by address: connected on first use and reconnected after
//! the connection breaks, so a caller outlives restarts of the server.
//! A [`PeerPool`] hands out one [`Peer`] per address, so callers that ask
//! for a peer per call still share its connection.
//!
//! ```text
//!  callers ─▶ live connection? ─yes─▶ it
//!                 └─no─▶ join the connect under way, or spawn one ─▶ its result
//! ```
//!
//! A connect runs as a task of its own, so a caller that gives up (its own
//! timeout shorter than the connect's) leaves it going for the next: a
//! server that is slow to answer gets one connection attempt at a time,
//! not one per retry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::{ClientConfig, RpcClient, RpcError};

/// A connect under way, shared by every caller waiting for it.
type Connecting = Shared<BoxFuture<'static, Result<RpcClient, Arc<RpcError>>>>;

pub struct Peer {
    addr: SocketAddr,
    config: ClientConfig,
    state: std::sync::Mutex<PeerState>,
}

#[derive(Default)]
struct PeerState {
    client: Option<RpcClient>,
    connecting: Option<Connecting>,
}

impl Peer {
    pub fn new(addr: SocketAddr, config: ClientConfig) -> Peer {
        Peer {
            addr,
            config,
            state: std::sync::Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PeerState> {
        // Every change under this lock is a single assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops the current connection, so the next call connects anew (after
    /// a failure that left the connection open but suspect, like a timeout).
    pub async fn reset(&self) {
        self.state().client.take();
    }

    /// Runs `call` over a live connection. When no reply comes in time, the
    /// connection is dropped (see [`Peer::drop_connection`]).
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, RpcError>
    where
        F: FnOnce(RpcClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let client = self.client().await?;
        let result = call(client.clone()).await;
        if matches!(result, Err(RpcError::Timeout)) {
            self.drop_connection(&client).await;
        }
        result
    }

    /// Drops `used`'s connection, if it is still this peer's, so the next
    /// call connects anew: after a call on it got no reply in time, bytes
    /// may be lost on it for good (a half-open connection, a middlebox that
    /// forgot it), which would leave every later call on it waiting too. A
    /// connection another call made since is kept.
    pub async fn drop_connection(&self, used: &RpcClient) {
        let mut state = self.state();
        if state
            .client
            .as_ref()
            .is_some_and(|c| c.same_connection(used))
        {
            state.client.take();
        }
    }

    /// A live connection: the current one, or a new one if it broke.
    pub async fn client(&self) -> Result<RpcClient, RpcError> {
        let connecting = {
            let mut state = self.state();
            if let Some(live) = state.client.as_ref().filter(|c| !c.is_closed()) {
                return Ok(live.clone());
            }
            state.client = None;
            state
                .connecting
                .get_or_insert_with(|| self.start_connect())
                .clone()
        };
        let result = connecting.clone().await;
        let mut state = self.state();
        // The first caller back ends this attempt; the next connects anew.
        if state
            .connecting
            .as_ref()
            .is_some_and(|c| c.ptr_eq(&connecting))
        {
            state.connecting = None;
            if let Ok(client) = &result {
                state.client = Some(client.clone());
            }
        }
        result.map_err(|e| match &*e {
            RpcError::Connect(io) => {
                RpcError::Connect(std::io::Error::new(io.kind(), io.to_string()))
            }
            other => RpcError::Connect(std::io::Error::other(other.to_string())),
        })
    }

    fn start_connect(&self) -> Connecting {
        let connect = tokio::spawn(RpcClient::connect(self.addr, self.config.clone()));
        async move {
            match connect.await {
                Ok(result) => result.map_err(Arc::new),
                Err(e) => Err(Arc::new(RpcError::Connect(std::io::Error::other(format!(
                    "the connect task ended: {e}"
                ))))),
            }
        }
        .boxed()
        .shared()
    }
}

/// One [`Peer`] per address, made on first use and kept until the owner
/// lets it go ([`PeerPool::retain`]).
pub struct PeerPool {
    config: ClientConfig,
    peers: std::sync::Mutex<BTreeMap<SocketAddr, Arc<Peer>>>,
}

impl PeerPool {
    pub fn new(config: ClientConfig) -> PeerPool {
        PeerPool {
            config,
            peers: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The peer at `addr`: the same one every time.
    pub fn get(&self, addr: SocketAddr) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(addr)
            .or_insert_with(|| Arc::new(Peer::new(addr, self.config.clone())))
            .clone()
    }

    /// Forgets the peers at addresses `keep` rejects; a forgotten peer's
    /// connection closes once the calls that hold it are done.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|addr, _| keep(addr));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::rpc::Message;
    use crate::transport::{serve, Responder, ServerConfig, Service};

    #[test]
    fn a_pool_keeps_one_peer_per_address_until_let_go() {
        let pool = PeerPool::new(ClientConfig::default());
        let kept: SocketAddr = "127.0.0.1:4500".parse().unwrap();
        let gone: SocketAddr = "127.0.0.1:4501".parse().unwrap();
        let (kept_peer, gone_peer) = (pool.get(kept), pool.get(gone));
        assert!(Arc::ptr_eq(&kept_peer, &pool.get(kept)));
        pool.retain(|addr| *addr == kept);
        assert!(Arc::ptr_eq(&kept_peer, &pool.get(kept)));
        assert!(!Arc::ptr_eq(&gone_peer, &pool.get(gone)));
    }

    struct Pong;

    impl Service for Pong {
        fn handle(&self, _: Message, responder: Responder) {
            responder.reply(Ok(Message::PopReply));
        }
    }

    async fn start(listener: TcpListener) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service: Arc<dyn Service> = Arc::new(Pong);
        tokio::spawn(serve(listener, service, ServerConfig::default(), async {
            let _ = stopped.await;
        }));
        stop
    }

    /// Connects once the test opens the gate, counting its connects.
    #[derive(Debug)]
    struct GatedDialer {
        gate: Arc<tokio::sync::Semaphore>,
        connects: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl crate::transport::net::Dialer for GatedDialer {
        fn connect(
            &self,
            addr: SocketAddr,
        ) -> crate::transport::net::BoxFuture<
            'static,
            std::io::Result<Box<dyn crate::transport::net::Stream>>,
        > {
            self.connects
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let gate = Arc::clone(&self.gate);
            Box::pin(async move {
                let _pass = gate.acquire().await.expect("the gate stays");
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok(Box::new(stream) as Box<dyn crate::transport::net::Stream>)
            })
        }
    }

    #[tokio::test]
    async fn callers_that_give_up_leave_one_connect_going_for_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = start(listener).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let config = ClientConfig {
            dialer: Some(Arc::new(GatedDialer {
                gate: Arc::clone(&gate),
                connects: Arc::clone(&connects),
            })),
            ..ClientConfig::default()
        };
        let peer = Peer::new(addr, config);
        // Three callers give up while the connect cannot finish.
        for _ in 0..3 {
            let gave_up =
                tokio::time::timeout(std::time::Duration::from_millis(1), peer.client()).await;
            assert!(gave_up.is_err());
        }
        gate.add_permits(1);
        let client = peer.client().await.unwrap();
        assert_eq!(
            client.call(Message::Status).await.unwrap(),
            Message::PopReply
        );
        assert_eq!(connects.load(std::sync::atomic::Ordering::SeqCst), 1);
        stop.send(()).unwrap();
    }

    #[tokio::test]
    async fn a_peer_reconnects_after_its_server_restarts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = start(listener).await;
        let peer = Peer::new(addr, ClientConfig::default());
        let first = peer.client().await.unwrap();
        assert_eq!(
            first.call(Message::Status).await.unwrap(),
            Message::PopReply
        );
        stop.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !first.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection never closed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // The same address serves again; the peer notices the dead connection.
        let stop = start(TcpListener::bind(addr).await.unwrap()).await;
        let second = peer.client().await.unwrap();
        assert_eq!(
            second.call(Message::Status).await.unwrap(),
            Message::PopReply
        );
        stop.send(()).unwrap();
    }
}
