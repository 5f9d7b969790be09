//! The coordinator's disk: two ordered tables, the raft log (keyed by
//! big-endian index) and metadata (vote, commit and purge marks, applied
//! state, snapshot), behind a narrow trait with a real implementation on
//! heed and one in memory for tests and simulation.
//!
//! ```text
//!  LogStore ─────┐ get / range / last / write(ops, atomically and durably)
//!  StateMachine ─┴─▶ CoordinatorDisk ─▶ HeedDisk (LMDB: tables "log", "meta")
//!                                      └▶ MemDisk (BTreeMaps; fails on demand)
//! ```
//!
//! A write that fails poisons the disk: every later call fails too, and
//! nothing is retried. After a failed fsync the file's contents are unknown,
//! so the coordinator must stop and be restarted, re-reading what is on disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use heed::types::Bytes as Raw;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};

/// What the coordinator's data directory must say it holds.
pub const FORMAT: &[u8] = b"teamlog-coordinator 1";
const FORMAT_KEY: &[u8] = b"format";
/// Room for the log between snapshots and the registers, many times over.
const MAP_SIZE: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Log,
    Meta,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes the keys `from <= key < to` (to the end without `to`).
    DeleteRange {
        table: Table,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("coordinator store: {0}")]
    Heed(#[from] heed::Error),
    #[error("coordinator store: a write failed earlier, so nothing more is done until a restart")]
    Poisoned,
    #[error("coordinator store: {dir} holds {found:?}, not a coordinator's data")]
    Format { dir: String, found: String },
    #[error("coordinator store: injected write failure")]
    Injected,
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

pub trait CoordinatorDisk: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;
    /// The entries `from <= key < to` (to the end without `to`), in key order.
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<Vec<KeyValue>, DiskError>;
    fn last(&self, table: Table) -> Result<Option<KeyValue>, DiskError>;
    /// Applies every op, atomically and durably, or none and poisons.
    fn write(&self, ops: &[WriteOp]) -> Result<(), DiskError>;
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let end = match to {
        Some(to) => Bound::Excluded(to),
        None => Bound::Unbounded,
    };
    (Bound::Included(from), end)
}

type RawDb = Database<'static, Raw, Raw>;

/// The real disk: one LMDB environment with a table per `Table`. LMDB
/// commits a write transaction with a sync, so `write` is durable when it
/// returns.
pub struct HeedDisk {
    env: Env<WithoutTls>,
    log: RawDb,
    meta: RawDb,
    poisoned: AtomicBool,
}

impl HeedDisk {
    /// Opens (creating if needed) the store in `dir`, which must exist.
    pub fn open(dir: &Path) -> Result<HeedDisk, DiskError> {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(MAP_SIZE).max_dbs(2);
        // SAFETY: the data directory is locked by this process
        // (`cluster::DataDirLock`), so no other process maps the file.
        let env = unsafe { options.open(dir)? };
        let wtxn = env.write_txn()?;
        let opened = env.create_databases_and_commit(wtxn, |opener, wtxn| {
            let log: Database<Raw, Raw> = opener.create_database(wtxn, Some("log"))?;
            let meta: Database<Raw, Raw> = opener.create_database(wtxn, Some("meta"))?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit((
                log, meta,
            )))
        })?;
        let (log, meta) = match opened {
            CommitOrAbort::Commit(dbs) => dbs,
            CommitOrAbort::Abort(never) => match never {},
        };
        let disk = HeedDisk {
            env,
            log,
            meta,
            poisoned: AtomicBool::new(false),
        };
        match disk.get(Table::Meta, FORMAT_KEY)? {
            Some(found) if found == FORMAT => {}
            Some(found) => {
                return Err(DiskError::Format {
                    dir: dir.display().to_string(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }
            None => disk.write(&[WriteOp::Put {
                table: Table::Meta,
                key: FORMAT_KEY.to_vec(),
                value: FORMAT.to_vec(),
            }])?,
        }
        Ok(disk)
    }

    fn table(&self, table: Table) -> RawDb {
        match table {
            Table::Log => self.log,
            Table::Meta => self.meta,
        }
    }

    fn check(&self) -> Result<(), DiskError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(DiskError::Poisoned);
        }
        Ok(())
    }

    fn write_txn(&self, ops: &[WriteOp]) -> Result<(), heed::Error> {
        let mut wtxn = self.env.write_txn()?;
        for op in ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    self.table(*table).put(&mut wtxn, key, value)?
                }
                WriteOp::DeleteRange { table, from, to } => {
                    let range = bounds(from, to.as_deref());
                    self.table(*table).delete_range(&mut wtxn, &range)?;
                }
            }
        }
        wtxn.commit()
    }
}

impl CoordinatorDisk for HeedDisk {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.check()?;
        let rtxn = self.env.read_txn()?;
        Ok(self.table(table).get(&rtxn, key)?.map(<[u8]>::to_vec))
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<Vec<KeyValue>, DiskError> {
        self.check()?;
        let rtxn = self.env.read_txn()?;
        let range = bounds(from, to);
        let mut found = Vec::new();
        for entry in self.table(table).range(&rtxn, &range)? {
            let (key, value) = entry?;
            found.push((key.to_vec(), value.to_vec()));
        }
        Ok(found)
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, DiskError> {
        self.check()?;
        let rtxn = self.env.read_txn()?;
        Ok(self
            .table(table)
            .last(&rtxn)?
            .map(|(key, value)| (key.to_vec(), value.to_vec())))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), DiskError> {
        self.check()?;
        self.write_txn(ops).map_err(|error| {
            self.poisoned.store(true, Ordering::Release);
            DiskError::Heed(error)
        })
    }
}

type MemTables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A disk in memory: every write is durable at once. `fail_next_write`
/// makes the next write fail and poison it, as a failed fsync would.
#[derive(Default)]
pub struct MemDisk {
    tables: Mutex<MemTables>,
    fail_next_write: AtomicBool,
    poisoned: AtomicBool,
}

impl MemDisk {
    pub fn fail_next_write(&self) {
        self.fail_next_write.store(true, Ordering::Release);
    }

