//! Samples of what a storage server holds and takes in, from which it
//! answers the data distributor's questions: how many bytes a key range
//! holds, how many writes a second it gets, and which key cuts it in half
//! by either.
//!
//! ```text
//!  every set/clear into the store ─▶ ByteSample   (key chosen by its hash, weight ≥ UNIT)
//!  every user write applied        ─▶ WriteSample (one write in ONE_IN, by a seeded generator,
//!                                                  counted per key in one-second buckets)
//!  ShardMetrics request ─▶ bytes / rates / split keys of each range, from the samples
//! ```
//!
//! The byte sample keeps a key with probability `size / BYTE_SAMPLE_UNIT`,
//! decided by a hash of the key (so a key stays in or out as its value
//! changes size only across the threshold), with weight
//! `max(size, BYTE_SAMPLE_UNIT)`: the expected weight of a range is its
//! size, while large ranges keep one entry per unit. The write sample
//! draws writes at random rather than by key hash, so a small key written
//! often shows up however small it is (splitting by bytes alone, a hot
//! small key never splits). Both are estimates: a rolled-back version's
//! writes stay counted until overwritten.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use proto::rpc::stored_size;

/// A sampled key stands for about this many bytes.
pub const BYTE_SAMPLE_UNIT: u64 = 4096;

/// One write in this many is sampled.
pub const WRITE_SAMPLE_ONE_IN: u32 = 4;

/// Writes count towards rates for this many seconds.
pub const WRITE_WINDOW_SECONDS: u64 = 10;

/// The most distinct keys one second's bucket keeps; further new keys in
/// that second are not sampled (the memory a write flood may take).
pub const MAX_KEYS_PER_BUCKET: usize = 16_384;

/// Sampled keys of the store, each with the bytes it stands for.
#[derive(Debug, Default)]
pub struct ByteSample {
    keys: BTreeMap<Vec<u8>, u64>,
}

impl ByteSample {
    /// The key now holds a value of `value_len` bytes.
    pub fn set(&mut self, key: &[u8], value_len: usize) {
        match sampled_weight(key, value_len) {
            Some(weight) => {
                self.keys.insert(key.to_vec(), weight);
            }
            None => {
                self.keys.remove(key);
            }
        }
    }

    /// Every key in `[begin, end)` is gone.
    pub fn clear(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        // Removing key by key costs the keys cleared; splitting the map
        // and appending it back would cost the whole map.
        let cleared: Vec<Vec<u8>> = self.within(begin, end).map(|(k, _)| k.clone()).collect();
        for key in cleared {
            self.keys.remove(&key);
        }
    }

    /// The estimated bytes held in `[begin, end)`.
    pub fn bytes(&self, begin: &[u8], end: &[u8]) -> u64 {
        self.within(begin, end).map(|(_, w)| *w).sum()
    }

    /// The sampled key that cuts `[begin, end)` most evenly by bytes.
    pub fn split(&self, begin: &[u8], end: &[u8]) -> Option<Vec<u8>> {
        even_cut(self.within(begin, end).map(|(k, w)| (k.as_slice(), *w)))
    }

    fn within<'a>(
        &'a self,
        begin: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a u64)> + 'a {
        let range = (begin < end).then(|| {
            self.keys
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
        });
        range.into_iter().flatten()
    }
}

/// The weight of the pair in the byte sample, or `None` when its key is
/// not sampled at this size.
fn sampled_weight(key: &[u8], value_len: usize) -> Option<u64> {
    let size = stored_size(key.len(), value_len);
    let draw = u64::from(crc32c::crc32c(key)) % BYTE_SAMPLE_UNIT;
    (draw < size).then_some(size.max(BYTE_SAMPLE_UNIT))
}

