//! Conformance suite for the `KvEngine` trait, run against both `HeedEngine`
//! (in a temporary directory) and `MemEngine`.
//!
//! ```text
//!   test body<D: Disk> ──D::open()──▶ Arc<engine> ──get / range / write / metadata
//!   conformance!(heed, HeedDisk)   conformance!(mem, MemDisk)   (one mod each)
//! ```
//!
//! Each test is written once, generic over a [`Disk`]: something that opens
//! an engine over the same underlying data, which is how a test "restarts
//! the process", and that knows how to make a write find no room.

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use storage_server::engine::{EngineError, KvEngine, WriteBatch, FORMAT_METADATA};
use storage_server::heed_engine::HeedEngine;
use storage_server::mem_engine::MemEngine;

trait Disk {
    type E: KvEngine;
    fn new() -> Self;
    /// An engine over this disk's data, as a restarted process would open it
    /// (every earlier engine of this disk must be dropped first).
    fn open(&self) -> Arc<Self::E>;
    /// A batch `engine` has no room for.
    fn batch_without_room(&self, engine: &Self::E) -> WriteBatch;
    /// Makes room again after `batch_without_room`.
    fn make_room(&self, engine: &Self::E);
}

/// Small enough that the batch without room overflows it.
const HEED_MAP: usize = 4 << 20;

struct HeedDisk {
    dir: tempfile::TempDir,
}

