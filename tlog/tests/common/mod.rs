//! What the log tests share: disks a test can "restart" over, and helpers
//! that damage or inspect them.
// Each test crate uses its own part of these helpers.
#![allow(dead_code)]

use std::sync::Arc;

use tlog::file_store::FileStore;
use tlog::log::{LogConfig, LogError, RecordLocation, SegmentLog};
use tlog::mem_store::MemStore;
use tlog::store::{LogStore, SegmentId};

pub trait Disk {
    type S: LogStore;
    fn new() -> Self;
    /// A store over this disk's data, as a restarted process would open it.
    fn store(&self) -> Arc<Self::S>;
}

pub struct FileDisk {
    dir: tempfile::TempDir,
}

impl Disk for FileDisk {
    type S = FileStore;
    fn new() -> Self {
        FileDisk {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn store(&self) -> Arc<FileStore> {
        Arc::new(FileStore::open(self.dir.path()).expect("open file store"))
    }
}

pub struct MemDisk {
    pub mem: MemStore,
}

impl Disk for MemDisk {
    type S = MemStore;
    fn new() -> Self {
        MemDisk {
            mem: MemStore::new(),
        }
    }
    fn store(&self) -> Arc<MemStore> {
        Arc::new(self.mem.clone())
    }
}

pub const SMALL: LogConfig = LogConfig { segment_size: 4096 };

pub type Records = Vec<(RecordLocation, Vec<u8>)>;

pub fn open<D: Disk>(disk: &D, config: LogConfig) -> Result<(SegmentLog<D::S>, Records), LogError> {
    let mut seen = Vec::new();
    let log = SegmentLog::open(disk.store(), config, |loc, payload| {
        seen.push((loc, payload.to_vec()));
        Ok(())
    })?;
    Ok((log, seen))
}

pub fn payload(i: usize, len: usize) -> Vec<u8> {
    let stamp = format!("record-{i}:");
    stamp.bytes().cycle().take(len).collect()
}

/// Flips one byte through the store interface and makes it durable.
pub fn flip<S: LogStore>(store: &S, id: SegmentId, offset: u64) {
    let mut b = [0u8; 1];
    assert_eq!(store.read_at(id, offset, &mut b).unwrap(), 1);
    b[0] ^= 0x5a;
    store.write_at(id, offset, &b).unwrap();
    store.sync(id).unwrap();
}

pub fn zero<S: LogStore>(store: &S, id: SegmentId, offset: u64, len: usize) {
    store.write_at(id, offset, &vec![0u8; len]).unwrap();
    store.sync(id).unwrap();
}

pub fn seed() -> u64 {
    let seed = match std::env::var("TEAMLOG_SEED") {
        Ok(s) => s.parse().expect("TEAMLOG_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("TEAMLOG_SEED={seed}");
    seed
}

pub fn expect_corrupt(
    result: Result<(impl Sized, Records), LogError>,
    segment: SegmentId,
    offset: u64,
) {
    match result {
        Err(LogError::Corrupt {
            segment: s,
            offset: o,
            path,
            reason,
        }) => {
            assert_eq!((s, o), (segment, offset), "wrong place; reason: {reason}");
            assert!(!path.is_empty());
        }
        Err(e) => panic!("expected Corrupt at {segment}:{offset}, got {e}"),
        Ok(_) => panic!("expected Corrupt at {segment}:{offset}, but the log opened"),
    }
}
