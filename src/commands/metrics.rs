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
//! until [`start_endpoint`] installs the recorder. hyper serves the HTTP.
//! The exporter's own listener is not used: it takes every connection and
//! waits on each for ever. Here a bad client cannot hurt the process: a
//! connection gets a bounded request head, a deadline to send it and another
//! for the whole exchange, and connections beyond a fixed number are closed
//! at once.
//!
//! Metric names start with `teamlog_` and carry their unit (`_seconds`,
//! `_bytes`, `_total`, `_version`); the role modules document theirs.
//! Latencies and batch sizes are Prometheus histograms.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The most bytes of request head read before the request is refused
/// (hyper takes no less than 8 KiB).
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole exchange may take, answer included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Answers scrapes on `listener` until the runtime stops. hyper parses the
/// HTTP; this loop bounds what a client may hold: a connection slot, a
/// request head of `MAX_REQUEST_HEAD` bytes sent within `READ_TIMEOUT`, and
/// `CONNECTION_TIMEOUT` for the whole exchange.
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
            let service = service_fn(move |request| {
                let response = answer(&request, &render);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection too slow; closed"),
            }
            drop(slot);
        });
    }
}

fn answer(request: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "try /metrics\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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
        assert!(
            response
                .to_ascii_lowercase()
                .contains("content-length: 15\r\n"),
            "{response}"
        );
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
        assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");
    }

    /// Reads until the endpoint closes the connection; panics if it has not
    /// within a deadline far beyond the endpoint's own timeouts.
    async fn wait_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut got))
            .await
            .expect("the endpoint closes the connection")
            .ok();
        got
    }

    #[tokio::test]
    async fn a_client_that_sends_no_request_is_closed() {
        let addr = endpoint().await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /met").await.unwrap();
        let got = wait_closed(&mut idle).await;
        assert!(!String::from_utf8_lossy(&got).contains("teamlog_test"));
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
        let addr = endpoint().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted after the held ones, it finds no slot: closed unanswered.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(wait_closed(&mut extra).await.is_empty());
        drop(held);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            if response.starts_with("HTTP/1.1 200 OK") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no slot came back");
            tokio::task::yield_now().await;
        }
    }
}
