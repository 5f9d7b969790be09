//! Calls between the roles of one process: the request goes to the
//! server's [`Service`] as the value the caller built, with no socket, no
//! frame and no task in between.
//!
//! A process that hosts several roles (a `teamlog server` with its
//! coordinators, storage servers and recruited roles) hands each of them
//! the same [`LocalNetwork`] in its client and server configurations. A
//! server serving with it registers its service under the address it
//! listens at; a client connecting with it to a registered address gets a
//! `LocalLink` instead of a TCP connection.
//!
//! ```text
//!  RpcClient::connect(A) ─▶ LocalNetwork: is A served in this process?
//!                             ├─ yes: LocalLink
//!                             │    call: Service::handle(request, Responder) on the caller's task
//!                             │          ◀─ oneshot ◀─ Responder::reply (now, or later from anywhere)
//!                             └─ no:  TCP, and TLS when configured, as before
//! ```
//!
//! A call over a socket wakes five tasks (the caller's writer, the
//! server's reader, the server's writer, the caller's reader, the caller)
//! and encodes and decodes both messages; over the link, the handler runs
//! where the caller is and its reply wakes the caller alone.
//!
//! What the link leaves out, and why: the frame codec, the byte budgets,
//! the in-flight cap and the connection timeouts protect a server from the
//! bytes of peers it does not control. A local caller is this process's
//! own code: it sends messages it built, bounds its own calls in flight
//! (each role's budget of outstanding requests), and waits with the same
//! per-call timeout as over the network. Its peer counts as a member: only
//! code of this process that was handed the network can make a link, and
//! such a process already holds the member identity.
//!
//! When the server stops serving, its registration goes: no new link
//! reaches it, calls waiting on it end with `ConnectionClosed`, and the
//! reply futures its handlers started ([`Responder::reply_with`]) are
//! dropped, as a closed connection's are.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::server::{not_a_request, Responder, Service};
use super::RpcError;
use crate::rpc::Message;

/// The servers of one process that its clients reach without a socket.
#[derive(Default)]
pub struct LocalNetwork {
    servers: Mutex<BTreeMap<SocketAddr, LocalServer>>,
    next_registration: AtomicU64,
}

impl fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<SocketAddr> = self.lock().keys().copied().collect();
        f.debug_struct("LocalNetwork")
            .field("servers", &servers)
            .finish()
    }
}

/// One registered server, as its links hold it.
#[derive(Clone)]
struct LocalServer {
    registration: u64,
    /// Weak, so that links do not keep a stopped role's service (its
    /// files, its threads) alive.
    service: Weak<dyn Service>,
    /// Cancelled when the server stops serving.
    stopped: CancellationToken,
}

impl LocalNetwork {
    pub fn new() -> Arc<LocalNetwork> {
        Arc::new(LocalNetwork::default())
    }

    /// Whether a server of this process serves `addr` now.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.lock().contains_key(&addr)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SocketAddr, LocalServer>> {
        // Every change under this lock is one insert or remove, so a panic
        // elsewhere cannot leave the map half changed.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `service`'s calls to `addr` until the registration drops.
    /// A later registration of the same address replaces this one.
    pub(super) fn register(
        self: &Arc<Self>,
        addr: SocketAddr,
        service: &Arc<dyn Service>,
    ) -> Registration {
        let server = LocalServer {
            registration: self.next_registration.fetch_add(1, Ordering::Relaxed),
            service: Arc::downgrade(service),
            stopped: CancellationToken::new(),
        };
        self.lock().insert(addr, server.clone());
        Registration {
            network: Arc::clone(self),
            addr,
            server,
        }
    }

    /// A link to the server of this process at `addr`, or `None` when none
    /// serves it (the caller then goes over the network).
    pub(super) fn link(&self, addr: SocketAddr) -> Option<LocalLink> {
        let server = self.lock().get(&addr).cloned()?;
        Some(LocalLink { server })
    }
}

/// A server's place on its process's [`LocalNetwork`].
pub(super) struct Registration {
    network: Arc<LocalNetwork>,
    addr: SocketAddr,
    server: LocalServer,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut servers = self.network.lock();
            if servers
                .get(&self.addr)
                .is_some_and(|current| current.registration == self.server.registration)
            {
                servers.remove(&self.addr);
            }
        }
        self.server.stopped.cancel();
    }
}

/// A client's way to a server of its own process.
pub(super) struct LocalLink {
    server: LocalServer,
}

impl LocalLink {
    /// Hands `message` to the server's service and waits for its reply
    /// (the caller bounds the wait).
    pub(super) async fn call(&self, message: Message) -> Result<Message, RpcError> {
        let stopped = &self.server.stopped;
        if stopped.is_cancelled() {
            return Err(RpcError::ConnectionClosed);
        }
        let service = self
            .server
            .service
            .upgrade()
            .ok_or(RpcError::ConnectionClosed)?;
        let (reply, replied) = oneshot::channel();
        let responder = Responder::local(reply, stopped.clone());
        if message.is_request() {
            service.handle(message, responder);
        } else {
            responder.reply(Err(not_a_request(&message)));
        }
        drop(service);
        tokio::select! {
            biased;
            reply = replied => reply.map_err(|_| RpcError::ConnectionClosed),
            () = stopped.cancelled() => Err(RpcError::ConnectionClosed),
        }
    }

    /// Whether the server stopped serving; every later call fails.
    pub(super) fn is_closed(&self) -> bool {
        self.server.stopped.is_cancelled() || self.server.service.strong_count() == 0
    }
}
