//! Where a worker keeps its TLogs' logs, and the address each listened
//! at: directories of the data directory ([`DirDisks`]), or memory that
//! outlives the worker's restarts ([`MemDisks`], for tests and the
//! simulation, where a crash keeps what a power loss would).
//!
//! ```text
//!  DirDisks: DATA_DIR/tlog-<epoch>-<index>/   log/ (the TLog's segments), address
//!  MemDisks: (epoch, index) ─▶ MemStore + address
//! ```
//!
//! A TLog keeps its address beside its log, so that a worker restarted
//! after a crash reopens it where the core state says it is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cluster::DataDirLock;
use tlog::file_store::FileStore;
use tlog::mem_store::MemStore;
use tlog::store::LogStore;

use crate::WorkerError;

/// A TLog this worker kept from before its restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeptTLog {
    pub epoch: u64,
    pub index: u64,
    /// Where it listened; `None` if it never got as far as listening.
    pub address: Option<SocketAddr>,
}

/// An opened log and what keeps other processes off it while it runs.
pub struct OpenedLog {
    pub store: Box<dyn LogStore>,
    pub lock: Option<DataDirLock>,
}

/// A worker's TLog logs.
pub trait TLogDisks: Send + Sync + 'static {
    /// The TLogs kept, by epoch and index.
    fn kept(&self) -> Result<Vec<KeptTLog>, WorkerError>;
    /// Opens TLog `epoch`/`index`'s log; `fresh` first removes whatever
    /// an earlier recruit of the same TLog left.
    fn open(&self, epoch: u64, index: u64, fresh: bool) -> Result<OpenedLog, WorkerError>;
    /// Records where the TLog listens, for its reopening.
    fn record_address(
        &self,
        epoch: u64,
        index: u64,
        address: SocketAddr,
    ) -> Result<(), WorkerError>;
    /// Removes a retired TLog's log.
    fn remove(&self, epoch: u64, index: u64);
}

/// TLog logs in directories of a data directory.
#[derive(Clone, Debug)]
pub struct DirDisks {
    data_dir: PathBuf,
}

impl DirDisks {
    pub fn new(data_dir: &Path) -> DirDisks {
        DirDisks {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// TLog `epoch`/`index`'s directory.
    pub fn tlog_dir(&self, epoch: u64, index: u64) -> PathBuf {
        self.data_dir.join(format!("tlog-{epoch}-{index}"))
    }
}

/// The epoch and index a TLog directory's name gives.
fn parse_tlog_dir(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("tlog-")?;
    let (epoch, index) = rest.split_once('-')?;
    Some((epoch.parse().ok()?, index.parse().ok()?))
}

impl TLogDisks for DirDisks {
    fn kept(&self) -> Result<Vec<KeptTLog>, WorkerError> {
        let io = |e| WorkerError::Io(self.data_dir.clone(), e);
        let entries = match std::fs::read_dir(&self.data_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut kept = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if let Some((epoch, index)) = name.to_str().and_then(parse_tlog_dir) {
                let address = std::fs::read_to_string(entry.path().join("address"))
                    .ok()
                    .and_then(|a| a.trim().parse().ok());
                kept.push(KeptTLog {
                    epoch,
                    index,
                    address,
                });
            }
        }
        kept.sort();
        Ok(kept)
    }

    fn open(&self, epoch: u64, index: u64, fresh: bool) -> Result<OpenedLog, WorkerError> {
        let dir = self.tlog_dir(epoch, index);
        if fresh {
            self.remove(epoch, index);
        }
        let failed = |e: &dyn std::fmt::Display| {
            WorkerError::Role(format!("tlog {epoch}/{index} in {}: {e}", dir.display()))
        };
        let lock = DataDirLock::acquire(&dir).map_err(|e| failed(&e))?;
        let store = FileStore::open(&dir.join("log")).map_err(|e| failed(&e))?;
        Ok(OpenedLog {
            store: Box::new(store),
            lock: Some(lock),
        })
    }

    fn record_address(
        &self,
        epoch: u64,
        index: u64,
        address: SocketAddr,
    ) -> Result<(), WorkerError> {
        let path = self.tlog_dir(epoch, index).join("address");
        cluster::write_atomically(&path, address.to_string().as_bytes())
            .map_err(|e| WorkerError::Role(format!("recording {}: {e}", path.display())))
    }

    fn remove(&self, epoch: u64, index: u64) {
        let dir = self.tlog_dir(epoch, index);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a retired TLog's directory")
            }
        }
    }
}

