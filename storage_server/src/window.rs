//! The MVCC window: every mutation of the versions not yet flushed, indexed
//! so that a read at any of those versions costs a few tree lookups.
//!
//! ```text
//!   chains   BTreeMap<key, [(version, Some(value) | None=cleared)]>   per-key history
//!   cleared  BTreeMap<begin, (end, version)>   disjoint spans: where a clear in the
//!                                             window first covered the key space
//!   chain_log   [(version, key)]   \  in apply order: which keys and spans a flush
//!   cleared_log [(version, begin)] /  through version D must move (no full scan)
//!   charges     [(version, bytes)]    estimated heap bytes, by the version that owns them
//!
//!   read(key, v): chains[key] latest entry <= v ──▶ Set(value) | Cleared
//!                 else span covering key with version <= v ──▶ Cleared
//!                 else Unchanged (the engine's value stands)
//! ```
//!
//! Why this shape:
//! - A point read is one `BTreeMap` lookup plus a short scan of one key's
//!   chain (one entry per version that touched the key; later mutations of
//!   the same key in the same version replace the entry). A range read walks
//!   the chains of the range and merges them with the engine, asking the
//!   spans only about engine keys; nothing is copied.
//! - A clear range costs one tombstone per window key it covers plus a span
//!   for the parts of the range no earlier window clear covered. Clears only
//!   arrive in version order, so the first clear to cover a point is the one
//!   a read needs ("cleared at or before v" = "first cleared at or before
//!   v"): the spans never need splitting or relabelling, and they stay
//!   disjoint, so a lookup is one `range(..=key).next_back()`. Keys the
//!   window set after that clear have chains, which take precedence.
//! - Flushing through D must produce the engine state at D: the spans
//!   labelled <= D become clear ranges, then every key with an entry <= D
//!   gets its state at D (a set, or a point clear if no such span covers
//!   it). The logs list those keys and spans without scanning the window,
//!   and the ops come out in key order, which is LMDB's fast path.
//! - Bytes are charged to the version that created them, so the bytes a
//!   flush through D frees are known before flushing (for the byte budget).
//!
//! Keys and values are copied in: a mutation's `Bytes` usually point into a
//! whole peek reply, which would stay pinned (and uncounted) until flushed.

use std::collections::btree_map::{self, Entry};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use proto::Version;

use crate::engine::WriteBatch;

/// Estimated heap bytes of a chain besides its key: the map node's share,
/// the entries vector, the key handle.
const CHAIN_OVERHEAD: u64 = 96;
/// Estimated heap bytes of a chain entry besides its value: the entry and
/// its `chain_log` record.
const ENTRY_OVERHEAD: u64 = 80;
/// Estimated heap bytes of a span besides its bounds: the map node's share
/// and its `cleared_log` record.
const SPAN_OVERHEAD: u64 = 128;

/// What the window says about one key at one version.
#[derive(Debug, PartialEq, Eq)]
pub enum WindowValue<'a> {
    Set(&'a Bytes),
    Cleared,
    /// No window mutation at or before the version: the engine's value stands.
    Unchanged,
}

/// One key's history in the window, ascending by version, one entry per
/// version; `None` means cleared.
#[derive(Debug, Default)]
pub struct Chain {
    entries: Vec<(Version, Option<Bytes>)>,
}

impl Chain {
    /// The key's state at `version` as far as the window knows.
    pub fn at(&self, version: Version) -> WindowValue<'_> {
        // Reads are mostly at recent versions: search from the newest.
        match self.entries.iter().rev().find(|(v, _)| *v <= version) {
            Some((_, Some(value))) => WindowValue::Set(value),
            Some((_, None)) => WindowValue::Cleared,
            None => WindowValue::Unchanged,
        }
    }
}

#[derive(Debug)]
struct ClearedSpan {
    end: Bytes,
    /// The version of the first window clear that covered the span.
    version: Version,
}

/// Estimated bytes per version, ascending by version.
#[derive(Debug, Default)]
struct Charges {
    by_version: VecDeque<(Version, u64)>,
    total: u64,
}