/// The key among `weighted` (ascending) that leaves the larger side of the
/// cut lightest; never the first key, so both sides hold a sampled key.
fn even_cut<'a>(weighted: impl Iterator<Item = (&'a [u8], u64)>) -> Option<Vec<u8>> {
    let entries: Vec<(&[u8], u64)> = weighted.collect();
    let total: u64 = entries.iter().map(|(_, w)| w).sum();
    let mut before = 0u64;
    let mut best: Option<(u64, &[u8])> = None;
    for (i, (key, weight)) in entries.iter().enumerate() {
        if i > 0 {
            let larger = before.max(total - before);
            if best.is_none_or(|(b, _)| larger < b) {
                best = Some((larger, key));
            }
        }
        before += weight;
    }
    best.map(|(_, key)| key.to_vec())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WriteCounts {
    ops: u64,
    bytes: u64,
}

#[derive(Debug)]
struct WriteBucket {
    second: u64,
    keys: BTreeMap<Vec<u8>, WriteCounts>,
}

/// Sampled user writes of the last [`WRITE_WINDOW_SECONDS`], per key.
#[derive(Debug)]
pub struct WriteSample {
    rng: fastrand::Rng,
    buckets: VecDeque<WriteBucket>,
}

/// The writes a key range takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeWrites {
    pub ops_per_sec: u64,
    pub bytes_per_sec: u64,
    /// The sampled key that cuts the range most evenly by writes.
    pub split: Option<Vec<u8>>,
}

impl WriteSample {
    /// A sample drawing from a generator seeded with `seed` (the server's
    /// id: the same writes give the same sample).
    pub fn new(seed: u64) -> Self {
        WriteSample {
            rng: fastrand::Rng::with_seed(seed),
            buckets: VecDeque::new(),
        }
    }

    /// One write of `bytes` to `key` applied at `now_ms`.
    pub fn record(&mut self, now_ms: u64, key: &[u8], bytes: usize) {
        if self.rng.u32(..WRITE_SAMPLE_ONE_IN) != 0 {
            return;
        }
        let second = now_ms / 1000;
        if self.buckets.back().is_none_or(|b| b.second < second) {
            self.buckets.push_back(WriteBucket {
                second,
                keys: BTreeMap::new(),
            });
        }
        while self
            .buckets
            .front()
            .is_some_and(|b| b.second + WRITE_WINDOW_SECONDS <= second)
        {
            self.buckets.pop_front();
        }
        let Some(bucket) = self.buckets.back_mut() else {
            return;
        };
        let weight = u64::from(WRITE_SAMPLE_ONE_IN);
        if bucket.keys.len() >= MAX_KEYS_PER_BUCKET && !bucket.keys.contains_key(key) {
            return;
        }
        let counts = bucket.keys.entry(key.to_vec()).or_default();
        counts.ops += weight;
        counts.bytes += weight * bytes as u64;
    }

    /// The writes a second in `[begin, end)` over the window ending at
    /// `now_ms`, and the sampled key that cuts the range most evenly by
    /// writes.
    pub fn of_range(&self, now_ms: u64, begin: &[u8], end: &[u8]) -> RangeWrites {
        let per_key = self.per_key(now_ms, begin, end);
        let (ops, bytes) = per_key
            .values()
            .fold((0, 0), |(ops, bytes), c| (ops + c.ops, bytes + c.bytes));
        RangeWrites {
            ops_per_sec: ops / WRITE_WINDOW_SECONDS,
            bytes_per_sec: bytes / WRITE_WINDOW_SECONDS,
            split: even_cut(per_key.iter().map(|(k, c)| (k.as_slice(), c.ops))),
        }
    }