/// Each kept log, by epoch and index, with where its TLog listened.
type MemLogs = BTreeMap<(u64, u64), (MemStore, Option<SocketAddr>)>;

/// TLog logs in memory, kept across the worker's restarts: clones share
/// them, and [`MemDisks::crash`] leaves what a power loss would.
#[derive(Clone, Default)]
pub struct MemDisks {
    logs: Arc<Mutex<MemLogs>>,
    /// No room for another segment of any log, kept or new.
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl MemDisks {
    fn logs(&self) -> std::sync::MutexGuard<'_, MemLogs> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A power loss: each log keeps what it synced and some of the rest,
    /// drawn from `rng_seed`.
    pub fn crash(&self, rng_seed: u64) {
        for (i, (store, _)) in self.logs().values().enumerate() {
            store.crash(rng_seed.wrapping_add(i as u64));
        }
    }

    /// A full disk (`true`): no log gets another segment, and a new log
    /// not its first, until the disk has room again (`false`).
    pub fn fill(&self, full: bool) {
        let logs = self.logs();
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
        for (store, _) in logs.values() {
            match full {
                true => store.fill(),
                false => store.limit_segments(None),
            }
        }
    }

    /// Whether a log was refused a segment since the disk last filled up.
    pub fn refused_for_space(&self) -> bool {
        self.logs()
            .values()
            .any(|(store, _)| store.refused_for_space())
    }

    /// TLog `epoch`/`index`'s store, as [`TLogDisks::open`] opens it.
    pub fn open_store(&self, epoch: u64, index: u64, fresh: bool) -> MemStore {
        let mut logs = self.logs();
        if fresh {
            logs.remove(&(epoch, index));
        }
        let (store, _) = logs.entry((epoch, index)).or_insert_with(|| {
            let store = MemStore::new();
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                store.fill();
            }
            (store, None)
        });
        store.clone()
    }

    /// The stores of the logs kept now.
    pub fn stores(&self) -> Vec<MemStore> {
        self.logs()
            .values()
            .map(|(store, _)| store.clone())
            .collect()
    }
}

impl TLogDisks for MemDisks {
    fn kept(&self) -> Result<Vec<KeptTLog>, WorkerError> {
        Ok(self
            .logs()
            .iter()
            .map(|(&(epoch, index), (_, address))| KeptTLog {
                epoch,
                index,
                address: *address,
            })
            .collect())
    }

    fn open(&self, epoch: u64, index: u64, fresh: bool) -> Result<OpenedLog, WorkerError> {
        Ok(OpenedLog {
            store: Box::new(self.open_store(epoch, index, fresh)),
            lock: None,
        })
    }

    fn record_address(
        &self,
        epoch: u64,
        index: u64,
        address: SocketAddr,
    ) -> Result<(), WorkerError> {
        match self.logs().get_mut(&(epoch, index)) {
            Some((_, recorded)) => {
                *recorded = Some(address);
                Ok(())
            }
            None => Err(WorkerError::Role(format!(
                "tlog {epoch}/{index} has no log to record its address beside"
            ))),
        }
    }

    fn remove(&self, epoch: u64, index: u64) {
        self.logs().remove(&(epoch, index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_disks(disks: &dyn TLogDisks) {
        let address: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        assert!(disks.kept().unwrap().is_empty());
        let opened = disks.open(3, 1, true).unwrap();
        opened.store.create(1, 4096).unwrap();
        drop(opened);
        disks.open(2, 0, true).unwrap();
        disks.record_address(3, 1, address).unwrap();
        let kept = disks.kept().unwrap();
        let expected = vec![
            KeptTLog {
                epoch: 2,
                index: 0,
                address: None,
            },
            KeptTLog {
                epoch: 3,
                index: 1,
                address: Some(address),
            },
        ];
        assert_eq!(kept, expected);
        // Reopened, a log has its segments; a fresh one does not.
        assert_eq!(
            disks.open(3, 1, false).unwrap().store.list().unwrap(),
            vec![1]
        );
        assert!(disks
            .open(3, 1, true)
            .unwrap()
            .store
            .list()
            .unwrap()
            .is_empty());
        disks.remove(2, 0);
        disks.remove(3, 1);
        assert!(disks.kept().unwrap().is_empty());
    }

    #[test]
    fn directories_keep_logs_and_addresses_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        check_disks(&DirDisks::new(dir.path()));
    }

    #[test]
    fn memory_keeps_logs_and_addresses_until_removed() {
        check_disks(&MemDisks::default());
    }
}
