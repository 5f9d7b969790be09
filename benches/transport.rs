//! Round trips of one small request over the RPC transport on loopback:
//! plain TCP next to mutual TLS, measured in the same run, so the pair
//! gives the per-hop cost of TLS.
//!
//! ```text
//!  RpcClient ──Lock──▶ serve(...) ──PopReply──▶ RpcClient     one call at a time
//!      plain: TcpStream          tls: rustls over the same TcpStream
//! ```
//!
//! Run: `cargo bench -p benches --bench transport`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use proto::{serve, Message, Responder, RpcClient, Service};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// Answers every request at once.
struct Answer;

impl Service for Answer {
    fn handle(&self, _request: Message, responder: Responder) {
        responder.reply(Ok(Message::PopReply));
    }
}

fn round_trip(c: &mut Criterion) {
    let runtime = Runtime::new().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = cluster::tls_files::generate(dir.path())
        .and_then(|entry| entry.settings())
        .expect("TLS files");
    let mut group = c.benchmark_group("round_trip");
    for (name, settings) in [("plain", None), ("tls", Some(&tls))] {
        let client = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let server = cluster::tls_files::server_config(settings).expect("server config");
            tokio::spawn(serve(
                listener,
                Arc::new(Answer),
                server,
                std::future::pending(),
            ));
            RpcClient::connect(addr, cluster::tls_files::client_config(settings))
                .await
                .expect("connect")
        });
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| async { client.call(Message::Lock).await.expect("answered") });
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
