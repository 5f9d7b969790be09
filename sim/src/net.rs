//! The transport's network, simulated: connections are turmoil's TCP
//! streams between the simulation's hosts, so every byte the roles send
//! crosses turmoil's links, where it can be delayed, held or cut.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use proto::transport::net::{Accept, BoxFuture, Dialer, Listener, Stream};
use proto::transport::ClientConfig;

/// Connects through the simulated network.
#[derive(Debug)]
pub struct SimDialer;

impl Dialer for SimDialer {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

struct SimAccept(turmoil::net::TcpListener);

impl Accept for SimAccept {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as Box<dyn Stream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Listens on `port` of the current host.
pub async fn listen(port: u16) -> io::Result<Listener> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(Listener::Other(Box::new(SimAccept(listener))))
}

/// A client configuration that calls through the simulated network.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        dialer: Some(Arc::new(SimDialer)),
        ..ClientConfig::default()
    }
}
