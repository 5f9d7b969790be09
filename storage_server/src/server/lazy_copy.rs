//! Copies yield to foreground work: source document 001's lazy scheduling,
//! where the fuzzy copy runs at low priority and gives up the processor
//! after each small unit so that user transactions go first.
//!
//! A copy's read (`GetRangeRequest::copy`, sent by the fetch of a move's
//! destination and by a rebuild) is served in slices. Before each slice it
//! waits, for at most [`MAX_YIELD`], until no foreground read of this
//! server is in flight, and it takes the store's lock for one slice only,
//! so the apply loop and foreground reads get in between. When it had to
//! wait, the page ends where it is (`more` set), so that under load the
//! destination installs small pages too.
//!
//! ```text
//!  foreground get / get_range ──foreground()──▶ in flight ─▶ … ─▶ drop: quiet when 0
//!  copy read ─▶ [yield_to_foreground(MAX_YIELD) ─▶ slice under the lock]* ─▶ page
//!                 waited and pairs in hand ─▶ page ends early
//! ```
//!
//! The wait is bounded so that a copy finishes under any load: at worst a
//! slice of [`SLICE_BYTES`] every [`MAX_YIELD`] plus its read, which is
//! about half the default move rate, the pace a move's deadline allows
//! (twice its expected time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proto::key_after;
use tokio::sync::Notify;

use super::MAX_RANGE_REPLY_BYTES;
use crate::versioned::ReadError;

/// The most bytes a copy reads under one hold of the store's lock.
pub(super) const SLICE_BYTES: usize = 256 << 10;
/// The most pairs a copy reads under one hold of the store's lock.
pub(super) const SLICE_PAIRS: usize = 2_000;
/// The longest a copy waits for foreground reads before each slice (and
/// a destination before each page).
pub(super) const MAX_YIELD: Duration = Duration::from_millis(5);

/// Foreground reads in flight, which copy reads yield to.
pub(super) struct Lanes {
    in_flight: AtomicUsize,
    quiet: Notify,
}

/// One foreground read in flight, until dropped.
pub(super) struct InFlight<'a>(&'a Lanes);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

impl Lanes {
    pub(super) fn new() -> Self {
        Lanes {
            in_flight: AtomicUsize::new(0),
            quiet: Notify::new(),
        }
    }

