//! The versioned store's rules: reads at every version, flushes by versions,
//! bytes and limits, and what a failed flush leaves.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use super::*;
use crate::mem_engine::MemEngine;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(key: &str, value: &str) -> Mutation {
    Mutation::SetValue {
        key: b(key),
        value: b(value),
    }
}

fn clear(begin: &str, end: &str) -> Mutation {
    Mutation::ClearRange {
        begin: b(begin),
        end: b(end),
    }
}

fn keys(pairs: Vec<(Bytes, Bytes)>) -> Vec<Bytes> {
    pairs.into_iter().map(|(k, _)| k).collect()
}

fn store(config: WindowConfig) -> VersionedStore<MemEngine> {
    VersionedStore::open(Arc::new(MemEngine::new()), config).unwrap()
}

/// A `MemEngine` that counts the pairs its range reads return.
#[derive(Default)]
struct CountingEngine {
    inner: MemEngine,
    pairs_read: AtomicUsize,
}

impl KvEngine for CountingEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.inner.get(key)
    }
    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        let pairs = self.inner.range(begin, end, limit, reverse)?;
        self.pairs_read
            .fetch_add(pairs.len(), AtomicOrdering::Relaxed);
        Ok(pairs)
    }
    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.inner.write(batch)
    }
    fn metadata(&self, name: &str) -> Result<Option<Bytes>, EngineError> {
        self.inner.metadata(name)
    }
    fn max_key_len(&self) -> usize {
        self.inner.max_key_len()
    }
}

#[test]
fn open_reads_the_durable_version() {
    let engine = Arc::new(MemEngine::new());
    let mut first = VersionedStore::open(engine.clone(), WindowConfig::default()).unwrap();
    first.apply(Version(7), &set("k", "v")).unwrap();
    first.set_applied(Version(9));
    assert_eq!(first.flush_to(Version::MAX, &[]).unwrap(), Version(9));
    let second = VersionedStore::open(engine, WindowConfig::default()).unwrap();
    assert_eq!(second.durable_version(), Version(9));
    assert_eq!(second.applied_version(), Version(9));
    assert_eq!(second.get(b"k", Version(9)).unwrap(), Some(b("v")));
}

#[test]
fn a_copy_newer_than_the_durable_version_is_readable_only_from_its_end() {
    let engine = Arc::new(MemEngine::new());
    let mut batch = WriteBatch::new();
    batch
        .set(b("k"), b("copied"))
        .set_metadata(DURABLE_VERSION_METADATA, b("\x05\0\0\0\0\0\0\0"))
        .set_metadata(READABLE_FROM_METADATA, b("\x08\0\0\0\0\0\0\0"));
    engine.write(batch).unwrap();
    let mut store = VersionedStore::open(engine, WindowConfig::default()).unwrap();
    assert_eq!(store.durable_version(), Version(5));
    assert_eq!(store.oldest_readable(), Version(8));
    store.apply(Version(6), &set("k", "copied")).unwrap();
    store.set_applied(Version(9));
    assert!(matches!(
        store.get(b"k", Version(7)),
        Err(ReadError::TooOld {
            oldest: Version(8),
            ..
        })
    ));
    assert_eq!(store.get(b"k", Version(8)).unwrap(), Some(b("copied")));
    // Its own metadata is the store's to write, never a flush caller's.
    assert!(matches!(
        store.flush_to(Version::MAX, &[(READABLE_FROM_METADATA, b("x"))]),
        Err(StoreError::ReservedMetadata(_))
    ));
}

fn append(key: &str, suffix: &str) -> Mutation {
    Mutation::AppendIfFits {
        key: b(key),
        suffix: b(suffix),
    }
}

