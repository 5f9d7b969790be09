//! Deliberately broken variants of the roles, compiled only with the
//! `broken-variants` feature. Each is a bug the simulation must catch
//! within a few hundred seeds (`sim/tests/broken.rs`); a check that lets
//! one through is not checking.
//!
//! ```text
//!  TLogAcknowledgesBeforeSync:   TLog ─▶ LaggingSyncStore (sync keeps the batch before) ─▶ MemStore
//!                                (a worker's TLogs: LaggingDisks opens each log so)
//!  StorageAppliesAnAppendTwice:  storage_server::broken switch, on for the run
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use std::net::SocketAddr;

use tlog::mem_store::MemStore;
use tlog::store::{LogStore, SegmentId, StoreError};
use worker::disks::{KeptTLog, OpenedLog, TLogDisks};
use worker::{MemDisks, WorkerError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Every TLog acknowledges each batch one sync before its disk holds
    /// it, so a kill loses what it acknowledged last.
    TLogAcknowledgesBeforeSync,
    /// The first append a storage server applies, it applies twice.
    StorageAppliesAnAppendTwice,
}

impl Broken {
    /// Turns this thread's storage-server switch to match `broken` for the
    /// run to come (off when the run has another variant or none).
    pub(crate) fn arm(broken: Option<Broken>) {
        storage_server::broken::apply_the_next_append_twice(
            broken == Some(Broken::StorageAppliesAnAppendTwice),
        );
    }
}

/// A store whose sync makes durable only what was written before the
/// previous sync: each batch a TLog acknowledges is on its disk only once
/// the next batch syncs, so a kill loses the acknowledged tail, cleanly.
///
/// Writes since the last sync wait here, invisible to the disk; reads see
/// them. A clone starts with nothing waiting, as a restarted process does:
/// the host makes one at each start.
pub(crate) struct LaggingSyncStore {
    disk: MemStore,
    waiting: Mutex<Waiting>,
}

/// Each segment's writes since its last sync: (offset, bytes).
type Waiting = BTreeMap<SegmentId, Vec<(u64, Vec<u8>)>>;

impl LaggingSyncStore {
    pub(crate) fn new(disk: MemStore) -> LaggingSyncStore {
        LaggingSyncStore {
            disk,
            waiting: Mutex::default(),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker's TLog logs whose every TLog acknowledges before its sync:
/// each log is a [`LaggingSyncStore`] over the worker's memory.
pub(crate) struct LaggingDisks(pub(crate) MemDisks);

impl TLogDisks for LaggingDisks {
    fn kept(&self) -> Result<Vec<KeptTLog>, WorkerError> {
        self.0.kept()
    }

    fn open(&self, epoch: u64, index: u64, fresh: bool) -> Result<OpenedLog, WorkerError> {
        let store = LaggingSyncStore::new(self.0.open_store(epoch, index, fresh));
        Ok(OpenedLog {
            store: Box::new(store),
            lock: None,
        })
    }

    fn record_address(
        &self,
        epoch: u64,
        index: u64,
        address: SocketAddr,
    ) -> Result<(), WorkerError> {
        self.0.record_address(epoch, index, address)
    }

    fn remove(&self, epoch: u64, index: u64) {
        self.0.remove(epoch, index)
    }
}

impl Clone for LaggingSyncStore {
    fn clone(&self) -> Self {
        LaggingSyncStore::new(self.disk.clone())
    }
}

impl LogStore for LaggingSyncStore {
    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        self.disk.list()
    }
    fn create(&self, id: SegmentId, capacity: u64) -> Result<(), StoreError> {
        self.disk.create(id, capacity)
    }
    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let capacity = self.disk.capacity(id)?;
        if offset + data.len() as u64 > capacity {
            // The disk gives the error a real write past the end gets.
            return self.disk.write_at(id, offset, data);
        }
        self.waiting()
            .entry(id)
            .or_default()
            .push((offset, data.to_vec()));
        Ok(())
    }
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let read = self.disk.read_at(id, offset, buf)?;
        let end = offset + read as u64;
        for (at, data) in self.waiting().get(&id).into_iter().flatten() {
            let from = offset.max(*at);
            let to = end.min(at + data.len() as u64);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        Ok(read)
    }
    fn sync(&self, id: SegmentId) -> Result<(), StoreError> {
        self.disk.sync(id)?;
        for (offset, data) in self.waiting().remove(&id).unwrap_or_default() {
            self.disk.write_at(id, offset, &data)?;
        }
        Ok(())
    }
    fn remove(&self, id: SegmentId) -> Result<(), StoreError> {
        self.waiting().remove(&id);
        self.disk.remove(id)
    }
    fn capacity(&self, id: SegmentId) -> Result<u64, StoreError> {
        self.disk.capacity(id)
    }
    fn describe(&self, id: SegmentId) -> String {
        self.disk.describe(id)
    }
}
