//! A server known by address: connected on first use and reconnected after
//! the connection breaks, so a caller outlives restarts of the server.
//! A [`PeerPool`] hands out one [`Peer`] per address, so callers that ask
//! for a peer per call still share its connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{ClientConfig, RpcClient, RpcError};

pub struct Peer {
    addr: SocketAddr,
    config: ClientConfig,
    client: Mutex<Option<RpcClient>>,
}

impl Peer {
    pub fn new(addr: SocketAddr, config: ClientConfig) -> Peer {
        Peer {
            addr,
            config,
            client: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops the current connection, so the next call connects anew (after
    /// a failure that left the connection open but suspect, like a timeout).
    pub async fn reset(&self) {
        self.client.lock().await.take();
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
        let mut client = self.client.lock().await;
        if client.as_ref().is_some_and(|c| c.same_connection(used)) {
            client.take();
        }
    }

    /// A live connection: the current one, or a new one if it broke.
    pub async fn client(&self) -> Result<RpcClient, RpcError> {
        let mut client = self.client.lock().await;
        if let Some(live) = client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(live.clone());
        }
        let fresh = RpcClient::connect(self.addr, self.config.clone()).await?;
        *client = Some(fresh.clone());
        Ok(fresh)
    }
}

/// One [`Peer`] per address, made on first use and kept.
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::rpc::Message;
    use crate::transport::{serve, Responder, ServerConfig, Service};

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
