//! In-memory [`LogStore`] for tests and simulation, able to simulate a crash.
//!
//! Each segment keeps two images: the durable one (as of its last successful
//! sync) and the current one (what reads see). Writes change only the current
//! image and mark their 4 KiB pages dirty; `sync` copies current to durable.
//!
//! ```text
//!   write_at ──▶ current image  ──sync──▶ durable image
//!                (dirty pages)               │
//!   crash(seed): durable + random subset of dirty pages (some only a prefix)
//!                ──▶ becomes both images
//! ```
//!
//! `crash` models what a power loss can leave behind: unsynced pages persist
//! in any order or not at all, and any of them may be torn part way. Creating and
//! removing segments is durable at once, as in the contract.
//!
//! `MemStore` is a cheap handle (an `Arc` inside): a test keeps a clone after
//! handing one to the log, then crashes or corrupts the shared state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::store::{check_bounds, LogStore, SegmentId, StoreError};

/// Granularity at which unsynced data reaches the disk in a crash.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Default)]
struct Segment {
    durable: Vec<u8>,
    current: Vec<u8>,
    dirty_pages: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    segments: BTreeMap<SegmentId, Segment>,
    /// Images of removed segments, handed to later creations.
    removed: Vec<Vec<u8>>,
    fail_next_sync: bool,
    /// An injected sync failure fired since the last crash.
    sync_failed: bool,
    /// The most segments that may exist at once (a full disk past it).
    segment_limit: Option<usize>,
    /// A segment was refused for the limit since it was last set.
    refused_for_space: bool,
}