/// A rebuild's copy: "a".."m" read at 10 ("a" = "x1;x2;", "b" = "y"),
/// "m".."z" read at 20 ("n" = "z1;z2;z3;"), durable from 5.
fn copied_store() -> VersionedStore<MemEngine> {
    let engine = Arc::new(MemEngine::new());
    let mut copied = CopiedRanges::default();
    copied.record(b("a"), b("m"), Version(10));
    copied.record(b("m"), b("z"), Version(20));
    let mut batch = WriteBatch::new();
    batch
        .set(b("a"), b("x1;x2;"))
        .set(b("b"), b("y"))
        .set(b("n"), b("z1;z2;z3;"))
        .set_metadata(DURABLE_VERSION_METADATA, b("\x05\0\0\0\0\0\0\0"))
        .set_metadata(READABLE_FROM_METADATA, b("\x14\0\0\0\0\0\0\0"))
        .set_metadata(COPIED_RANGES_METADATA, copied.encode());
    engine.write(batch).unwrap();
    VersionedStore::open(engine, WindowConfig::default()).unwrap()
}

#[test]
fn the_redo_after_a_copy_skips_what_each_page_holds() {
    let mut store = copied_store();
    // The log from the durable version on: what each page already holds
    // comes again and is skipped; what is newer than its page applies.
    store.apply(Version(8), &append("a", "x2;")).unwrap();
    store.apply(Version(9), &clear("a", "c")).unwrap();
    store.apply(Version(9), &set("b", "y")).unwrap();
    store.apply(Version(12), &append("a", "x3;")).unwrap();
    store.apply(Version(15), &append("n", "z3;")).unwrap();
    // A clear at 16 across both pages: the first page is older, so it
    // applies there; the second holds it.
    store.apply(Version(16), &clear("b", "o")).unwrap();
    store.apply(Version(21), &append("n", "z4;")).unwrap();
    store.set_applied(Version(21));
    assert_eq!(store.get(b"a", Version(20)).unwrap(), Some(b("x1;x2;x3;")));
    assert_eq!(store.get(b"b", Version(20)).unwrap(), None);
    assert_eq!(store.get(b"n", Version(20)).unwrap(), Some(b("z1;z2;z3;")));
    assert_eq!(
        store.get(b"n", Version(21)).unwrap(),
        Some(b("z1;z2;z3;z4;"))
    );
    assert!(matches!(
        store.flush_to(Version::MAX, &[(COPIED_RANGES_METADATA, b("x"))]),
        Err(StoreError::ReservedMetadata(_))
    ));
}

#[test]
fn a_malformed_durable_version_is_corrupt() {
    let engine = Arc::new(MemEngine::new());
    let mut batch = WriteBatch::new();
    batch.set_metadata(DURABLE_VERSION_METADATA, b("short"));
    engine.write(batch).unwrap();
    assert!(matches!(
        VersionedStore::open(engine, WindowConfig::default()),
        Err(StoreError::Engine(EngineError::Corrupt { .. }))
    ));
}

#[test]
fn mutations_must_come_in_version_order() {
    let mut store = store(WindowConfig::default());
    store.apply(Version(5), &set("a", "1")).unwrap();
    store.apply(Version(5), &set("b", "1")).unwrap();
    assert!(matches!(
        store.apply(Version(4), &set("a", "2")),
        Err(StoreError::VersionOrder { .. })
    ));
    store.set_applied(Version(5));
    assert!(matches!(
        store.apply(Version(5), &set("a", "2")),
        Err(StoreError::VersionOrder { .. })
    ));
    let long = "k".repeat(store.engine().max_key_len() + 1);
    assert!(matches!(
        store.apply(Version(6), &set(&long, "v")),
        Err(StoreError::KeyTooLarge { .. })
    ));
}

#[test]
fn reads_are_limited_to_the_window() {
    let mut store = store(WindowConfig::default());
    store.apply(Version(3), &set("k", "v")).unwrap();
    assert!(matches!(
        store.get(b"k", Version(3)),
        Err(ReadError::FutureVersion { .. })
    ));
    store.set_applied(Version(3));
    assert_eq!(store.get(b"k", Version(3)).unwrap(), Some(b("v")));
    assert_eq!(store.get(b"k", Version(2)).unwrap(), None);
    store.flush_to(Version(3), &[]).unwrap();
    assert!(matches!(
        store.get(b"k", Version(2)),
        Err(ReadError::TooOld {
            version: Version(2),
            oldest: Version(3)
        })
    ));
}

