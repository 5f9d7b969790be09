//! TLog bytes written per commit with and without version broadcasting:
//! a commit touching one team with one 100-byte value, in a cluster of 10,
//! 100 and 1000 teams. With broadcasting every other team gets an
//! empty-version block; without, nothing.
//!
//! ```text
//! TeamBlockBuilder ──▶ CommitRecord { blocks } ──Record::encode──▶ payload
//!                                         on disk: 32-byte record header + payload, 8-byte aligned
//! ```
//!
//! Run: `cargo bench -p cursor --bench broadcast_bytes` (prints a table).

use bytes::Bytes;
use proto::{Mutation, StorageTeamId, Subsequence, TeamBlockBuilder, Version};
use tlog::record::{CommitRecord, Record};

/// The log's record header and alignment (tlog/src/log/format.rs).
const RECORD_HEADER_LEN: usize = 32;
const RECORD_ALIGN: usize = 8;

fn commit_bytes(teams: u64, broadcast: bool) -> (usize, usize) {
    let version = Version(1_000_000);
    let mut blocks = Vec::new();
    let mut written = TeamBlockBuilder::new(StorageTeamId(0));
    let mutation = Mutation::SetValue {
        key: Bytes::from_static(b"user/key/0000001"),
        value: Bytes::from(vec![0u8; 100]),
    };
    written
        .push(version, Subsequence(1), &mutation)
        .expect("fresh block");
    blocks.push((StorageTeamId(0), written.finish()));
    if broadcast {
        for team in 1..teams {
            let mut empty = TeamBlockBuilder::new(StorageTeamId(team));
            empty.push_empty_version(version).expect("fresh block");
            blocks.push((StorageTeamId(team), empty.finish()));
        }
    }
    let record = Record::Commit(CommitRecord {
        prev_version: Version(999_999),
        version,
        known_committed_version: Version(999_998),
        blocks,
    });
    let payload = record.encode().len();
    let on_disk = (RECORD_HEADER_LEN + payload).div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    (payload, on_disk)
}

fn main() {
    println!("TLog bytes per commit (one team written, 16-byte key, 100-byte value)");
    println!(
        "{:>6} | {:>22} | {:>25} | {:>6}",
        "teams", "broadcast payload/disk", "no broadcast payload/disk", "ratio"
    );
    for teams in [10u64, 100, 1000] {
        let (b_payload, b_disk) = commit_bytes(teams, true);
        let (n_payload, n_disk) = commit_bytes(teams, false);
        println!(
            "{teams:>6} | {:>22} | {:>25} | {:>5.1}x",
            format!("{b_payload} / {b_disk}"),
            format!("{n_payload} / {n_disk}"),
            b_disk as f64 / n_disk as f64
        );
    }
}