    /// Whether a write failed as [`MemDisk::fail_next_write`] asked: the
    /// process using this handle met the fault.
    pub fn write_failed(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// What a restarted process opens: the same tables (every write was
    /// durable at once), and no poison, which a failed write leaves on the
    /// process's handle, not on the disk.
    pub fn reopen(&self) -> MemDisk {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        MemDisk {
            tables: Mutex::new(tables),
            ..MemDisk::default()
        }
    }

    fn tables(&self) -> Result<std::sync::MutexGuard<'_, MemTables>, DiskError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(DiskError::Poisoned);
        }
        Ok(self.tables.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl CoordinatorDisk for MemDisk {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.tables()?.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<Vec<KeyValue>, DiskError> {
        let tables = self.tables()?;
        let Some(t) = tables.get(&table) else {
            return Ok(Vec::new());
        };
        Ok(t.range::<[u8], _>(bounds(from, to))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, DiskError> {
        Ok(self
            .tables()?
            .get(&table)
            .and_then(|t| t.last_key_value())
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), DiskError> {
        let mut tables = self.tables()?;
        if self.fail_next_write.swap(false, Ordering::AcqRel) {
            self.poisoned.store(true, Ordering::Release);
            return Err(DiskError::Injected);
        }
        for op in ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    tables
                        .entry(*table)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                WriteOp::DeleteRange { table, from, to } => {
                    if let Some(t) = tables.get_mut(table) {
                        let doomed: Vec<Vec<u8>> = t
                            .range::<[u8], _>(bounds(from, to.as_deref()))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in doomed {
                            t.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_disk_keeps_what_was_written_and_drops_the_poison() {
        let disk = MemDisk::default();
        disk.write(&[put(Table::Meta, b"vote", b"v")]).unwrap();
        disk.fail_next_write();
        assert!(disk.write(&[put(Table::Meta, b"vote", b"w")]).is_err());
        assert!(disk.get(Table::Meta, b"vote").is_err());
        let reopened = disk.reopen();
        assert_eq!(
            reopened.get(Table::Meta, b"vote").unwrap(),
            Some(b"v".to_vec())
        );
        reopened.write(&[put(Table::Meta, b"vote", b"w")]).unwrap();
    }

    fn put(table: Table, key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn conformance(disk: &dyn CoordinatorDisk) {
        disk.write(&[
            put(Table::Log, &[1], b"a"),
            put(Table::Log, &[2], b"b"),
            put(Table::Log, &[3], b"c"),
            put(Table::Meta, b"vote", b"v"),
        ])
        .unwrap();
        assert_eq!(disk.get(Table::Meta, b"vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(disk.get(Table::Log, b"vote").unwrap(), None);
        let keys = |found: Vec<KeyValue>| found.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(disk.range(Table::Log, &[2], None).unwrap()),
            [[2], [3]]
        );
        assert_eq!(
            keys(disk.range(Table::Log, &[1], Some(&[3])).unwrap()),
            [[1], [2]]
        );
        assert_eq!(
            disk.last(Table::Log).unwrap(),
            Some((vec![3], b"c".to_vec()))
        );
        disk.write(&[WriteOp::DeleteRange {
            table: Table::Log,
            from: vec![2],
            to: None,
        }])
        .unwrap();
        assert_eq!(keys(disk.range(Table::Log, &[0], None).unwrap()), [[1]]);
    }

    #[test]
    fn heed_disk_keeps_its_tables_apart_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&HeedDisk::open(dir.path()).unwrap());
    }

    #[test]
    fn mem_disk_keeps_its_tables_apart_and_ordered() {
        conformance(&MemDisk::default());
    }

    #[test]
    fn heed_disk_keeps_what_it_wrote_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        HeedDisk::open(dir.path())
            .unwrap()
            .write(&[put(Table::Meta, b"vote", b"v")])
            .unwrap();
        let reopened = HeedDisk::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get(Table::Meta, b"vote").unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn heed_disk_refuses_a_store_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        HeedDisk::open(dir.path())
            .unwrap()
            .write(&[put(Table::Meta, FORMAT_KEY, b"something else 7")])
            .unwrap();
        let error = HeedDisk::open(dir.path()).err().unwrap();
        assert!(matches!(error, DiskError::Format { .. }), "{error}");
    }

    #[test]
    fn a_failed_write_poisons_the_disk() {
        let disk = MemDisk::default();
        disk.fail_next_write();
        assert!(matches!(
            disk.write(&[put(Table::Log, &[1], b"a")]),
            Err(DiskError::Injected)
        ));
        assert!(matches!(
            disk.get(Table::Log, &[1]),
            Err(DiskError::Poisoned)
        ));
        assert!(matches!(
            disk.write(&[put(Table::Log, &[1], b"a")]),
            Err(DiskError::Poisoned)
        ));
    }
}