#[test]
fn window_clears_hide_engine_keys_without_reading_through_them() {
    let engine = Arc::new(CountingEngine::default());
    let mut store = VersionedStore::open(engine.clone(), WindowConfig::default()).unwrap();
    for i in 0..100 {
        store
            .apply(Version(1), &set(&format!("k{i:02}"), "e"))
            .unwrap();
    }
    store.set_applied(Version(1));
    store.flush_to(Version(1), &[]).unwrap();
    store.apply(Version(2), &clear("k10", "k90")).unwrap();
    store.apply(Version(2), &set("k50", "w")).unwrap();
    store.set_applied(Version(2));

    let forward = store.get_range(b"k05", b"z", 7, false, Version(2)).unwrap();
    let expected = ["k05", "k06", "k07", "k08", "k09", "k50", "k90"].map(b);
    assert_eq!(keys(forward), expected);
    let backward = store.get_range(b"k", b"k91", 4, true, Version(2)).unwrap();
    assert_eq!(keys(backward), ["k90", "k50", "k09", "k08"].map(b));
    // At version 1 the clear is invisible.
    let before = store
        .get_range(b"k10", b"k90", 1000, false, Version(1))
        .unwrap();
    assert_eq!(before.len(), 80);
    assert_eq!(store.get(b"k20", Version(2)).unwrap(), None);
    assert_eq!(store.get(b"k20", Version(1)).unwrap(), Some(b("e")));

    // The first chunk is as big as the limit; after the span is met the
    // scan resumes at its end instead of reading the 80 cleared keys.
    engine.pairs_read.store(0, AtomicOrdering::Relaxed);
    let all = store.get_range(b"", b"z", 21, false, Version(2)).unwrap();
    assert_eq!(all.len(), 21);
    let read = engine.pairs_read.load(AtomicOrdering::Relaxed);
    assert!(read < 40, "read {read} engine pairs for 21 results");

    // A byte limit stops the scan once the pairs reach it, window and
    // engine pairs alike (each here is 4 bytes: "kNN" and one byte).
    let within = store
        .get_range_within(b"k05", b"z", 100, 10, false, Version(2))
        .unwrap();
    assert_eq!(keys(within), ["k05", "k06", "k07"].map(b));
    let one = store
        .get_range_within(b"k50", b"z", 100, 1, false, Version(2))
        .unwrap();
    assert_eq!(keys(one), [b("k50")], "at least one pair");
}

/// A store of `max_versions` with keys `k01` to `k30` set at versions 1 to
/// 30, all applied.
fn thirty_versions(max_versions: u64) -> VersionedStore<MemEngine> {
    let mut store = store(WindowConfig {
        max_versions,
        max_bytes: u64::MAX,
    });
    for v in 1..=30 {
        store
            .apply(Version(v), &set(&format!("k{v:02}"), "v"))
            .unwrap();
        store.set_applied(Version(v));
    }
    store
}

#[test]
fn versions_above_the_flush_limit_stay_in_the_window() {
    let mut store = thirty_versions(1);
    store.limit_flushes_to(Version(12));
    assert_eq!(store.flush_target(), Version(12));
    assert_eq!(store.flush(&[]).unwrap(), Version(12));
    assert_eq!(store.get(b"k20", Version(20)).unwrap(), Some(b("v")));
    store.limit_flushes_to(Version(25));
    assert_eq!(store.flush(&[]).unwrap(), Version(25));
}

#[test]
fn flush_by_versions_keeps_the_newest_span() {
    let mut store = thirty_versions(10);
    store.apply(Version(31), &set("in progress", "v")).unwrap();
    assert!(store.should_flush());
    assert_eq!(store.flush(&[]).unwrap(), Version(20));
    assert!(!store.should_flush());
    assert_eq!(store.get(b"k20", Version(20)).unwrap(), Some(b("v")));
    assert_eq!(store.get(b"k21", Version(20)).unwrap(), None);
    assert_eq!(store.get(b"k21", Version(21)).unwrap(), Some(b("v")));
    assert_eq!(store.engine().get(b"k21").unwrap(), None);
    assert_eq!(store.engine().get(b"k20").unwrap(), Some(b("v")));
}

