//! Where connections come from: the operating system's TCP unless a
//! [`Dialer`] or an [`Accept`] says otherwise. A simulation plugs its own
//! network in here, and everything above (framing, TLS, budgets,
//! multiplexing) runs over it unchanged.
//!
//! ```text
//!  RpcClient::connect ─▶ ClientConfig::dialer ─▶ TcpStream::connect │ Dialer::connect
//!  serve(Listener)    ─▶ Listener::Tcp(TcpListener)                  │ Listener::Other(Accept)
//!  Binder::bind       ─▶ TcpBinder: TcpListener::bind                │ another network's listener
//! ```
//!
//! Before either, a client with a [`LocalNetwork`](super::local::LocalNetwork)
//! calls a server of its own process directly when there is one.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::ClientConfig;

/// A connected byte stream of another network.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes a client's connections on another network.
pub trait Dialer: fmt::Debug + Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Stream>>>;
}

/// Takes a server's connections on another network.
pub trait Accept: Send + 'static {
    /// The next connection and the address it comes from.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>>;

    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Opens a server's listeners where a process chooses its ports at run
/// time (a worker's roles).
pub trait Binder: fmt::Debug + Send + Sync + 'static {
    /// Listens at `addr`; port 0 takes a free one.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>>;
}

/// Listens on the operating system's TCP.
#[derive(Debug, Default)]
pub struct TcpBinder;

impl Binder for TcpBinder {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>> {
        Box::pin(async move { Ok(Listener::Tcp(TcpListener::bind(addr).await?)) })
    }
}

/// What a server accepts connections from.
pub enum Listener {
    Tcp(TcpListener),
    Other(Box<dyn Accept>),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Listener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            Listener::Other(accept) => accept.local_addr(),
        }
    }

    pub(super) async fn accept(&mut self) -> io::Result<(Connected, SocketAddr)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Connected::Tcp(stream), peer))
            }
            Listener::Other(accept) => {
                let (stream, peer) = accept.accept().await?;
                Ok((Connected::Other(stream), peer))
            }
        }
    }
}

/// One connection, either end. TCP stays its own case so that its halves
/// split without a lock between them.
pub(super) enum Connected {
    Tcp(TcpStream),
    Other(Box<dyn Stream>),
}

impl Connected {
    pub(super) async fn connect(addr: SocketAddr, config: &ClientConfig) -> io::Result<Connected> {
        match config.dialer.as_deref() {
            None => Ok(Connected::Tcp(TcpStream::connect(addr).await?)),
            Some(dialer) => Ok(Connected::Other(dialer.connect(addr).await?)),
        }
    }

    /// Sends small frames at once (TCP_NODELAY) where the network has
    /// such a setting.
    pub(super) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Connected::Tcp(stream) => stream.set_nodelay(true),
            Connected::Other(_) => Ok(()),
        }
    }
}