impl Charges {
    fn add(&mut self, version: Version, bytes: u64) {
        self.total += bytes;
        match self.by_version.back_mut() {
            Some((v, charged)) if *v == version => *charged += bytes,
            Some((v, _)) if *v > version => {
                match self.by_version.binary_search_by_key(&version, |(v, _)| *v) {
                    Ok(at) => self.by_version[at].1 += bytes,
                    Err(at) => self.by_version.insert(at, (version, bytes)),
                }
            }
            _ => self.by_version.push_back((version, bytes)),
        }
    }

    /// Takes back part of the charge of the newest version (an entry of it
    /// was replaced).
    fn refund_newest(&mut self, bytes: u64) {
        if let Some((_, charged)) = self.by_version.back_mut() {
            let refund = bytes.min(*charged);
            *charged -= refund;
            self.total -= refund;
        }
    }

    /// Forgets the charges of versions above `version`.
    fn forget_after(&mut self, version: Version) {
        while let Some(&(v, charged)) = self.by_version.back() {
            if v <= version {
                break;
            }
            self.total -= charged;
            self.by_version.pop_back();
        }
    }

    fn release_through(&mut self, through: Version) {
        while let Some(&(v, charged)) = self.by_version.front() {
            if v > through {
                break;
            }
            self.total -= charged;
            self.by_version.pop_front();
        }
    }

    /// The oldest version through which a flush leaves at most `budget`
    /// bytes, if the total is over it.
    fn release_point(&self, budget: u64) -> Option<Version> {
        if self.total <= budget {
            return None;
        }
        let mut left = self.total;
        for &(version, charged) in &self.by_version {
            left = left.saturating_sub(charged);
            if left <= budget {
                return Some(version);
            }
        }
        self.by_version.back().map(|&(version, _)| version)
    }
}

/// What a flush through one version moves: built by [`Window::plan_flush`]
/// without changing the window, applied by [`Window::discard`] once the
/// engine has the data.
#[derive(Debug)]
pub struct FlushPlan {
    through: Version,
    /// Keys with an entry at or before `through`, ascending.
    keys: Vec<Bytes>,
    /// Begins of the spans labelled at or before `through`, ascending.
    span_begins: Vec<Bytes>,
    chain_log_len: usize,
    cleared_log_len: usize,
}

/// The mutations of the versions above the durable version.
#[derive(Debug, Default)]
pub struct Window {
    chains: BTreeMap<Bytes, Chain>,
    cleared: BTreeMap<Bytes, ClearedSpan>,
    chain_log: VecDeque<(Version, Bytes)>,
    cleared_log: VecDeque<(Version, Bytes)>,
    charges: Charges,
}

fn entry_cost(value: &Option<Bytes>) -> u64 {
    ENTRY_OVERHEAD + value.as_ref().map_or(0, |v| v.len() as u64)
}

fn chain_cost(key: &[u8]) -> u64 {
    CHAIN_OVERHEAD + key.len() as u64
}

/// Records `value` as `key`'s state at `version`, the newest version so far.
fn push_entry(
    chain: &mut Chain,
    key: &Bytes,
    version: Version,
    value: Option<Bytes>,
    chain_log: &mut VecDeque<(Version, Bytes)>,
    charges: &mut Charges,
) {
    let cost = entry_cost(&value);
    match chain.entries.last_mut() {
        Some((v, slot)) if *v == version => {
            charges.refund_newest(entry_cost(slot));
            *slot = value;
        }
        _ => {
            chain.entries.push((version, value));
            chain_log.push_back((version, key.clone()));
        }
    }
    charges.add(version, cost);
}

impl Window {
    pub fn new() -> Window {
        Window::default()
    }

    /// Estimated heap bytes held.
    pub fn bytes(&self) -> u64 {
        self.charges.total
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.cleared.is_empty()
    }