#[test]
fn a_full_window_flushes_in_chunks_not_slivers() {
    let config = WindowConfig {
        max_versions: 100,
        max_bytes: u64::MAX,
    };
    let mut store = store(config);
    let mut flushes = Vec::new();
    for v in 1..=400 {
        store.apply(Version(v), &set("k", "v")).unwrap();
        store.set_applied(Version(v));
        if store.should_flush() {
            flushes.push(store.flush(&[]).unwrap());
        }
    }
    // A tenth of the window (10 versions) at a time, each leaving the
    // newest 100 versions in memory.
    assert_eq!(flushes.first(), Some(&Version(10)));
    assert!(
        flushes.windows(2).all(|w| w[1].0 - w[0].0 == 10),
        "{flushes:?}"
    );
    assert_eq!(flushes.last(), Some(&Version(300)));
}

#[test]
fn flush_by_bytes_stays_within_the_budget() {
    let config = WindowConfig {
        max_versions: u64::MAX,
        max_bytes: 10_000,
    };
    let mut store = store(config);
    let value = "x".repeat(1000);
    for v in 1..=20 {
        store
            .apply(Version(v), &set(&format!("k{v:02}"), &value))
            .unwrap();
        store.set_applied(Version(v));
    }
    assert!(store.window_bytes() > 10_000);
    assert!(store.should_flush());
    let durable = store.flush(&[]).unwrap();
    assert!(durable < Version(20));
    assert!(store.window_bytes() <= 10_000);
    assert!(!store.should_flush());
}

#[test]
fn bytes_of_a_version_in_progress_are_not_flushable() {
    let config = WindowConfig {
        max_versions: u64::MAX,
        max_bytes: 100,
    };
    let mut store = store(config);
    store
        .apply(Version(1), &set("k", &"x".repeat(1000)))
        .unwrap();
    assert!(!store.should_flush());
    assert_eq!(store.flush(&[]).unwrap(), Version::ZERO);
}

#[test]
fn flush_records_metadata_and_refuses_reserved_names() {
    let mut store = store(WindowConfig::default());
    store.set_applied(Version(4));
    let extra = [("team_set", b("1,2"))];
    assert_eq!(store.flush_to(Version(4), &extra).unwrap(), Version(4));
    let engine = store.engine();
    assert_eq!(engine.metadata("team_set").unwrap(), Some(b("1,2")));
    assert_eq!(
        engine.metadata(DURABLE_VERSION_METADATA).unwrap(),
        Some(Bytes::copy_from_slice(&4u64.to_le_bytes()))
    );
    for name in [DURABLE_VERSION_METADATA, FORMAT_METADATA] {
        assert!(matches!(
            store.flush_to(Version(4), &[(name, b("x"))]),
            Err(StoreError::ReservedMetadata(_))
        ));
    }
}

#[test]
fn a_failed_flush_keeps_the_window() {
    let mut store = store(WindowConfig::default());
    store.apply(Version(1), &set("k", "v")).unwrap();
    store.set_applied(Version(1));
    store.engine().fail_next_write();
    assert!(matches!(
        store.flush_to(Version(1), &[]),
        Err(StoreError::Engine(EngineError::InjectedFault(_)))
    ));
    assert_eq!(store.durable_version(), Version::ZERO);
    assert_eq!(store.get(b"k", Version(1)).unwrap(), Some(b("v")));
    assert!(matches!(
        store.get(b"other", Version(1)),
        Err(ReadError::Engine(EngineError::Poisoned { .. }))
    ));
}