impl Disk for HeedDisk {
    type E = HeedEngine;
    fn new() -> Self {
        HeedDisk {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn open(&self) -> Arc<HeedEngine> {
        Arc::new(HeedEngine::open(self.dir.path(), HEED_MAP).expect("open heed engine"))
    }
    fn batch_without_room(&self, _engine: &HeedEngine) -> WriteBatch {
        // More than the whole map: LMDB fails with MDB_MAP_FULL mid-batch.
        let mut batch = WriteBatch::new();
        for i in 0..8u8 {
            batch.set(Bytes::from(vec![b'x', i]), Bytes::from(vec![i; 1 << 20]));
        }
        batch
    }
    fn make_room(&self, _engine: &HeedEngine) {
        // The map is as full as before the batch: the next small one fits.
    }
}

struct MemDisk {
    engine: Arc<MemEngine>,
}

impl Disk for MemDisk {
    type E = MemEngine;
    fn new() -> Self {
        MemDisk {
            engine: Arc::new(MemEngine::new()),
        }
    }
    fn open(&self) -> Arc<MemEngine> {
        self.engine.clone()
    }
    fn batch_without_room(&self, engine: &MemEngine) -> WriteBatch {
        engine.set_full(true);
        let mut batch = WriteBatch::new();
        batch.set(Bytes::from(vec![b'x', 0]), b("never"));
        batch
    }
    fn make_room(&self, engine: &MemEngine) {
        engine.set_full(false);
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn keys(pairs: Vec<(Bytes, Bytes)>) -> Vec<Bytes> {
    pairs.into_iter().map(|(k, _)| k).collect()
}

fn set_all<E: KvEngine>(engine: &E, pairs: &[(&str, &str)]) {
    let mut batch = WriteBatch::new();
    for (k, v) in pairs {
        batch.set(b(k), b(v));
    }
    engine.write(batch).expect("write");
}

fn expect_poisoned<T: std::fmt::Debug>(result: Result<T, EngineError>) {
    match result {
        Err(EngineError::Poisoned { cause }) => assert!(!cause.is_empty()),
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

fn empty_engine_has_nothing<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    assert_eq!(engine.get(b"").unwrap(), None);
    assert_eq!(engine.get(b"k").unwrap(), None);
    assert!(engine.range(b"", b"\xff", 10, false).unwrap().is_empty());
    assert!(engine.range(b"", b"\xff", 10, true).unwrap().is_empty());
    assert_eq!(engine.metadata("durable_version").unwrap(), None);
}

fn get_and_range<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    set_all(
        &*engine,
        &[
            ("", "empty"),
            ("a", "1"),
            ("b", "2"),
            ("b\0", "3"),
            ("c", "4"),
            ("d", "5"),
        ],
    );
    assert_eq!(engine.get(b"").unwrap(), Some(b("empty")));
    assert_eq!(engine.get(b"b\0").unwrap(), Some(b("3")));
    assert_eq!(engine.get(b"bb").unwrap(), None);

    let all = engine.range(b"", b"\xff", 100, false).unwrap();
    assert_eq!(
        keys(all),
        vec![b(""), b("a"), b("b"), b("b\0"), b("c"), b("d")]
    );
    let pairs = engine.range(b"b", b"d", 100, false).unwrap();
    assert_eq!(
        pairs,
        vec![(b("b"), b("2")), (b("b\0"), b("3")), (b("c"), b("4"))]
    );
    assert_eq!(
        keys(engine.range(b"b", b"d", 100, true).unwrap()),
        vec![b("c"), b("b\0"), b("b")]
    );
    // Limits, in both directions.
    assert_eq!(
        keys(engine.range(b"", b"\xff", 2, false).unwrap()),
        vec![b(""), b("a")]
    );
    assert_eq!(
        keys(engine.range(b"", b"\xff", 2, true).unwrap()),
        vec![b("d"), b("c")]
    );
    assert_eq!(engine.range(b"", b"\xff", 6, false).unwrap().len(), 6);
    assert!(engine.range(b"", b"\xff", 0, false).unwrap().is_empty());
    // Bounds between keys; empty and inverted ranges.
    assert_eq!(
        keys(engine.range(b"a\0", b"b\0", 10, false).unwrap()),
        vec![b("b")]
    );
    assert!(engine.range(b"bb", b"c", 10, false).unwrap().is_empty());
    assert!(engine.range(b"b", b"b", 10, false).unwrap().is_empty());
    assert!(engine.range(b"c", b"a", 10, false).unwrap().is_empty());
    assert!(engine.range(b"c", b"a", 10, true).unwrap().is_empty());
}

fn batch_applies_in_order<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    set_all(
        &*engine,
        &[("a", "old"), ("b", "old"), ("c", "old"), ("d", "old")],
    );
    let mut batch = WriteBatch::new();
    batch
        .clear_range(b("a"), b("d"))
        .set(b("b"), b("after clear"))
        .set(b("d"), b("first"))
        .set(b("d"), b("second"))
        .set(b("e"), b("doomed"))
        .clear_range(b("e"), b("f"))
        .clear_range(b("z"), b("a"));
    engine.write(batch).unwrap();
    let pairs = engine.range(b"", b"\xff", 10, false).unwrap();
    assert_eq!(
        pairs,
        vec![(b("b"), b("after clear")), (b("d"), b("second"))]
    );
}

fn refused_batch_changes_nothing<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    let max = engine.max_key_len();
    let mut batch = WriteBatch::new();
    batch
        .set(b("fine"), b("v"))
        .set(Bytes::from(vec![b'k'; max + 1]), b("v"));
    match engine.write(batch) {
        Err(EngineError::KeyTooLarge { len, max: limit }) => {
            assert_eq!((len, limit), (max + 1, max));
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    let mut reserved = WriteBatch::new();
    reserved
        .set(b("fine"), b("v"))
        .set_metadata(FORMAT_METADATA, b("mine"));
    assert!(matches!(
        engine.write(reserved),
        Err(EngineError::InvalidBatch(_))
    ));
    assert_eq!(engine.get(b"fine").unwrap(), None);
    // Not poisoned: the longest allowed key works.
    let mut longest = WriteBatch::new();
    longest.set(Bytes::from(vec![b'k'; max]), b("v"));
    engine.write(longest).unwrap();
    assert_eq!(engine.get(&vec![b'k'; max]).unwrap(), Some(b("v")));
    // Bounds longer than any key are fine for reads and clears.
    let long_end = vec![b'k'; max + 10];
    assert_eq!(engine.range(b"k", &long_end, 10, false).unwrap().len(), 1);
    let mut clear = WriteBatch::new();
    clear.clear_range(b("k"), Bytes::from(long_end));
    engine.write(clear).unwrap();
    assert_eq!(engine.get(&vec![b'k'; max]).unwrap(), None);
}

fn metadata_is_separate_from_data<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    let mut batch = WriteBatch::new();
    batch
        .set(b("durable_version"), b("data"))
        .set_metadata("durable_version", b("7"))
        .set_metadata("team_set", b("1,2"));
    engine.write(batch).unwrap();
    assert_eq!(engine.metadata("durable_version").unwrap(), Some(b("7")));
    assert_eq!(engine.metadata("team_set").unwrap(), Some(b("1,2")));
    assert_eq!(engine.get(b"durable_version").unwrap(), Some(b("data")));
    assert_eq!(
        keys(engine.range(b"", b"\xff", 10, false).unwrap()),
        vec![b("durable_version")]
    );
    let mut overwrite = WriteBatch::new();
    overwrite.set_metadata("durable_version", b("8"));
    engine.write(overwrite).unwrap();
    assert_eq!(engine.metadata("durable_version").unwrap(), Some(b("8")));
    assert_eq!(engine.metadata("unknown").unwrap(), None);
}

fn reopen_keeps_data<D: Disk>() {
    let disk = D::new();
    {
        let engine = disk.open();
        let mut batch = WriteBatch::new();
        batch
            .set(b(""), b("empty key"))
            .set(b("big"), Bytes::from(vec![7u8; 100_000]))
            .set(b("gone"), b("x"))
            .set_metadata("durable_version", b("42"));
        engine.write(batch).unwrap();
        let mut clear = WriteBatch::new();
        clear.clear_range(b("gone"), b("gone\0"));
        engine.write(clear).unwrap();
    }
    let engine = disk.open();
    assert_eq!(engine.get(b"").unwrap(), Some(b("empty key")));
    assert_eq!(
        engine.get(b"big").unwrap(),
        Some(Bytes::from(vec![7u8; 100_000]))
    );
    assert_eq!(engine.get(b"gone").unwrap(), None);
    assert_eq!(engine.metadata("durable_version").unwrap(), Some(b("42")));
}

/// A write with no room changes nothing and does not poison: once there
/// is room the engine writes on, and a reopen finds both batches around it.
fn a_write_without_room_changes_nothing<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    set_all(&*engine, &[("kept", "v")]);
    let batch = disk.batch_without_room(&engine);
    let failure = engine.write(batch);
    assert!(
        failure.as_ref().is_err_and(EngineError::is_out_of_space),
        "{failure:?}"
    );
    assert_eq!(engine.get(b"kept").unwrap(), Some(b("v")));
    assert_eq!(engine.get(b"x\0").unwrap(), None);
    disk.make_room(&engine);
    set_all(&*engine, &[("after", "w")]);
    drop(engine);
    let engine = disk.open();
    assert_eq!(engine.get(b"kept").unwrap(), Some(b("v")));
    assert_eq!(engine.get(b"after").unwrap(), Some(b("w")));
    assert_eq!(engine.get(b"x\0").unwrap(), None);
}

/// Any other failed write poisons. LMDB cannot be made to fail a commit on
/// demand except by a full map, which does not poison, so only the memory
/// engine's injected fault shows it.
#[test]
fn failed_write_poisons() {
    let engine = MemEngine::new();
    set_all(&engine, &[("kept", "v")]);
    engine.fail_next_write();
    let mut batch = WriteBatch::new();
    batch.set(b("x"), b("never"));
    let failure = engine.write(batch);
    assert!(
        matches!(failure, Err(EngineError::InjectedFault(_))),
        "{failure:?}"
    );
    expect_poisoned(engine.get(b"kept"));
    expect_poisoned(engine.range(b"", b"\xff", 10, false));
    expect_poisoned(engine.metadata("durable_version"));
    let mut retry = WriteBatch::new();
    retry.set(b("k"), b("v"));
    expect_poisoned(engine.write(retry));
}

fn readers_see_whole_batches<D: Disk>() {
    let disk = D::new();
    let engine = disk.open();
    set_all(&*engine, &[("x", "0"), ("y", "0")]);
    let reader = {
        let engine = engine.clone();
        thread::spawn(move || {
            for _ in 0..2000 {
                let pairs = engine.range(b"x", b"z", 10, false).unwrap();
                assert_eq!(pairs.len(), 2);
                assert_eq!(pairs[0].1, pairs[1].1, "a reader saw half a batch");
            }
        })
    };
    for i in 1..=50 {
        let value = Bytes::from(i.to_string());
        let mut batch = WriteBatch::new();
        batch.set(b("x"), value.clone()).set(b("y"), value);
        engine.write(batch).unwrap();
    }
    reader.join().unwrap();
}

macro_rules! conformance {
    ($module:ident, $disk:ty) => {
        mod $module {
            use super::*;
            #[test]
            fn empty_engine_has_nothing() {
                super::empty_engine_has_nothing::<$disk>()
            }
            #[test]
            fn get_and_range() {
                super::get_and_range::<$disk>()
            }
            #[test]
            fn batch_applies_in_order() {
                super::batch_applies_in_order::<$disk>()
            }
            #[test]
            fn refused_batch_changes_nothing() {
                super::refused_batch_changes_nothing::<$disk>()
            }
            #[test]
            fn metadata_is_separate_from_data() {
                super::metadata_is_separate_from_data::<$disk>()
            }
            #[test]
            fn reopen_keeps_data() {
                super::reopen_keeps_data::<$disk>()
            }
            #[test]
            fn a_write_without_room_changes_nothing() {
                super::a_write_without_room_changes_nothing::<$disk>()
            }
            #[test]
            fn readers_see_whole_batches() {
                super::readers_see_whole_batches::<$disk>()
            }
        }
    };
}

conformance!(heed, HeedDisk);
conformance!(mem, MemDisk);
