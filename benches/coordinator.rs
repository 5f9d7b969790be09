//! One coordinated register, three coordinators in this process, each on
//! its own LMDB store in a temporary directory (on the real disk): a
//! linearizable read next to a conditional write, measured in the same
//! run, so the pair gives what replicating and syncing a write costs.
//!
//! ```text
//!  CoordinatorClient ─read / write─▶ leader ─append entries─▶ 2 followers (sync each)
//! ```
//!
//! Run: `cargo bench -p benches --bench coordinator`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use coordinator::client::CoordinatorClient;
use coordinator::disk::HeedDisk;
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use criterion::{criterion_group, criterion_main, Criterion};
use proto::transport::{serve, ServerConfig};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

fn register(c: &mut Criterion) {
    let runtime = Runtime::new().expect("a tokio runtime");
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let client = runtime.block_on(async {
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let members: BTreeMap<u64, SocketAddr> = (1..)
            .zip(listeners.iter().map(|l| l.local_addr().expect("address")))
            .collect();
        for ((id, listener), dir) in (1..).zip(listeners).zip(&dirs) {
            let disk = Arc::new(HeedDisk::open(dir.path()).expect("a store"));
            let config = CoordinatorConfig::new(id, members.clone());
            let service = CoordinatorService::start(&config, disk)
                .await
                .expect("a coordinator");
            tokio::spawn(serve(
                listener,
                Arc::new(service),
                ServerConfig::default(),
                std::future::pending(),
            ));
        }
        let addrs: Vec<SocketAddr> = members.values().copied().collect();
        let client = CoordinatorClient::new(&addrs, Default::default()).expect("a client");
        client
            .write("bench", 0, Bytes::from_static(b"0"))
            .await
            .expect("the first write");
        client
    });
    let value = Bytes::from(vec![7u8; 1024]);
    let mut group = c.benchmark_group("coordinated_register");
    group.bench_function("read", |b| {
        b.to_async(&runtime)
            .iter(|| async { client.read("bench").await.expect("read") });
    });
    // This client is the only writer, so each write expects the revision
    // the previous one made.
    let revision = AtomicU64::new(1);
    group.bench_function("write_1KiB", |b| {
        b.to_async(&runtime).iter(|| async {
            let expected = revision.load(Ordering::Relaxed);
            let outcome = client
                .write("bench", expected, value.clone())
                .await
                .expect("write");
            assert!(outcome.written);
            revision.store(outcome.register.revision, Ordering::Relaxed);
        });
    });
    group.finish();
}

criterion_group!(benches, register);
criterion_main!(benches);