#[test]
fn a_rollback_forgets_versions_above_the_recovery_version_and_new_ones_apply() {
    let mut store = thirty_versions(1);
    store.limit_flushes_to(Version(12));
    assert_eq!(store.flush(&[]).unwrap(), Version(12));
    assert!(matches!(
        store.rollback_to(Version(11)),
        Err(StoreError::RollbackBelowDurable { .. })
    ));
    store.rollback_to(Version(20)).unwrap();
    assert_eq!(store.applied_version(), Version(20));
    assert_eq!(store.get(b"k20", Version(20)).unwrap(), Some(b("v")));
    assert!(matches!(
        store.get(b"k21", Version(21)),
        Err(ReadError::FutureVersion { .. })
    ));
    // The next generation reuses the version numbers with other writes.
    store.apply(Version(21), &set("k21", "again")).unwrap();
    store.set_applied(Version(25));
    assert_eq!(store.get(b"k21", Version(25)).unwrap(), Some(b("again")));
    assert_eq!(store.get(b"k22", Version(25)).unwrap(), None);
    store.limit_flushes_to(Version(25));
    store.flush_to(Version(25), &[]).unwrap();
    assert_eq!(store.get(b"k21", Version(25)).unwrap(), Some(b("again")));
    assert_eq!(store.get(b"k22", Version(25)).unwrap(), None);
}

/// A step of [`applies_during_a_flush_read_as_if_it_had_finished_first`]:
/// set key `.0` to `.1`, or clear keys `[.0, .1)`.
#[derive(Clone, Debug)]
enum Step {
    Set(u8, u8),
    Clear(u8, u8),
}

fn step_key(k: u8) -> String {
    format!("k{}", k % 8)
}

fn apply_step(store: &mut VersionedStore<MemEngine>, version: Version, step: &Step) {
    let mutation = match step {
        Step::Set(k, v) => set(&step_key(*k), &v.to_string()),
        Step::Clear(a, b) => clear(&step_key(*a), &step_key(*b)),
    };
    store.apply(version, &mutation).unwrap();
    store.set_applied(version);
}

fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    let step = prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Step::Set(k, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Clear(a, b)),
    ];
    proptest::collection::vec(step, 1..40)
}

proptest::proptest! {
    /// The apply loop goes on while a flush is written: versions applied
    /// between a flush's prepare and its finish read, at every version
    /// still readable and after a later flush, exactly as if the flush had
    /// finished before they came.
    #[test]
    fn applies_during_a_flush_read_as_if_it_had_finished_first(
        steps in steps(),
        prepared_after in 0usize..40,
        flushed_through in 0u64..40,
    ) {
        let prepared_after = prepared_after.min(steps.len());
        let through = Version(flushed_through.min(prepared_after as u64));
        let mut during = store(WindowConfig::default());
        let mut before = store(WindowConfig::default());
        for (i, step) in steps[..prepared_after].iter().enumerate() {
            let version = Version(i as u64 + 1);
            apply_step(&mut during, version, step);
            apply_step(&mut before, version, step);
        }
        let mut flushing = during.prepare_flush(through, &[]).unwrap();
        if let Some(mut flush) = before.prepare_flush(through, &[]).unwrap() {
            flush.write(before.engine().as_ref()).unwrap();
            before.finish_flush(flush);
        }
        for (i, step) in steps.iter().enumerate().skip(prepared_after) {
            let version = Version(i as u64 + 1);
            apply_step(&mut during, version, step);
            apply_step(&mut before, version, step);
        }
        if let Some(mut flush) = flushing.take() {
            flush.write(during.engine().as_ref()).unwrap();
            during.finish_flush(flush);
        }
        let last = Version(steps.len() as u64);
        let compare = |during: &VersionedStore<MemEngine>, before: &VersionedStore<MemEngine>| {
            for version in during.oldest_readable().0..=last.0 {
                for k in 0..8u8 {
                    let key = step_key(k);
                    let version = Version(version);
                    proptest::prop_assert_eq!(
                        during.get(key.as_bytes(), version).unwrap(),
                        before.get(key.as_bytes(), version).unwrap(),
                        "{} at {}", key, version
                    );
                }
                proptest::prop_assert_eq!(
                    during.get_range(b"k", b"l", usize::MAX, false, Version(version)).unwrap(),
                    before.get_range(b"k", b"l", usize::MAX, false, Version(version)).unwrap()
                );
            }
            Ok(())
        };
        proptest::prop_assert_eq!(during.durable_version(), before.durable_version());
        compare(&during, &before)?;
        during.flush_to(last, &[]).unwrap();
        before.flush_to(last, &[]).unwrap();
        compare(&during, &before)?;
        proptest::prop_assert_eq!(during.window_bytes(), before.window_bytes());
    }
}
