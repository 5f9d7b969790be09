//! The transport's network, simulated: connections are turmoil's TCP
//! streams between the simulation's hosts, so every byte the roles send
//! crosses turmoil's links, where it can be delayed, held or cut.
//!
//! A cut link drops what is sent over it, and TCP never leaves a hole in
//! a stream: a connection whose bytes are lost is a broken connection. So
//! a cut also breaks every connection across the link, as TCP does once
//! it gives up: both ends' next read or write fails (a pending one wakes
//! to fail). A connection made while the link is cut is broken from the
//! start; once the link is back, new ones work.
//!
//! ```text
//!  cut a─b   ─▶ cut_link(a, b): the link's generation + 1, cut
//!  heal a─b  ─▶ heal_link(a, b)
//!  SimStream (born at generation g, or during a cut) ── g < the link's ─▶ ConnectionReset
//!  connect to an address nothing listens at ─▶ ConnectionRefused, after a millisecond
//! ```
//!
//! A connection nothing listens for is refused here, not through turmoil:
//! turmoil drops such a SYN and fails the connect, but keeps the socket it
//! opened for it, so each refused connect would hold one of the host's
//! ephemeral ports for good, and a client that keeps retrying a process
//! that is down would run its host out of them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proto::transport::net::{Accept, Binder, BoxFuture, Dialer, Listener, Stream};
use proto::transport::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The wakers of a stream's pending read and write.
type Wakers = Mutex<[Option<Waker>; 2]>;

#[derive(Default)]
struct Link {
    generation: u64,
    cut: bool,
    /// The streams across the link that may be waiting.
    streams: Vec<Weak<Wakers>>,
}

thread_local! {
    /// Per host pair (lower address first). The simulation runs every host
    /// on the thread that runs it.
    static LINKS: RefCell<BTreeMap<(IpAddr, IpAddr), Link>> = RefCell::default();
    /// The addresses listened at now, each with how many listeners.
    static LISTENING: RefCell<BTreeMap<SocketAddr, usize>> = RefCell::default();
}

/// How long a refused connect takes: about a round trip.
const REFUSAL_DELAY: Duration = Duration::from_millis(1);

fn listening(addr: SocketAddr) -> bool {
    LISTENING.with(|listening| listening.borrow().contains_key(&addr))
}

fn pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    (a.min(b), a.max(b))
}

