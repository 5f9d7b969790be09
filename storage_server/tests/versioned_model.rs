//! Property test of `VersionedStore` against a model, over both engines.
//!
//! ```text
//!   random ops ──▶ VersionedStore<E>            (E = MemEngine | HeedEngine)
//!        └──────▶ model: one BTreeMap per applied version, built by applying
//!                 the same mutations in order
//!   every read (get / get_range with random limit and direction) at a
//!   random readable version must equal the model's state at that version
//! ```
//!
//! The key space is small (including the empty key and keys that differ
//! only by a trailing zero) so sets, appends and clear ranges collide
//! often (an append reads the newest value, in the window or the engine); the
//! window is tiny so `flush` triggers by versions and by bytes, and random
//! `flush_to` points leave partial windows. With heed, the store is reopened
//! at the end and must show the model's state at the durable version.
//! proptest prints the failing case and saves its seed under
//! `proptest-regressions/`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use proto::{Mutation, Version};
use storage_server::engine::KvEngine;
use storage_server::heed_engine::HeedEngine;
use storage_server::mem_engine::MemEngine;
use storage_server::versioned::{PreparedFlush, ReadError, VersionedStore, WindowConfig};

const KEYS: &[&[u8]] = &[b"", b"a", b"a\0", b"b", b"ba", b"c", b"d", b"e"];
/// Range bounds: the keys plus one past all of them.
const BOUNDS: &[&[u8]] = &[b"", b"a", b"a\0", b"b", b"ba", b"c", b"d", b"e", b"\xff"];

const CONFIG: WindowConfig = WindowConfig {
    max_versions: 6,
    max_bytes: 3000,
};

type State = BTreeMap<Bytes, Bytes>;

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: usize,
        value: u8,
    },
    Clear {
        begin: usize,
        end: usize,
    },
    Append {
        key: usize,
        suffix: u8,
    },
    /// Marks the current version applied and moves `gap` versions on.
    EndVersion {
        gap: u64,
    },
    /// `flush_to` a random version at or below the applied one.
    FlushTo {
        back: u64,
    },
    /// `flush` by the window's limits.
    Flush,
    /// A flush in three steps, with applies and reads between them: prepare
    /// (reads below its version stop), write to the engine, finish.
    PrepareFlush {
        back: u64,
    },
    WriteFlush,
    FinishFlush,
    Get {
        key: usize,
        back: u64,
    },
    Range {
        begin: usize,
        end: usize,
        limit: usize,
        reverse: bool,
        back: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS.len(), any::<u8>()).prop_map(|(key, value)| Op::Set { key, value }),
        2 => (0..BOUNDS.len(), 0..BOUNDS.len()).prop_map(|(begin, end)| Op::Clear { begin, end }),
        3 => (0..KEYS.len(), any::<u8>()).prop_map(|(key, suffix)| Op::Append { key, suffix }),
        4 => (1..4u64).prop_map(|gap| Op::EndVersion { gap }),
        1 => any::<u64>().prop_map(|back| Op::FlushTo { back }),
        1 => Just(Op::Flush),
        1 => any::<u64>().prop_map(|back| Op::PrepareFlush { back }),
        1 => Just(Op::WriteFlush),
        1 => Just(Op::FinishFlush),
        3 => (0..KEYS.len(), any::<u64>()).prop_map(|(key, back)| Op::Get { key, back }),
        3 => (0..BOUNDS.len(), 0..BOUNDS.len(), 0..6usize, any::<bool>(), any::<u64>())
            .prop_map(|(begin, end, limit, reverse, back)| Op::Range { begin, end, limit, reverse, back }),
    ]
}

/// The model: the state at each applied version plus the version in
/// progress.
struct Model {
    /// (version, state) for every applied version that changed or ended.
    applied: Vec<(Version, State)>,
    current: State,
    version: Version,
}

impl Model {
    fn new() -> Model {
        Model {
            applied: vec![(Version::ZERO, State::new())],
            current: State::new(),
            version: Version(1),
        }
    }

    fn at(&self, version: Version) -> &State {
        let at = self.applied.partition_point(|(v, _)| *v <= version);
        &self.applied[at - 1].1
    }
}

fn value(byte: u8) -> Bytes {
    Bytes::from(vec![byte; 1 + byte as usize % 40])
}

/// A readable version chosen by `back`.
fn readable<E: KvEngine>(store: &VersionedStore<E>, back: u64) -> Version {
    let (oldest, applied) = (store.oldest_readable().0, store.applied_version().0);
    Version(applied - back % (applied - oldest + 1))
}

fn check_bounds_errors<E: KvEngine>(store: &VersionedStore<E>) -> Result<(), TestCaseError> {
    let above = store.applied_version().next();
    let future = store.get(b"a", above);
    prop_assert!(
        matches!(future, Err(ReadError::FutureVersion { .. })),
        "{:?}",
        future
    );
    if store.oldest_readable() > Version::ZERO {
        let below = Version(store.oldest_readable().0 - 1);
        let old = store.get_range(b"", b"\xff", 10, false, below);
        prop_assert!(matches!(old, Err(ReadError::TooOld { .. })), "{:?}", old);
    }
    Ok(())
}