    /// Sets `key` at `version`, which must be at least every version given
    /// before.
    pub fn set(&mut self, version: Version, key: &[u8], value: &[u8]) {
        let value = Some(Bytes::copy_from_slice(value));
        let exact = (Bound::Included(key), Bound::Included(key));
        if let Some((key, chain)) = self.chains.range_mut::<[u8], _>(exact).next() {
            push_entry(
                chain,
                key,
                version,
                value,
                &mut self.chain_log,
                &mut self.charges,
            );
            return;
        }
        let key = Bytes::copy_from_slice(key);
        self.charges.add(version, chain_cost(&key));
        let chain = self.chains.entry(key.clone()).or_default();
        push_entry(
            chain,
            &key,
            version,
            value,
            &mut self.chain_log,
            &mut self.charges,
        );
    }

    /// Clears `[begin, end)` at `version`, which must be at least every
    /// version given before. Nothing when `begin >= end`.
    pub fn clear(&mut self, version: Version, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let range = (Bound::Included(begin), Bound::Excluded(end));
        for (key, chain) in self.chains.range_mut::<[u8], _>(range) {
            // A key already cleared stays cleared: a second tombstone would
            // change no read.
            if matches!(chain.entries.last(), Some((_, None))) {
                continue;
            }
            push_entry(
                chain,
                key,
                version,
                None,
                &mut self.chain_log,
                &mut self.charges,
            );
        }
        for (gap_begin, gap_end) in self.uncovered(begin, end) {
            self.charges.add(
                version,
                SPAN_OVERHEAD + (gap_begin.len() + gap_end.len()) as u64,
            );
            self.cleared_log.push_back((version, gap_begin.clone()));
            self.cleared.insert(
                gap_begin,
                ClearedSpan {
                    end: gap_end,
                    version,
                },
            );
        }
    }

    /// The parts of `[begin, end)` no span covers, ascending.
    fn uncovered(&self, begin: &[u8], end: &[u8]) -> Vec<(Bytes, Bytes)> {
        let mut gaps = Vec::new();
        // Everything in [begin, covered_to) is covered or already a gap.
        let mut covered_to = begin;
        let before = (Bound::Unbounded, Bound::Excluded(begin));
        if let Some((_, span)) = self.cleared.range::<[u8], _>(before).next_back() {
            covered_to = covered_to.max(&span.end[..]);
        }
        let within = (Bound::Included(begin), Bound::Excluded(end));
        for (span_begin, span) in self.cleared.range::<[u8], _>(within) {
            if &span_begin[..] > covered_to {
                gaps.push((
                    Bytes::copy_from_slice(covered_to),
                    Bytes::copy_from_slice(span_begin),
                ));
            }
            covered_to = covered_to.max(&span.end[..]);
        }
        if covered_to < end {
            gaps.push((
                Bytes::copy_from_slice(covered_to),
                Bytes::copy_from_slice(end),
            ));
        }
        gaps
    }