/// Cuts the link between `a` and `b` (either way): every connection
/// across it breaks, each end's next read or write fails and those
/// waiting now wake to fail, and connections made until [`heal_link`]
/// are broken from the start.
pub fn cut_link(a: IpAddr, b: IpAddr) {
    let waiting = LINKS.with(|links| {
        let mut links = links.borrow_mut();
        let link = links.entry(pair(a, b)).or_default();
        link.generation += 1;
        link.cut = true;
        std::mem::take(&mut link.streams)
    });
    for wakers in waiting.iter().filter_map(Weak::upgrade) {
        let taken = std::mem::take(&mut *wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in taken.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Forgets every link and listener, for a run starting on this thread.
pub(crate) fn forget_links() {
    LINKS.with(|links| links.borrow_mut().clear());
    LISTENING.with(|listening| listening.borrow_mut().clear());
}

/// Ends a cut: connections made from now on work.
pub fn heal_link(a: IpAddr, b: IpAddr) {
    LINKS.with(|links| {
        if let Some(link) = links.borrow_mut().get_mut(&pair(a, b)) {
            link.cut = false;
        }
    });
}

/// A turmoil stream that a cut of its link breaks.
struct SimStream {
    inner: turmoil::net::TcpStream,
    link: (IpAddr, IpAddr),
    generation: u64,
    wakers: Arc<Wakers>,
}

impl SimStream {
    fn new(inner: turmoil::net::TcpStream) -> io::Result<SimStream> {
        let link = pair(inner.local_addr()?.ip(), inner.peer_addr()?.ip());
        let wakers = Arc::new(Wakers::default());
        let generation = LINKS.with(|links| {
            let mut links = links.borrow_mut();
            let entry = links.entry(link).or_default();
            entry.streams.retain(|w| w.strong_count() > 0);
            entry.streams.push(Arc::downgrade(&wakers));
            // Born during a cut: older than the link at once.
            entry.generation - u64::from(entry.cut)
        });
        Ok(SimStream {
            inner,
            link,
            generation,
            wakers,
        })
    }

    fn broken(&self) -> bool {
        LINKS.with(|links| {
            links
                .borrow()
                .get(&self.link)
                .is_some_and(|l| l.generation > self.generation)
        })
    }

    /// `poll` on the inner stream, failing once the link was cut and
    /// leaving the waker where a cut can wake it.
    fn poll_unbroken<T>(
        &mut self,
        cx: &mut Context<'_>,
        slot: usize,
        poll: impl FnOnce(Pin<&mut turmoil::net::TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.broken() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the link was cut",
            )));
        }
        let result = poll(Pin::new(&mut self.inner), cx);
        if result.is_pending() {
            self.wakers.lock().unwrap_or_else(|e| e.into_inner())[slot] = Some(cx.waker().clone());
        }
        result
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_unbroken(cx, 0, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_unbroken(cx, 1, |inner, cx| inner.poll_write(cx, data))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_unbroken(cx, 1, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects through the simulated network.
#[derive(Debug)]
pub struct SimDialer;

impl Dialer for SimDialer {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> {
        Box::pin(async move {
            if !listening(addr) {
                tokio::time::sleep(REFUSAL_DELAY).await;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens at {addr}"),
                ));
            }
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(SimStream::new(stream)?) as Box<dyn Stream>)
        })
    }
}

struct SimAccept {
    listener: turmoil::net::TcpListener,
    /// The host's address: turmoil's listeners bind the unspecified one.
    local: SocketAddr,
}

impl SimAccept {
    fn new(listener: turmoil::net::TcpListener, local: SocketAddr) -> SimAccept {
        LISTENING.with(|listening| *listening.borrow_mut().entry(local).or_default() += 1);
        SimAccept { listener, local }
    }
}

/// Dropped when its server stops or its host crashes.
impl Drop for SimAccept {
    fn drop(&mut self) {
        LISTENING.with(|listening| {
            let mut listening = listening.borrow_mut();
            if let Some(count) = listening.get_mut(&self.local) {
                *count -= 1;
                if *count == 0 {
                    listening.remove(&self.local);
                }
            }
        });
    }
}

impl Accept for SimAccept {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            Ok((Box::new(SimStream::new(stream)?) as Box<dyn Stream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Listens at `addr`, an address of the current host; port 0 takes a
/// free one.
pub async fn listen(addr: SocketAddr) -> io::Result<Listener> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", addr.port())).await?;
    let local = SocketAddr::new(addr.ip(), listener.local_addr()?.port());
    Ok(Listener::Other(Box::new(SimAccept::new(listener, local))))
}

/// Listens through the simulated network, on the current host.
#[derive(Debug)]
pub struct SimBinder;

impl Binder for SimBinder {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>> {
        Box::pin(listen(addr))
    }
}

/// A client configuration that calls through the simulated network.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        dialer: Some(Arc::new(SimDialer)),
        ..ClientConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 4500;

    /// A client that keeps connecting to an address nothing listens at is
    /// refused each time, more times than its host has ephemeral ports
    /// (turmoil keeps a socket for each connect it refuses), and it
    /// connects once a server listens there.
    #[test]
    fn refused_connects_hold_no_port() -> turmoil::Result {
        forget_links();
        let mut sim = turmoil::Builder::new()
            .ephemeral_ports(50_000..=50_009)
            .build();
        sim.host("server", || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let addr = SocketAddr::new(turmoil::lookup("server"), PORT);
            let Listener::Other(mut listener) = listen(addr).await? else {
                unreachable!("a simulated listener");
            };
            listener.accept().await?;
            Ok(())
        });
        sim.client("client", async {
            let server = SocketAddr::new(turmoil::lookup("server"), PORT);
            for _ in 0..100 {
                let refused = SimDialer.connect(server).await.err().expect("refused");
                assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
            }
            while SimDialer.connect(server).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        });
        sim.run()
    }
}