    fn per_key(&self, now_ms: u64, begin: &[u8], end: &[u8]) -> BTreeMap<Vec<u8>, WriteCounts> {
        let mut merged: BTreeMap<Vec<u8>, WriteCounts> = BTreeMap::new();
        if begin >= end {
            return merged;
        }
        let second = now_ms / 1000;
        let live = self
            .buckets
            .iter()
            .filter(|b| b.second + WRITE_WINDOW_SECONDS > second);
        for bucket in live {
            let range = (Bound::Included(begin), Bound::Excluded(end));
            for (key, counts) in bucket.keys.range::<[u8], _>(range) {
                let merged = merged.entry(key.clone()).or_default();
                merged.ops += counts.ops;
                merged.bytes += counts.bytes;
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    #[test]
    fn the_byte_sample_estimates_a_range_and_cuts_it_near_its_middle() {
        let mut sample = ByteSample::default();
        for i in 0..20_000 {
            sample.set(&key(i), 200);
        }
        let actual = 20_000 * stored_size(7, 200);
        let estimate = sample.bytes(b"", b"\xff");
        assert!(
            estimate > actual * 9 / 10 && estimate < actual * 11 / 10,
            "{estimate} against {actual}"
        );
        let cut = sample.split(b"", b"\xff").unwrap();
        assert!(cut > key(9_000) && cut < key(11_000), "{cut:?}");
        // Halves of a sub-range.
        let cut = sample.split(&key(0), &key(1_000)).unwrap();
        assert!(cut > key(300) && cut < key(700), "{cut:?}");
    }

    #[test]
    fn cleared_and_shrunk_keys_leave_the_byte_sample() {
        let mut sample = ByteSample::default();
        for i in 0..1_000 {
            sample.set(&key(i), 5_000);
        }
        assert_eq!(
            sample.bytes(&key(0), &key(1_000)),
            1_000 * stored_size(7, 5_000)
        );
        sample.clear(&key(100), &key(200));
        assert_eq!(sample.bytes(&key(100), &key(200)), 0);
        assert_eq!(
            sample.bytes(&key(0), &key(100)),
            100 * stored_size(7, 5_000)
        );
        assert_eq!(
            sample.bytes(&key(200), &key(1_000)),
            800 * stored_size(7, 5_000)
        );
        for i in 200..1_000 {
            sample.set(&key(i), 0);
        }
        assert!(sample.bytes(&key(200), &key(1_000)) < 800 * 39 * 2);
        // Nothing to cut with fewer than two sampled keys.
        assert_eq!(sample.split(&key(100), &key(200)), None);
        assert_eq!(sample.split(b"z", b"a"), None);
    }

    #[test]
    fn a_hot_key_shows_in_the_write_sample_and_cuts_its_range() {
        let mut sample = WriteSample::new(7);
        // One second: 40,000 writes to k000500, 10 to each of 1,000 others.
        for n in 0..40_000 {
            sample.record(1_000, &key(500), 100);
            if n % 4 == 0 {
                sample.record(1_000, &key(n / 4 % 1_000), 100);
            }
        }
        let rates = sample.of_range(1_500, &key(0), &key(1_000));
        assert!(
            rates.ops_per_sec > 4_500 && rates.ops_per_sec < 5_500,
            "{rates:?}"
        );
        assert_eq!(rates.bytes_per_sec / 100, rates.ops_per_sec);
        let hot = sample.of_range(1_500, &key(500), &key(501));
        assert!(hot.ops_per_sec > 3_800, "{hot:?}");
        // The cut is next to the hot key: one side holds it, the other
        // most of the rest.
        let cut = rates.split.unwrap();
        assert!(cut == key(500) || cut == key(501), "{cut:?}");
        // Writes leave the window.
        let later = 1_000 + WRITE_WINDOW_SECONDS * 1000;
        assert_eq!(
            sample.of_range(later, &key(0), &key(1_000)),
            RangeWrites::default()
        );
        sample.record(later, &key(1), 10);
        assert_eq!(
            sample.buckets.len(),
            1,
            "old buckets dropped as time passes"
        );
    }

    #[test]
    fn a_bucket_keeps_a_bounded_number_of_keys() {
        let mut sample = WriteSample::new(1);
        for i in 0..(MAX_KEYS_PER_BUCKET as u32 * 8) {
            sample.record(0, &key(i), 1);
        }
        assert_eq!(sample.buckets[0].keys.len(), MAX_KEYS_PER_BUCKET);
        // A key already kept still counts.
        let kept = sample.buckets[0].keys.keys().next().unwrap().clone();
        let before = sample.buckets[0].keys[&kept].ops;
        for _ in 0..100 {
            sample.record(0, &kept, 1);
        }
        assert!(sample.buckets[0].keys[&kept].ops > before);
    }
}
