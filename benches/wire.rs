//! Encoding and decoding the messages that carry team blocks: a TLog commit
//! (one block) and a peek reply (many), as the sender frames them and the
//! receiver takes them apart.
//!
//! ```sh
//! cargo bench -p proto --bench wire
//! ```

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::rpc::{Envelope, Message, PeekReply, TLogCommitRequest, TeamBlockData};
use proto::{StorageTeamId, Version};
use std::hint::black_box;

fn block(team: u64, len: usize) -> TeamBlockData {
    TeamBlockData {
        team: StorageTeamId(team),
        data: Bytes::from(vec![0x5a; len]),
    }
}

fn commit(len: usize) -> Envelope {
    Envelope {
        request_id: 1,
        message: Message::TLogCommit(TLogCommitRequest {
            prev_version: Version(1),
            version: Version(2),
            known_committed_version: Version(1),
            teams: vec![block(1, len)],
        }),
    }
}

fn peek_reply(blocks: usize, len: usize) -> Envelope {
    Envelope {
        request_id: 1,
        message: Message::PeekReply(PeekReply {
            blocks: (0..blocks).map(|_| block(1, len)).collect(),
            end: Version(100),
            popped: Version(0),
            max_known_version: Version(100),
            known_committed_version: Version(99),
            end_of_stream: false,
        }),
    }
}

fn bench_wire(c: &mut Criterion) {
    let cases = [
        ("commit", "100B", commit(100)),
        ("commit", "4KiB", commit(4 << 10)),
        ("commit", "64KiB", commit(64 << 10)),
        ("peek_reply", "64x16KiB", peek_reply(64, 16 << 10)),
    ];
    let mut group = c.benchmark_group("encode");
    for (what, size, envelope) in &cases {
        let frame: Bytes = envelope.encode().into();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new(*what, size), envelope, |b, envelope| {
            b.iter(|| black_box(envelope.encode()))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("decode");
    for (what, size, envelope) in &cases {
        let frame: Bytes = envelope.encode().into();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new(*what, size), &frame, |b, frame| {
            b.iter(|| black_box(Envelope::decode(frame.clone()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);
