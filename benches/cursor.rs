//! Mutations per second of each cursor kind over data prebuilt in a
//! `MemorySource`, next to a bare `BinaryHeap` k-way merge of the same
//! mutations measured in the same run.
//!
//! ```text
//! build(teams) ──▶ MemorySource (128 Ki mutations, 16 per version, spread over the teams)
//!    ├─ */fetch_and_merge: new cursor, fetch everything, yield everything (parsing included)
//!    ├─ */merge: one fetch up front; each iteration = reset() + a full pass (the merge alone)
//!    └─ bare_heap: BinaryHeap pop/push merge of the same decoded mutations
//! ```
//!
//! Run: `cargo bench -p cursor --bench cursor`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cursor::{
    BroadcastMode, BroadcastedStorageTeamPeekCursor, MemorySource, MergeOrder,
    MutableTeamPeekCursor, Ordered, PeekCursor, StorageTeamPeekCursor, TeamSet, Unordered,
};
use futures::executor::block_on;
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, Version, VersionedMutation};

const MUTATIONS: u64 = 128 << 10;
const PER_VERSION: u64 = 16;
const TEAM_COUNTS: [u64; 4] = [1, 3, 16, 64];
const PRIVATE: StorageTeamId = StorageTeamId(1_000_000);
const SERVER: StorageServerId = StorageServerId(1);
/// Large enough that one fetch takes a team's whole stream.
const ALL: u32 = u32::MAX;

fn teams(count: u64) -> Vec<StorageTeamId> {
    (1..=count).map(StorageTeamId).collect()
}

/// 16 mutations per version, each on a team picked by a fixed
/// multiplicative hash, 16-byte keys and 100-byte values; epoch ended.
fn build(count: u64, private: bool) -> (Arc<MemorySource>, Vec<Vec<VersionedMutation>>) {
    let source = Arc::new(MemorySource::new(BroadcastMode::NoBroadcast));
    let teams = teams(count);
    for team in &teams {
        source.add_team(*team);
    }
    if private {
        source.add_team(PRIVATE);
    }
    let value = Bytes::from(vec![7u8; 100]);
    let mut by_team = vec![Vec::new(); teams.len()];
    for version in 1..=MUTATIONS / PER_VERSION {
        let mut writes = Vec::new();
        for s in 1..=PER_VERSION {
            let index = ((version * PER_VERSION + s).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40)
                as usize
                % teams.len();
            let mutation = Mutation::SetValue {
                key: Bytes::from(format!("{version:010}/{s:05}")),
                value: value.clone(),
            };
            let subsequence = Subsequence(s as u32);
            by_team[index].push(VersionedMutation {
                version: Version(version),
                subsequence,
                team: teams[index],
                mutation: mutation.clone(),
            });
            writes.push((teams[index], subsequence, mutation));
        }
        source
            .commit(Version(version), &writes)
            .expect("ordered commit");
    }
    source.lock();
    (source, by_team)
}

fn drain<C: PeekCursor>(cursor: &mut C) -> u64 {
    let mut sum = 0u64;
    while !cursor.is_end_of_stream() {
        block_on(cursor.remote_more_available()).expect("memory source");
        sum += pass(cursor);
    }
    sum
}

fn pass<C: PeekCursor>(cursor: &mut C) -> u64 {
    let mut sum = 0u64;
    while cursor.has_remaining() {
        sum += u64::from(black_box(cursor.get()).subsequence.0);
        cursor.next();
    }
    sum
}

/// The textbook k-way merge: pop the smallest, push its stream's next.
fn bare_heap(streams: &[Vec<VersionedMutation>]) -> u64 {
    let mut heap = BinaryHeap::with_capacity(streams.len());
    let mut positions = vec![0usize; streams.len()];
    for (index, stream) in streams.iter().enumerate() {
        if let Some(m) = stream.first() {
            heap.push(Reverse((m.version, m.subsequence, index)));
        }
    }
    let mut sum = 0u64;
    while let Some(Reverse((_, _, index))) = heap.pop() {
        let stream = &streams[index];
        sum += u64::from(black_box(&stream[positions[index]]).subsequence.0);
        positions[index] += 1;
        if let Some(m) = stream.get(positions[index]) {
            heap.push(Reverse((m.version, m.subsequence, index)));
        }
    }
    sum
}

fn merged<O: MergeOrder>(
    source: &Arc<MemorySource>,
    count: u64,
    max_bytes: u32,
) -> BroadcastedStorageTeamPeekCursor<Arc<MemorySource>, O> {
    BroadcastedStorageTeamPeekCursor::new(source.clone(), teams(count), Version(1))
        .with_max_bytes(max_bytes)
}

fn mutable(source: &Arc<MemorySource>, count: u64, max_bytes: u32) -> impl PeekCursor {
    MutableTeamPeekCursor::<_, Ordered>::new(
        source.clone(),
        SERVER,
        TeamSet::new(PRIVATE, teams(count)),
        Version(1),
    )
    .with_max_bytes(max_bytes)
}

fn merges(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    group.throughput(Throughput::Elements(MUTATIONS));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for count in TEAM_COUNTS {
        let (source, streams) = build(count, true);
        group.bench_with_input(BenchmarkId::new("bare_heap", count), &streams, |b, s| {
            b.iter(|| bare_heap(s))
        });
        let mut ordered = merged::<Ordered>(&source, count, ALL);
        assert_eq!(drain(&mut ordered), bare_heap(&streams));
        group.bench_function(BenchmarkId::new("ordered", count), |b| {
            b.iter(|| {
                ordered.reset();
                pass(&mut ordered)
            })
        });
        let mut unordered = merged::<Unordered>(&source, count, ALL);
        drain(&mut unordered);
        group.bench_function(BenchmarkId::new("unordered", count), |b| {
            b.iter(|| {
                unordered.reset();
                pass(&mut unordered)
            })
        });
        let mut mutable = mutable(&source, count, ALL);
        drain(&mut mutable);
        group.bench_function(BenchmarkId::new("mutable", count), |b| {
            b.iter(|| {
                mutable.reset();
                pass(&mut mutable)
            })
        });
    }
    group.finish();
}

fn fetch_and_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("fetch_and_merge");
    group.throughput(Throughput::Elements(MUTATIONS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    let max_bytes = 1 << 20;
    let (source, _) = build(1, false);
    group.bench_function("single/1", |b| {
        b.iter(|| {
            let mut cursor =
                StorageTeamPeekCursor::new(source.clone(), StorageTeamId(1), Version(1))
                    .with_max_bytes(max_bytes);
            drain(&mut cursor)
        })
    });
    for count in TEAM_COUNTS {
        let (source, _) = build(count, true);
        group.bench_function(BenchmarkId::new("ordered", count), |b| {
            b.iter(|| drain(&mut merged::<Ordered>(&source, count, max_bytes)))
        });
        group.bench_function(BenchmarkId::new("unordered", count), |b| {
            b.iter(|| drain(&mut merged::<Unordered>(&source, count, max_bytes)))
        });
        group.bench_function(BenchmarkId::new("mutable", count), |b| {
            b.iter(|| drain(&mut mutable(&source, count, max_bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, merges, fetch_and_merge);
criterion_main!(benches);
