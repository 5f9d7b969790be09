//! Write and read rates of the storage layer, with the raw heed engine as
//! the baseline measured in the same run.
//!
//! ```text
//!   heed_write/{random,ascending}      1000 × 100 B sets in one WriteBatch (one LMDB commit)
//!   versioned/{random,ascending}       the same 1000 sets applied over 10 versions,
//!                                      then flush_to(applied): one WriteBatch
//!   versioned_mem/random               the same on a fresh MemEngine: the window's CPU cost
//!   get/{window_hit,engine_hit}        VersionedStore::get at the applied version;
//!                                      100k keys in the window, 100k in heed
//! ```
//!
//! Run: `cargo bench -p storage_server --bench engine`. The LMDB files live
//! under the target directory (a real disk, not tmpfs).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use proto::{Mutation, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage_server::engine::{KvEngine, WriteBatch};
use storage_server::heed_engine::HeedEngine;
use storage_server::mem_engine::MemEngine;
use storage_server::versioned::{VersionedStore, WindowConfig};

const SETS_PER_BATCH: u64 = 1000;
const VERSIONS_PER_BATCH: u64 = 10;
const VALUE: [u8; 100] = [0x5a; 100];
const MAP_SIZE: usize = 8 << 30;
const READ_KEYS: u64 = 100_000;

/// Keys for the write benches: ascending counters or random 64-bit values.
struct KeySource {
    next: u64,
    rng: Option<StdRng>,
}

impl KeySource {
    fn new(random: bool) -> KeySource {
        KeySource {
            next: 0,
            rng: random.then(|| StdRng::seed_from_u64(7)),
        }
    }

    fn key(&mut self) -> Bytes {
        let n = match &mut self.rng {
            Some(rng) => rng.random(),
            None => {
                self.next += 1;
                self.next
            }
        };
        Bytes::from(format!("user/{n:016x}"))
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

fn heed_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("heed_write");
    group.throughput(Throughput::Elements(SETS_PER_BATCH));
    for (name, random) in [("random", true), ("ascending", false)] {
        let dir = temp_dir();
        let engine = HeedEngine::open(dir.path(), MAP_SIZE).expect("open");
        let mut keys = KeySource::new(random);
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let mut batch = WriteBatch::new();
                for _ in 0..SETS_PER_BATCH {
                    batch.set(keys.key(), Bytes::from_static(&VALUE));
                }
                engine.write(batch).expect("write");
            })
        });
    }
    group.finish();
}

/// Applies one batch worth of sets over `VERSIONS_PER_BATCH` versions and
/// flushes them in one write.
fn apply_and_flush<E: KvEngine>(store: &mut VersionedStore<E>, keys: &mut KeySource) {
    let per_version = SETS_PER_BATCH / VERSIONS_PER_BATCH;
    for _ in 0..VERSIONS_PER_BATCH {
        let version = store.applied_version().next();
        for _ in 0..per_version {
            let mutation = Mutation::SetValue {
                key: keys.key(),
                value: Bytes::from_static(&VALUE),
            };
            store.apply(version, &mutation).expect("apply");
        }
        store.set_applied(version);
    }
    let applied = store.applied_version();
    store.flush_to(applied, &[]).expect("flush");
}

fn versioned_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("versioned");
    group.throughput(Throughput::Elements(SETS_PER_BATCH));
    for (name, random) in [("random", true), ("ascending", false)] {
        let dir = temp_dir();
        let engine = Arc::new(HeedEngine::open(dir.path(), MAP_SIZE).expect("open"));
        let mut store = VersionedStore::open(engine, WindowConfig::default()).expect("store");
        let mut keys = KeySource::new(random);
        group.bench_function(name, |bench| {
            bench.iter(|| apply_and_flush(&mut store, &mut keys))
        });
    }
    group.finish();

    // A fresh store per iteration keeps the memory engine small, so this is
    // the window's own cost: copy in, index, plan, build the batch, discard.
    let mut group = c.benchmark_group("versioned_mem");
    group.throughput(Throughput::Elements(SETS_PER_BATCH));
    let mut keys = KeySource::new(true);
    group.bench_function("random", |bench| {
        bench.iter_batched(
            || {
                let engine = Arc::new(MemEngine::new());
                VersionedStore::open(engine, WindowConfig::default()).expect("store")
            },
            |mut store| {
                apply_and_flush(&mut store, &mut keys);
                store
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn read_key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}/{i:08}"))
}

fn point_reads(c: &mut Criterion) {
    let dir = temp_dir();
    let engine = Arc::new(HeedEngine::open(dir.path(), MAP_SIZE).expect("open"));
    let mut store = VersionedStore::open(engine, WindowConfig::default()).expect("store");
    // 100k keys flushed into heed, then 100k more in the window over 100
    // versions.
    for (prefix, flush) in [("engine", true), ("window", false)] {
        for chunk in 0..100 {
            let version = store.applied_version().next();
            for i in chunk * (READ_KEYS / 100)..(chunk + 1) * (READ_KEYS / 100) {
                let mutation = Mutation::SetValue {
                    key: read_key(prefix, i),
                    value: Bytes::from_static(&VALUE),
                };
                store.apply(version, &mutation).expect("apply");
            }
            store.set_applied(version);
        }
        if flush {
            let applied = store.applied_version();
            store.flush_to(applied, &[]).expect("flush");
        }
    }
    let at: Version = store.applied_version();
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    for prefix in ["window", "engine"] {
        let mut rng = StdRng::seed_from_u64(11);
        let keys: Vec<Bytes> = (0..4096)
            .map(|_| read_key(prefix, rng.random_range(0..READ_KEYS)))
            .collect();
        let mut next = 0;
        group.bench_function(format!("{prefix}_hit"), |bench| {
            bench.iter(|| {
                next = (next + 1) % keys.len();
                let value = store.get(&keys[next], at).expect("get");
                black_box(value.expect("present"));
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = heed_write, versioned_write, point_reads
}
criterion_main!(benches);
