//! Calls between the roles of one process, without a socket.
//!
//! A process that hosts several roles (a `teamlog server` with its
//! coordinators, storage servers and recruited roles) hands each of them
//! the same [`LocalNetwork`] in its client and server configurations. A
//! server serving with it registers the address it listens at; a client
//! connecting with it to a registered address gets an in-memory pipe to
//! that server's accept loop instead of a TCP connection. Framing, budgets,
//! timeouts and multiplexing run over the pipe unchanged.
//!
//! ```text
//!  RpcClient::connect(A) ─▶ LocalNetwork: is A served in this process?
//!                             ├─ yes: duplex pipe ─▶ serve(A)'s accept loop (as if accepted)
//!                             └─ no:  TCP, and TLS when configured, as before
//! ```
//!
//! The pipe is neither encrypted nor authenticated, and its peer counts as
//! a member: only code of this process that was handed the network can
//! open one, and such a process already holds the member identity. A call
//! across a loopback socket costs each side a system call and the wake of
//! a thread polling the socket; across the pipe it is a task wake.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes a pipe holds in each direction before its writer waits.
const PIPE_BYTES: usize = 256 << 10;

/// Connections a server's accept loop has not taken yet; a connect past
/// it waits (within the client's connect timeout).
const ACCEPT_QUEUE: usize = 64;

/// The servers of one process that its clients reach without a socket.
#[derive(Default)]
pub struct LocalNetwork {
    servers: Mutex<BTreeMap<SocketAddr, mpsc::Sender<DuplexStream>>>,
}

impl fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<SocketAddr> = self.lock().keys().copied().collect();
        f.debug_struct("LocalNetwork")
            .field("servers", &servers)
            .finish()
    }
}

impl LocalNetwork {
    pub fn new() -> Arc<LocalNetwork> {
        Arc::new(LocalNetwork::default())
    }

    /// Whether a server of this process serves `addr` now.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.lock().contains_key(&addr)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SocketAddr, mpsc::Sender<DuplexStream>>> {
        // Every change under this lock is one insert or remove, so a panic
        // elsewhere cannot leave the map half changed.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the connections made to `addr` until the registration drops.
    /// A later registration of the same address replaces this one.
    pub(super) fn register(self: &Arc<Self>, addr: SocketAddr) -> Registration {
        let (sender, connections) = mpsc::channel(ACCEPT_QUEUE);
        self.lock().insert(addr, sender.clone());
        Registration {
            network: Arc::clone(self),
            addr,
            sender,
            connections,
        }
    }

    /// A pipe to the server of this process at `addr`, or `None` when none
    /// serves it (the caller then goes over the network).
    pub(super) async fn connect(&self, addr: SocketAddr) -> Option<DuplexStream> {
        let server = self.lock().get(&addr).cloned()?;
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        // Fails only when the server stopped since the lookup.
        server.send(theirs).await.ok()?;
        Some(ours)
    }
}

/// A server's place on its process's [`LocalNetwork`].
pub(super) struct Registration {
    network: Arc<LocalNetwork>,
    addr: SocketAddr,
    sender: mpsc::Sender<DuplexStream>,
    connections: mpsc::Receiver<DuplexStream>,
}

impl Registration {
    /// The next connection made to this server.
    pub(super) async fn accept(&mut self) -> Option<DuplexStream> {
        self.connections.recv().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut servers = self.network.lock();
        if servers
            .get(&self.addr)
            .is_some_and(|current| current.same_channel(&self.sender))
        {
            servers.remove(&self.addr);
        }
    }
}