fn run<E: KvEngine>(store: &mut VersionedStore<E>, ops: &[Op]) -> Result<Model, TestCaseError> {
    let mut model = Model::new();
    let mut pending: Option<PreparedFlush> = None;
    for op in ops {
        // Whole flushes wait for a split one to finish, as the server's do.
        if matches!(op, Op::FlushTo { .. } | Op::Flush) {
            finish(store, &mut pending)?;
        }
        match *op {
            Op::Set { key, value: v } => {
                let mutation = Mutation::SetValue {
                    key: Bytes::from_static(KEYS[key]),
                    value: value(v),
                };
                store.apply(model.version, &mutation).unwrap();
                model
                    .current
                    .insert(Bytes::from_static(KEYS[key]), value(v));
            }
            Op::Clear { begin, end } => {
                let (begin, end) = (BOUNDS[begin], BOUNDS[end]);
                let mutation = Mutation::ClearRange {
                    begin: Bytes::from_static(begin),
                    end: Bytes::from_static(end),
                };
                store.apply(model.version, &mutation).unwrap();
                model
                    .current
                    .retain(|k, _| !(begin <= &k[..] && &k[..] < end));
            }
            Op::Append { key, suffix } => {
                let key = Bytes::from_static(KEYS[key]);
                let mutation = Mutation::AppendIfFits {
                    key: key.clone(),
                    suffix: value(suffix),
                };
                store.apply(model.version, &mutation).unwrap();
                let mut appended = model
                    .current
                    .get(&key)
                    .cloned()
                    .unwrap_or_default()
                    .to_vec();
                appended.extend_from_slice(&value(suffix));
                model.current.insert(key, Bytes::from(appended));
            }
            Op::EndVersion { gap } => {
                store.set_applied(model.version);
                model.applied.push((model.version, model.current.clone()));
                model.version = Version(model.version.0 + gap);
            }
            Op::FlushTo { back } => {
                let before = store.durable_version();
                let target = readable(store, back);
                let durable = store.flush_to(target, &[]).unwrap();
                prop_assert_eq!(durable, target.max(before));
            }
            Op::Flush => {
                store.flush(&[]).unwrap();
                let span = store.applied_version().0 - store.durable_version().0;
                prop_assert!(span <= CONFIG.max_versions);
            }
            Op::PrepareFlush { back } => {
                if pending.is_none() {
                    let target = readable(store, back);
                    pending = store.prepare_flush(target, &[]).unwrap();
                    if let Some(flush) = &pending {
                        prop_assert_eq!(store.oldest_readable(), flush.through());
                    }
                }
            }
            Op::WriteFlush => {
                if let Some(flush) = &mut pending {
                    flush.write(store.engine().as_ref()).unwrap();
                }
            }
            Op::FinishFlush => finish(store, &mut pending)?,
            Op::Get { key, back } => {
                let at = readable(store, back);
                let got = store.get(KEYS[key], at).unwrap();
                prop_assert_eq!(got.as_ref(), model.at(at).get(KEYS[key]), "get at {}", at);
            }
            Op::Range {
                begin,
                end,
                limit,
                reverse,
                back,
            } => {
                let at = readable(store, back);
                let (begin, end) = (BOUNDS[begin], BOUNDS[end]);
                let got = store.get_range(begin, end, limit, reverse, at).unwrap();
                let state = model.at(at);
                let expected: Vec<(Bytes, Bytes)> = if begin >= end {
                    Vec::new()
                } else {
                    let range =
                        state.range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
                    let pairs: Vec<_> = if reverse {
                        range.rev().take(limit).collect()
                    } else {
                        range.take(limit).collect()
                    };
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                prop_assert_eq!(got, expected, "range at {}", at);
            }
        }
        check_bounds_errors(store)?;
    }
    finish(store, &mut pending)?;
    // Everything applied flushed leaves an empty window.
    store.set_applied(model.version);
    model.applied.push((model.version, model.current.clone()));
    store.flush_to(model.version, &[]).unwrap();
    prop_assert_eq!(store.window_bytes(), 0);
    Ok(model)
}

/// Writes (if not yet) and finishes a pending split flush.
fn finish<E: KvEngine>(
    store: &mut VersionedStore<E>,
    pending: &mut Option<PreparedFlush>,
) -> Result<(), TestCaseError> {
    if let Some(mut flush) = pending.take() {
        flush.write(store.engine().as_ref()).unwrap();
        let through = flush.through();
        prop_assert_eq!(store.finish_flush(flush), through);
        prop_assert_eq!(store.durable_version(), through);
    }
    Ok(())
}

fn full_state<E: KvEngine>(store: &VersionedStore<E>, at: Version) -> State {
    store
        .get_range(b"", b"\xff", usize::MAX, false, at)
        .unwrap()
        .into_iter()
        .collect()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn mem_store_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut store = VersionedStore::open(Arc::new(MemEngine::new()), CONFIG).unwrap();
        let model = run(&mut store, &ops)?;
        prop_assert_eq!(&full_state(&store, store.durable_version()), model.at(store.durable_version()));
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn heed_store_matches_the_model_and_survives_reopen(
        ops in prop::collection::vec(op(), 1..120),
        partial in prop::collection::vec(op(), 0..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let open = || Arc::new(HeedEngine::open(dir.path(), 64 << 20).unwrap());
        let mut store = VersionedStore::open(open(), CONFIG).unwrap();
        let model = run(&mut store, &ops)?;
        // Mutations applied but not flushed are lost on reopen; the engine
        // holds exactly the durable version.
        let mut version = model.version.next();
        for op in &partial {
            if let Op::Set { key, value: v } = *op {
                let mutation = Mutation::SetValue { key: Bytes::from_static(KEYS[key]), value: value(v) };
                store.apply(version, &mutation).unwrap();
                version = version.next();
            }
        }
        let durable = store.durable_version();
        drop(store);
        let store = VersionedStore::open(open(), CONFIG).unwrap();
        prop_assert_eq!(store.durable_version(), durable);
        prop_assert_eq!(store.applied_version(), durable);
        prop_assert_eq!(&full_state(&store, durable), model.at(durable));
    }
}