    /// `key` at `version` as far as the window knows.
    pub fn get(&self, key: &[u8], version: Version) -> WindowValue<'_> {
        if let Some(chain) = self.chains.get(key) {
            match chain.at(version) {
                WindowValue::Unchanged => {}
                decided => return decided,
            }
        }
        match self.cleared_span(key, version) {
            Some(_) => WindowValue::Cleared,
            None => WindowValue::Unchanged,
        }
    }

    /// The span `[begin, end)` holding `key` if a window clear at or before
    /// `version` covered it: engine keys in it are cleared at `version`
    /// unless their chain says otherwise.
    pub fn cleared_span(&self, key: &[u8], version: Version) -> Option<(&Bytes, &Bytes)> {
        let upto = (Bound::Unbounded, Bound::Included(key));
        let (begin, span) = self.cleared.range::<[u8], _>(upto).next_back()?;
        (key < &span.end[..] && span.version <= version).then_some((begin, &span.end))
    }

    /// The chains of the keys in `[begin, end)`, ascending (reverse it for
    /// descending). `begin < end` is required.
    pub fn chains(&self, begin: &[u8], end: &[u8]) -> btree_map::Range<'_, Bytes, Chain> {
        self.chains
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
    }

    /// The oldest version through which a flush leaves at most `budget`
    /// bytes in the window, if the window holds more.
    pub fn release_point(&self, budget: u64) -> Option<Version> {
        self.charges.release_point(budget)
    }

    /// What a flush through `through` moves.
    pub fn plan_flush(&self, through: Version) -> FlushPlan {
        let chain_log_len = self.chain_log.partition_point(|(v, _)| *v <= through);
        let mut keys: Vec<Bytes> = self
            .chain_log
            .range(..chain_log_len)
            .map(|(_, key)| key.clone())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let cleared_log_len = self.cleared_log.partition_point(|(v, _)| *v <= through);
        let mut span_begins: Vec<Bytes> = self
            .cleared_log
            .range(..cleared_log_len)
            .map(|(_, begin)| begin.clone())
            .collect();
        span_begins.sort_unstable();
        FlushPlan {
            through,
            keys,
            span_begins,
            chain_log_len,
            cleared_log_len,
        }
    }

    /// Appends to `batch` the ops that take the engine from its state at
    /// the durable version to its state at `plan.through`.
    pub fn write_flush(&self, plan: &FlushPlan, batch: &mut WriteBatch) {
        let mut pending: Option<(Bytes, Bytes)> = None;
        for begin in &plan.span_begins {
            let Some(span) = self.cleared.get(begin) else {
                continue;
            };
            match &mut pending {
                Some((_, end)) if end == begin => *end = span.end.clone(),
                _ => {
                    if let Some((b, e)) = pending.replace((begin.clone(), span.end.clone())) {
                        batch.clear_range(b, e);
                    }
                }
            }
        }
        if let Some((b, e)) = pending {
            batch.clear_range(b, e);
        }
        for key in &plan.keys {
            let Some(chain) = self.chains.get(key) else {
                continue;
            };
            match chain.at(plan.through) {
                WindowValue::Set(value) => {
                    batch.set(key.clone(), value.clone());
                }
                // A span flushed with this plan clears the key, unless that
                // span was flushed earlier (the key was set after it and
                // cleared again while the span still covered it).
                WindowValue::Cleared if self.cleared_span(key, plan.through).is_none() => {
                    let mut end = Vec::with_capacity(key.len() + 1);
                    end.extend_from_slice(key);
                    end.push(0);
                    batch.clear_range(key.clone(), Bytes::from(end));
                }
                WindowValue::Cleared | WindowValue::Unchanged => {}
            }
        }
    }

    /// Drops what `plan` moved, once the engine holds it.
    pub fn discard(&mut self, plan: FlushPlan) {
        let through = plan.through;
        self.chain_log.drain(..plan.chain_log_len);
        self.cleared_log.drain(..plan.cleared_log_len);
        self.charges.release_through(through);
        for key in plan.keys {
            let Entry::Occupied(mut slot) = self.chains.entry(key) else {
                continue;
            };
            let chain = slot.get_mut();
            let kept_from = chain.entries.partition_point(|(v, _)| *v <= through);
            chain.entries.drain(..kept_from);
            match chain.entries.first() {
                None => {
                    slot.remove();
                }
                // The chain's own cost was charged to a released version:
                // the oldest version it still holds owns it now.
                Some(&(oldest, _)) => self.charges.add(oldest, chain_cost(slot.key())),
            }
        }
        for begin in plan.span_begins {
            self.cleared.remove(&begin);
        }
    }

    /// Forgets every mutation above `version`, as if they never came: a
    /// recovery ended their generation below them, so they never committed.
    pub fn rollback_after(&mut self, version: Version) {
        while let Some((v, key)) = self.chain_log.back() {
            if *v <= version {
                break;
            }
            if let Entry::Occupied(mut slot) = self.chains.entry(key.clone()) {
                let chain = slot.get_mut();
                if chain.entries.last().is_some_and(|(last, _)| last == v) {
                    chain.entries.pop();
                }
                if chain.entries.is_empty() {
                    slot.remove();
                }
            }
            self.chain_log.pop_back();
        }
        while let Some((v, begin)) = self.cleared_log.back() {
            if *v <= version {
                break;
            }
            // A span is only ever inserted whole, at one version.
            self.cleared.remove(begin);
            self.cleared_log.pop_back();
        }
        self.charges.forget_after(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BatchOp;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn flush(window: &mut Window, through: u64) -> Vec<BatchOp> {
        let plan = window.plan_flush(Version(through));
        let mut batch = WriteBatch::new();
        window.write_flush(&plan, &mut batch);
        window.discard(plan);
        batch.into_ops()
    }

    fn set_op(key: &str, value: &str) -> BatchOp {
        BatchOp::Set {
            key: b(key),
            value: b(value),
        }
    }

    fn clear_op(begin: &str, end: &str) -> BatchOp {
        BatchOp::ClearRange {
            begin: b(begin),
            end: b(end),
        }
    }

    #[test]
    fn reads_see_the_latest_entry_at_or_before_the_version() {
        let mut window = Window::new();
        window.set(Version(1), b"k", b"one");
        window.set(Version(3), b"k", b"three");
        assert_eq!(window.get(b"k", Version(0)), WindowValue::Unchanged);
        assert_eq!(window.get(b"k", Version(1)), WindowValue::Set(&b("one")));
        assert_eq!(window.get(b"k", Version(2)), WindowValue::Set(&b("one")));
        assert_eq!(window.get(b"k", Version(9)), WindowValue::Set(&b("three")));
        assert_eq!(window.get(b"other", Version(9)), WindowValue::Unchanged);
    }

    #[test]
    fn one_version_keeps_one_entry_per_key() {
        let mut once = Window::new();
        once.set(Version(2), b"k", b"last");
        let mut twice = Window::new();
        twice.set(Version(2), b"k", b"first, longer");
        twice.set(Version(2), b"k", b"last");
        assert_eq!(twice.get(b"k", Version(2)), WindowValue::Set(&b("last")));
        assert_eq!(twice.bytes(), once.bytes());
        assert_eq!(twice.chain_log.len(), 1);
    }

    #[test]
    fn set_and_clear_in_one_version_apply_in_order() {
        let mut window = Window::new();
        window.clear(Version(5), b"a", b"c");
        window.set(Version(5), b"b", b"after clear");
        window.set(Version(5), b"x", b"before clear");
        window.clear(Version(5), b"x", b"y");
        assert_eq!(
            window.get(b"b", Version(5)),
            WindowValue::Set(&b("after clear"))
        );
        assert_eq!(window.get(b"a", Version(5)), WindowValue::Cleared);
        assert_eq!(window.get(b"x", Version(5)), WindowValue::Cleared);
        assert_eq!(window.get(b"a", Version(4)), WindowValue::Unchanged);
    }

    #[test]
    fn spans_remember_the_first_clear_covering_each_key() {
        let mut window = Window::new();
        window.clear(Version(2), b"b", b"d");
        window.clear(Version(4), b"a", b"e");
        window.clear(Version(6), b"c", b"c");
        assert_eq!(window.cleared.len(), 3);
        assert_eq!(window.get(b"c", Version(3)), WindowValue::Cleared);
        assert_eq!(window.get(b"a", Version(3)), WindowValue::Unchanged);
        assert_eq!(window.get(b"a", Version(4)), WindowValue::Cleared);
        assert_eq!(window.get(b"e", Version(9)), WindowValue::Unchanged);
        assert_eq!(
            window.cleared_span(b"dz", Version(4)),
            Some((&b("d"), &b("e")))
        );
        assert_eq!(window.cleared_span(b"dz", Version(3)), None);
    }

    #[test]
    fn flush_moves_exactly_the_versions_through_the_point() {
        let mut window = Window::new();
        window.set(Version(1), b"a", b"1");
        window.clear(Version(2), b"a", b"b");
        window.set(Version(2), b"c", b"2");
        window.clear(Version(2), b"d", b"e");
        window.clear(Version(2), b"e", b"f");
        window.set(Version(3), b"b", b"3");
        window.set(Version(3), b"c", b"3");
        let ops = flush(&mut window, 2);
        // Adjacent spans coalesce; "a" is covered by a flushed span.
        assert_eq!(
            ops,
            vec![clear_op("a", "b"), clear_op("d", "f"), set_op("c", "2")]
        );
        assert_eq!(window.get(b"a", Version(3)), WindowValue::Unchanged);
        assert_eq!(window.get(b"c", Version(2)), WindowValue::Unchanged);
        assert_eq!(window.get(b"c", Version(3)), WindowValue::Set(&b("3")));
        assert_eq!(
            flush(&mut window, 3),
            vec![set_op("b", "3"), set_op("c", "3")]
        );
        assert!(window.is_empty());
        assert_eq!(window.bytes(), 0);
    }

    #[test]
    fn a_key_cleared_under_an_already_flushed_span_gets_a_point_clear() {
        let mut window = Window::new();
        window.clear(Version(1), b"a", b"z");
        window.set(Version(2), b"k", b"v");
        window.clear(Version(3), b"a", b"z");
        assert_eq!(
            flush(&mut window, 2),
            vec![clear_op("a", "z"), set_op("k", "v")]
        );
        assert_eq!(window.get(b"k", Version(3)), WindowValue::Cleared);
        assert_eq!(flush(&mut window, 3), vec![clear_op("k", "k\0")]);
        assert_eq!(window.bytes(), 0);
    }

    #[test]
    fn surviving_chains_stay_charged() {
        let mut window = Window::new();
        window.set(Version(1), b"k", b"1");
        window.set(Version(2), b"k", b"2");
        let mut alone = Window::new();
        alone.set(Version(2), b"k", b"2");
        flush(&mut window, 1);
        assert_eq!(window.bytes(), alone.bytes());
        assert_eq!(window.charges.by_version, alone.charges.by_version);
    }

    #[test]
    fn release_point_frees_the_oldest_versions_first() {
        let mut window = Window::new();
        for v in 1..=4 {
            window.set(Version(v), format!("k{v}").as_bytes(), &[0; 100]);
        }
        let per_version = window.bytes() / 4;
        assert_eq!(window.release_point(window.bytes()), None);
        assert_eq!(window.release_point(3 * per_version), Some(Version(1)));
        assert_eq!(window.release_point(3 * per_version - 1), Some(Version(2)));
        assert_eq!(window.release_point(0), Some(Version(4)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u8),
        Clear(u8, u8),
    }

    fn key(k: u8) -> Vec<u8> {
        vec![b'a' + k % 8]
    }

    fn apply(window: &mut Window, version: u64, op: &Op) {
        match op {
            Op::Set(k, value) => window.set(Version(version), &key(*k), &[*value]),
            Op::Clear(a, b) => {
                let (lo, hi) = (key(*a.min(b)), key(*a.max(b)));
                window.clear(Version(version), &lo, &hi)
            }
        }
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<(u64, Op)>> {
        use proptest::prelude::*;
        let op = prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Clear(a, b)),
        ];
        proptest::collection::vec((0u64..3, op), 0..40).prop_map(|steps| {
            let mut version = 1;
            steps
                .into_iter()
                .map(|(gap, op)| {
                    version += gap;
                    (version, op)
                })
                .collect()
        })
    }

    proptest::proptest! {
        /// A window rolled back to a version reads, at every version and
        /// key, like one that only ever got the mutations up to it, and
        /// holds the same bytes; a flush of what was kept moves the same.
        #[test]
        fn a_rollback_forgets_exactly_what_came_after(
            steps in ops(),
            flushed in 0u64..20,
            kept in 0u64..100,
        ) {
            let mut window = Window::new();
            let mut expected = Window::new();
            for (version, op) in &steps {
                apply(&mut window, *version, op);
                if *version <= kept {
                    apply(&mut expected, *version, op);
                }
            }
            let flushed = flushed.min(kept);
            let moved = flush(&mut window, flushed);
            window.rollback_after(Version(kept));
            proptest::prop_assert_eq!(moved, flush(&mut expected, flushed));
            for k in 0..8u8 {
                for v in 0..100 {
                    proptest::prop_assert_eq!(
                        window.get(&key(k), Version(v)),
                        expected.get(&key(k), Version(v)),
                        "key {} at {}", k, v
                    );
                }
            }
            proptest::prop_assert_eq!(window.bytes(), expected.bytes());
            proptest::prop_assert_eq!(
                flush(&mut window, kept),
                flush(&mut expected, kept)
            );
        }
    }
}
