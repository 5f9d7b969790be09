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
//!
//! A write refused for lack of room is the exception: `NoSpace`, and no
//! poison. LMDB meets a full disk (`ENOSPC`) or a full map while it writes
//! a transaction's new pages, before the meta page that would commit them,
//! so it aborts the transaction and the state before it stands. The store
//! above waits for room and writes again (`store::write_with_room`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use heed::types::Bytes as Raw;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use proto::disk_writes::DiskWrites;

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
    /// Nothing was written, and nothing is lost: the same write may be
    /// made again once there is room.
    #[error("coordinator store: no room for a write: {0}")]
    NoSpace(String),
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
    /// Applies every op, atomically and durably; or none and poisons; or,
    /// with no room for them, none and `NoSpace`.
    fn write(&self, ops: &[WriteOp]) -> Result<(), DiskError>;
    /// Why the last write was refused for lack of room, until a write
    /// succeeds.
    fn short_of_room(&self) -> Option<String>;
    /// Where the store makes this disk's writes.
    fn writes(&self) -> DiskWrites;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    short_of_room: Mutex<Option<String>>,
}

impl HeedDisk {
    /// Opens (creating if needed) the store in `dir`, which must exist.
    pub fn open(dir: &Path) -> Result<HeedDisk, DiskError> {
        HeedDisk::open_with_map_size(dir, MAP_SIZE)
    }

    fn open_with_map_size(dir: &Path, map_size: usize) -> Result<HeedDisk, DiskError> {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(2);
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
            short_of_room: Mutex::new(None),
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
        match self.write_txn(ops) {
            Ok(()) => {
                *lock(&self.short_of_room) = None;
                Ok(())
            }
            Err(error) if is_out_of_room(&error) => {
                let why = error.to_string();
                *lock(&self.short_of_room) = Some(why.clone());
                Err(DiskError::NoSpace(why))
            }
            Err(error) => {
                self.poisoned.store(true, Ordering::Release);
                Err(DiskError::Heed(error))
            }
        }
    }

    fn short_of_room(&self) -> Option<String> {
        lock(&self.short_of_room).clone()
    }

    /// A sync on a crowded disk can take long; the process's other roles
    /// go on meanwhile.
    fn writes(&self) -> DiskWrites {
        DiskWrites::BlockingPool
    }
}

/// Whether LMDB refused a transaction for lack of room: the disk (or the
/// quota) is full, or the map is.
fn is_out_of_room(error: &heed::Error) -> bool {
    match error {
        heed::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ),
        heed::Error::Mdb(heed::MdbError::MapFull) => true,
        _ => false,
    }
}

type MemTables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A disk in memory: every write is durable at once. `fail_next_write`
/// makes the next write fail and poison it, as a failed fsync would;
/// `fill` refuses writes for lack of room until it is undone.
#[derive(Default)]
pub struct MemDisk {
    tables: Mutex<MemTables>,
    fail_next_write: AtomicBool,
    poisoned: AtomicBool,
    full: AtomicBool,
    /// Writes refused since the disk last filled up.
    refused_for_room: AtomicU64,
    short_of_room: Mutex<Option<String>>,
}

impl MemDisk {
    /// From now on every write is refused for lack of room (`full`), or
    /// none is.
    pub fn fill(&self, full: bool) {
        if full {
            self.refused_for_room.store(0, Ordering::Release);
        }
        self.full.store(full, Ordering::Release);
    }

    /// Writes refused for lack of room since the disk last filled up: the
    /// process using it met the fault.
    pub fn refused_for_room(&self) -> u64 {
        self.refused_for_room.load(Ordering::Acquire)
    }

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
            full: AtomicBool::new(self.full.load(Ordering::Acquire)),
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
        if self.full.load(Ordering::Acquire) {
            self.refused_for_room.fetch_add(1, Ordering::AcqRel);
            let why = "the disk is full (simulated)".to_owned();
            *lock(&self.short_of_room) = Some(why.clone());
            return Err(DiskError::NoSpace(why));
        }
        *lock(&self.short_of_room) = None;
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

    fn short_of_room(&self) -> Option<String> {
        lock(&self.short_of_room).clone()
    }

    fn writes(&self) -> DiskWrites {
        DiskWrites::OnTask
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

    /// A write refused for lack of room leaves what was there, poisons
    /// nothing, and goes through once there is room.
    fn refuses_for_room_without_harm(disk: &dyn CoordinatorDisk, make_room: impl FnOnce()) {
        assert!(matches!(
            disk.write(&[put(Table::Log, &[1], &[7; 256 << 10])]),
            Err(DiskError::NoSpace(_))
        ));
        assert!(disk.short_of_room().is_some());
        assert_eq!(disk.get(Table::Meta, b"vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(disk.get(Table::Log, &[1]).unwrap(), None);
        make_room();
        disk.write(&[put(Table::Log, &[1], b"a")]).unwrap();
        assert_eq!(disk.short_of_room(), None);
        assert_eq!(disk.get(Table::Log, &[1]).unwrap(), Some(b"a".to_vec()));
    }

    #[test]
    fn a_full_mem_disk_refuses_writes_without_poison() {
        let disk = MemDisk::default();
        disk.write(&[put(Table::Meta, b"vote", b"v")]).unwrap();
        disk.fill(true);
        refuses_for_room_without_harm(&disk, || disk.fill(false));
        assert_eq!(disk.refused_for_room(), 1);
    }

    #[test]
    fn a_full_heed_map_refuses_a_write_without_poison() {
        let dir = tempfile::tempdir().unwrap();
        let disk = HeedDisk::open_with_map_size(dir.path(), 128 << 10).unwrap();
        disk.write(&[put(Table::Meta, b"vote", b"v")]).unwrap();
        // The room it lacked was for the large value: the small one fits.
        refuses_for_room_without_harm(&disk, || {});
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