/// A shared in-memory store; clones are handles to the same segments.
#[derive(Clone, Default)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the store from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces every segment's current image with what a machine crash could
    /// leave: the durable image plus a subset of the dirty pages chosen by
    /// `rng_seed`, each kept whole, dropped, or torn to a random prefix. Afterwards all data is
    /// durable (it is what the "disk" holds after the reboot).
    pub fn crash(&self, rng_seed: u64) {
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let mut state = self.state();
        for seg in state.segments.values_mut() {
            let mut image = seg.durable.clone();
            for &page in &seg.dirty_pages {
                let start = (page * PAGE_SIZE) as usize;
                let end = (start + PAGE_SIZE as usize).min(image.len());
                let keep = match rng.random_range(0..8) {
                    0..=2 => 0,
                    3 => rng.random_range(0..=end - start),
                    _ => end - start,
                };
                image[start..start + keep].copy_from_slice(&seg.current[start..start + keep]);
            }
            seg.current = image.clone();
            seg.durable = image;
            seg.dirty_pages.clear();
        }
        state.fail_next_sync = false;
        state.sync_failed = false;
    }

    /// Makes the next `sync` (of any segment) fail without making anything
    /// durable.
    pub fn fail_next_sync(&self) {
        self.state().fail_next_sync = true;
    }

    /// Whether a sync failed as [`MemStore::fail_next_sync`] asked, since
    /// the last crash: the process using the store met the fault.
    pub fn sync_failed(&self) -> bool {
        self.state().sync_failed
    }

    /// Lets at most `limit` segments exist: creating one more fails as a
    /// full disk does (`None`: no limit, as when space is freed).
    pub fn limit_segments(&self, limit: Option<usize>) {
        let mut state = self.state();
        state.segment_limit = limit;
        state.refused_for_space = false;
    }

    /// Whether a segment was refused for the limit since it was last set:
    /// the process using the store met the full disk.
    pub fn refused_for_space(&self) -> bool {
        self.state().refused_for_space
    }

    /// Leaves no room for a segment more than it holds now: a disk that
    /// fills up (room comes back as segments are removed).
    pub fn fill(&self) {
        let mut state = self.state();
        state.segment_limit = Some(state.segments.len());
        state.refused_for_space = false;
    }

    /// Flips (bitwise not) `len` bytes at `offset` in both images: corruption
    /// of data already on the disk.
    pub fn corrupt(&self, id: SegmentId, offset: u64, len: u64) -> Result<(), StoreError> {
        let mut state = self.state();
        let seg = state
            .segments
            .get_mut(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        check_bounds(id, offset, len, seg.current.len() as u64, true)?;
        let range = offset as usize..(offset + len) as usize;
        for image in [&mut seg.current, &mut seg.durable] {
            for b in &mut image[range.clone()] {
                *b = !*b;
            }
        }
        Ok(())
    }

    /// How many 4 KiB pages of `id` were written since its last sync (what a
    /// crash may lose).
    pub fn dirty_pages(&self, id: SegmentId) -> Result<usize, StoreError> {
        let state = self.state();
        let seg = state
            .segments
            .get(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        Ok(seg.dirty_pages.len())
    }
}

impl LogStore for MemStore {
    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        Ok(self.state().segments.keys().copied().collect())
    }

    fn create(&self, id: SegmentId, capacity: u64) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.segments.contains_key(&id) {
            return Err(StoreError::AlreadyExists(id));
        }
        if state
            .segment_limit
            .is_some_and(|limit| state.segments.len() >= limit)
        {
            state.refused_for_space = true;
            return Err(StoreError::Io {
                what: format!("create segment {id}"),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            });
        }
        let len = usize::try_from(capacity).map_err(|_| StoreError::OutOfBounds {
            segment: id,
            offset: 0,
            len: capacity,
            capacity: usize::MAX as u64,
        })?;
        // Like FileStore's recycled files, a new segment may hold the bytes
        // of a removed one.
        let image = match state.removed.iter().position(|image| image.len() == len) {
            Some(at) => state.removed.swap_remove(at),
            None => vec![0; len],
        };
        state.segments.insert(
            id,
            Segment {
                durable: image.clone(),
                current: image,
                dirty_pages: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut state = self.state();
        let seg = state
            .segments
            .get_mut(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        check_bounds(
            id,
            offset,
            data.len() as u64,
            seg.current.len() as u64,
            true,
        )?;
        if data.is_empty() {
            return Ok(());
        }
        let start = offset as usize;
        seg.current[start..start + data.len()].copy_from_slice(data);
        let last = offset + data.len() as u64 - 1;
        seg.dirty_pages
            .extend(offset / PAGE_SIZE..=last / PAGE_SIZE);
        Ok(())
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let state = self.state();
        let seg = state
            .segments
            .get(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        check_bounds(
            id,
            offset,
            buf.len() as u64,
            seg.current.len() as u64,
            false,
        )?;
        let src = &seg.current[offset as usize..];
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn sync(&self, id: SegmentId) -> Result<(), StoreError> {
        let mut state = self.state();
        if !state.segments.contains_key(&id) {
            return Err(StoreError::NoSuchSegment(id));
        }
        if std::mem::take(&mut state.fail_next_sync) {
            state.sync_failed = true;
            return Err(StoreError::InjectedFault(format!(
                "sync of segment {id} failed"
            )));
        }
        let seg = state
            .segments
            .get_mut(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        for &page in &seg.dirty_pages {
            let start = (page * PAGE_SIZE) as usize;
            let end = (start + PAGE_SIZE as usize).min(seg.current.len());
            seg.durable[start..end].copy_from_slice(&seg.current[start..end]);
        }
        seg.dirty_pages.clear();
        Ok(())
    }

    fn remove(&self, id: SegmentId) -> Result<(), StoreError> {
        let mut state = self.state();
        let segment = state
            .segments
            .remove(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        if state.removed.len() < crate::file_store::MAX_SPARES {
            state.removed.push(segment.durable);
        }
        Ok(())
    }

    fn capacity(&self, id: SegmentId) -> Result<u64, StoreError> {
        let state = self.state();
        let seg = state
            .segments
            .get(&id)
            .ok_or(StoreError::NoSuchSegment(id))?;
        Ok(seg.current.len() as u64)
    }

    fn describe(&self, id: SegmentId) -> String {
        format!("mem:segment-{id:020}")
    }
}