    /// Counts a foreground read as in flight until the guard is dropped.
    pub(super) fn foreground(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Waits until no foreground read is in flight, for at most
    /// `at_most`; whether there was one to wait for.
    pub(super) async fn yield_to_foreground(&self, at_most: Duration) -> bool {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return false;
        }
        metrics::counter!("teamlog_storage_copy_yields_total").increment(1);
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            // Registered before the check, so a drop to zero in between
            // is not missed.
            quiet.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, quiet).await.is_err() {
                return true;
            }
        }
    }

    /// Reads `[begin, end)` for a copy, at most `limit` pairs, slice by
    /// slice through `read_slice(from, pairs, bytes)` (the store's forward
    /// read at the copy's version); returns the pairs and whether more
    /// may follow them.
    pub(super) async fn copy_read(
        &self,
        begin: &Bytes,
        limit: usize,
        mut read_slice: impl FnMut(&[u8], usize, usize) -> Result<Vec<(Bytes, Bytes)>, ReadError>,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ReadError> {
        let mut pairs: Vec<(Bytes, Bytes)> = Vec::new();
        let mut bytes = 0;
        let mut from = begin.clone();
        loop {
            let waited = self.yield_to_foreground(MAX_YIELD).await;
            if waited && !pairs.is_empty() {
                return Ok((pairs, true));
            }
            let room = (MAX_RANGE_REPLY_BYTES - bytes).min(SLICE_BYTES);
            // One pair past the limit says whether there are more. After
            // the first slice, no more pairs than the room holds at the
            // size seen so far: the engine reads as many as asked.
            let mut want = (limit + 1 - pairs.len()).min(SLICE_PAIRS);
            if let Some(mean) = bytes.checked_div(pairs.len()) {
                want = want.min(room / mean.max(1) + 1);
            }
            let slice = match read_slice(&from, want, room) {
                Ok(slice) => slice,
                // The window moved past the copy's version between slices:
                // the next page is read at a newer one.
                Err(ReadError::TooOld { .. }) if !pairs.is_empty() => return Ok((pairs, true)),
                Err(e) => return Err(e),
            };
            let slice_bytes: usize = slice.iter().map(|(k, v)| k.len() + v.len()).sum();
            let exhausted = slice.len() < want && slice_bytes < room;
            if let Some((last, _)) = slice.last() {
                from = key_after(last);
            }
            bytes += slice_bytes;
            pairs.extend(slice);
            if pairs.len() > limit {
                pairs.truncate(limit);
                return Ok((pairs, true));
            }
            if exhausted {
                return Ok((pairs, false));
            }
            if bytes >= MAX_RANGE_REPLY_BYTES {
                return Ok((pairs, true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::{Mutation, Version};

    use super::*;
    use crate::mem_engine::MemEngine;
    use crate::versioned::{VersionedStore, WindowConfig};

    const VERSION: Version = Version(10);

    fn key(i: usize) -> Bytes {
        Bytes::from(format!("k{i:06}"))
    }

    /// A store holding `count` pairs of 100-byte values at `VERSION`.
    fn store(count: usize) -> VersionedStore<MemEngine> {
        let mut store =
            VersionedStore::open(Arc::new(MemEngine::new()), WindowConfig::default()).unwrap();
        for i in 0..count {
            let set = Mutation::SetValue {
                key: key(i),
                value: Bytes::from(vec![b'v'; 100]),
            };
            store.apply(VERSION, &set).unwrap();
        }
        store.set_applied(VERSION);
        store
    }

    /// Reads all of `store` through copy reads of `limit` pairs, counting
    /// the slices; returns the keys and the pages' sizes.
    async fn copy_all(
        lanes: &Lanes,
        store: &VersionedStore<MemEngine>,
        limit: usize,
        slices: &mut usize,
    ) -> (Vec<Bytes>, Vec<usize>) {
        let (mut keys, mut pages) = (Vec::new(), Vec::new());
        let mut from = Bytes::new();
        loop {
            let (pairs, more) = lanes
                .copy_read(&from, limit, |begin, pairs, bytes| {
                    *slices += 1;
                    store.get_range_within(begin, b"z", pairs, bytes, false, VERSION)
                })
                .await
                .unwrap();
            pages.push(pairs.len());
            if let Some((last, _)) = pairs.last() {
                from = key_after(last);
            }
            keys.extend(pairs.into_iter().map(|(k, _)| k));
            if !more {
                return (keys, pages);
            }
        }
    }

    #[tokio::test]
    async fn an_idle_server_serves_whole_pages_read_in_slices() {
        let count = 25_000;
        let store = store(count);
        let lanes = Lanes::new();
        let mut slices = 0;
        let (keys, pages) = copy_all(&lanes, &store, 10_000, &mut slices).await;
        assert_eq!(keys, (0..count).map(key).collect::<Vec<_>>());
        assert_eq!(pages, vec![10_000, 10_000, 5_000]);
        // 2,000 pairs of 107 bytes fit a slice: a full page is five slices
        // and a sixth of one pair that says there are more; the last
        // page's third slice comes back short.
        assert_eq!(slices, 6 + 6 + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_under_foreground_reads_ends_its_pages_after_a_slice() {
        let count = 9_000;
        let store = store(count);
        let lanes = Lanes::new();
        let busy = lanes.foreground();
        let mut slices = 0;
        let (keys, pages) = copy_all(&lanes, &store, 10_000, &mut slices).await;
        assert_eq!(keys, (0..count).map(key).collect::<Vec<_>>());
        assert_eq!(pages, vec![2_000, 2_000, 2_000, 2_000, 1_000]);
        drop(busy);
        let mut slices = 0;
        let (_, pages) = copy_all(&lanes, &store, 10_000, &mut slices).await;
        assert_eq!(pages, vec![count]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_waits_for_foreground_reads_at_most_the_bound() {
        let lanes = Arc::new(Lanes::new());
        assert!(!lanes.yield_to_foreground(MAX_YIELD).await);
        let busy = lanes.foreground();
        let started = tokio::time::Instant::now();
        assert!(lanes.yield_to_foreground(MAX_YIELD).await);
        assert_eq!(started.elapsed(), MAX_YIELD);
        let waiting = tokio::spawn({
            let lanes = lanes.clone();
            async move {
                let started = tokio::time::Instant::now();
                let waited = lanes.yield_to_foreground(Duration::from_secs(60)).await;
                (waited, started.elapsed())
            }
        });
        tokio::task::yield_now().await;
        drop(busy);
        // Woken by the last foreground read's end, not by the bound.
        let (waited, took) = waiting.await.unwrap();
        assert!(waited);
        assert!(took < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn slices_of_large_pairs_ask_no_more_pairs_than_fit() {
        let mut store =
            VersionedStore::open(Arc::new(MemEngine::new()), WindowConfig::default()).unwrap();
        for i in 0..1_000 {
            let set = Mutation::SetValue {
                key: key(i),
                value: Bytes::from(vec![b'v'; 1_000]),
            };
            store.apply(VERSION, &set).unwrap();
        }
        store.set_applied(VERSION);
        let lanes = Lanes::new();
        let mut asked = Vec::new();
        let (pairs, more) = lanes
            .copy_read(&Bytes::new(), 10_000, |begin, pairs, bytes| {
                asked.push(pairs);
                store.get_range_within(begin, b"z", pairs, bytes, false, VERSION)
            })
            .await
            .unwrap();
        assert_eq!((pairs.len(), more), (1_000, false));
        // The first slice asks the most pairs a slice takes; the next ones
        // as many as 256 KiB holds at 1,007 bytes a pair.
        assert_eq!(asked[0], SLICE_PAIRS);
        assert!(
            asked[1..].iter().all(|n| *n == SLICE_BYTES / 1_007 + 1),
            "{asked:?}"
        );
    }

    #[tokio::test]
    async fn a_copy_past_the_window_keeps_the_slices_it_read() {
        let store = store(5_000);
        let lanes = Lanes::new();
        let mut calls = 0;
        let (pairs, more) = lanes
            .copy_read(&Bytes::new(), 10_000, |begin, pairs, bytes| {
                calls += 1;
                if calls == 1 {
                    store.get_range_within(begin, b"z", pairs, bytes, false, VERSION)
                } else {
                    Err(ReadError::TooOld {
                        version: VERSION,
                        oldest: Version(11),
                    })
                }
            })
            .await
            .unwrap();
        assert_eq!((pairs.len(), more), (SLICE_PAIRS, true));
        let first = lanes
            .copy_read(&Bytes::new(), 10_000, |_, _, _| {
                Err(ReadError::TooOld {
                    version: VERSION,
                    oldest: Version(11),
                })
            })
            .await;
        assert!(matches!(first, Err(ReadError::TooOld { .. })));
    }
}
