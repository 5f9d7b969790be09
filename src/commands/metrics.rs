//! The Prometheus endpoint a role process serves with `--metrics ADDR`.
//!
//! ```text
//!  role crates ─ metrics::counter!/gauge!/histogram! ─▶ global PrometheusRecorder
//!                                                          │ handle.render()
//!  scraper ─ GET /metrics ─▶ accept loop ─ one task per connection (bounded) ─┘
//!                             upkeep task: drains histogram buffers every 5 s
//! ```
//!
//! The role crates record through the `metrics` facade, which costs nothing
//! until [`start_endpoint`] installs the recorder. The HTTP side is a few
//! lines over tokio rather than the exporter's own listener, which would
//! bring an HTTP stack for one route. A bad client cannot hurt the process:
//! a connection gets a bounded request head, a deadline to send it and
//! another to take the answer, and connections beyond a fixed number are
//! closed at once.
//!
//! Metric names start with `teamlog_` and carry their unit (`_seconds`,
//! `_bytes`, `_total`, `_version`); the role modules document theirs.
//! Latencies and batch sizes are Prometheus histograms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The most bytes of request head read before the request is refused.
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take the whole answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed without an answer.
const MAX_CONNECTIONS: usize = 32;
/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets, 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Batch size buckets in bytes, 256 B to 16 MiB.
const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];
/// Commits per proxy batch.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installs the process-wide recorder and serves `GET /metrics` on `addr`;
/// returns the bound address. Call once per process, inside a tokio runtime.
pub async fn start_endpoint(addr: SocketAddr) -> Result<SocketAddr> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_bytes".into()), BYTES_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("teamlog_proxy_batch_commits".into()),
            COUNT_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
    let local_addr = listener.local_addr()?;
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve(listener, Arc::new(move || handle.render())));
    tracing::info!(addr = %local_addr, "metrics endpoint listening");
    Ok(local_addr)
}

/// Renders the current metrics in the Prometheus text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers scrapes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: wait instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint could not accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint busy; closing a connection");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &render).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(slot);
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request head too slow")
        })??;
    let (status, body) = match head {
        None => ("431 Request Header Fields Too Large", String::new()),
        Some(head) => route(&head, render),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not taken"))?
}

/// The request head up to its blank line; None when it is too long.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn route(head: &[u8], render: &Render) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    match (method, target) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render()),
        (Some(b"GET"), Some(_)) => ("404 Not Found", "try /metrics\n".into()),
        _ => ("405 Method Not Allowed", String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn endpoint() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(|| "teamlog_test 1\n".to_string())));
        addr
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_scrape_gets_the_rendered_metrics() {
        let addr = endpoint().await;
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Length: 15\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nteamlog_test 1\n"), "{response}");
    }

    #[tokio::test]
    async fn other_paths_methods_and_oversize_heads_are_refused() {
        let addr = endpoint().await;
        let not_found = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(not_found.starts_with("HTTP/1.1 404 "), "{not_found}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        // Exactly the limit, so the endpoint reads all of it and closing
        // does not reset the connection before the answer is read.
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.resize(MAX_REQUEST_HEAD, b'x');
        let refused = exchange(addr, &huge).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        // The endpoint still serves after those.
        let ok = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    }
}
