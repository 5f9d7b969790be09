//! [`KvEngine`] over LMDB (heed): the storage server's durable state.
//!
//! On-disk layout: one LMDB environment in a directory (`data.mdb`,
//! `lock.mdb`) holding two named databases:
//!
//! ```text
//!   "data"  key   = 0x00 ++ user key      value = user value
//!   "meta"  key   = entry name (UTF-8)    value = entry bytes
//!           "format" = b"TLKV" ++ format version (u32 little-endian), written
//!                      when the environment is created, checked at every open
//!
//!   write(batch) ──▶ one write transaction: ops in order ──▶ commit (LMDB syncs)
//!                      └─ any failure after it began ──▶ poisoned
//! ```
//!
//! The one-byte prefix on data keys exists because LMDB refuses empty keys
//! and teamlog allows the empty key; it also leaves room to add key spaces
//! without a new format. LMDB limits keys to 511 bytes, so user keys may be
//! at most 510 (`max_key_len`). Range bounds may be longer: a bound longer
//! than any storable key is cut to the storable length with the inclusivity
//! adjusted, which selects exactly the same stored keys.
//!
//! Every write commits with LMDB's default durability (data pages and the
//! meta page synced before `commit` returns). A failed transaction poisons
//! the engine: LMDB aborts cleanly, but after a failed sync nothing can be
//! known about the disk, and a caller that cannot tell the two apart must not
//! retry (the rule the TLog follows too). Running out of room is told
//! apart and does not poison: LMDB writes a transaction's pages into free
//! pages, which no committed state refers to, and commits by then writing
//! a meta page that already exists in the file; so a full map (while
//! allocating pages) or a full disk (while writing or syncing them) ends
//! the transaction before the meta page is touched, and the last committed
//! state stands.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use heed::types::Bytes as Raw;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use crate::engine::{BatchOp, EngineError, KvEngine, WriteBatch, FORMAT_METADATA};

/// errno values LMDB passes through for a full disk and a full quota.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// The first bytes of the "format" entry.
pub const FORMAT_MAGIC: &[u8; 4] = b"TLKV";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of every key in the "data" database.
const DATA_KEY_PREFIX: u8 = 0x00;

type RawDb = Database<'static, Raw, Raw>;

/// A storage engine in one LMDB environment.
pub struct HeedEngine {
    env: Env<WithoutTls>,
    data: RawDb,
    meta: RawDb,
    dir: PathBuf,
    map_size: usize,
    /// Longest encoded key LMDB stores (prefix included).
    max_encoded_key: usize,
    poisoned: AtomicBool,
    poison_cause: Mutex<String>,
}

/// Opening runs LMDB calls and format checks inside one transaction
/// closure, whose error type must absorb both.
enum OpenError {
    Heed(heed::Error),
    Engine(EngineError),
}

impl From<heed::Error> for OpenError {
    fn from(e: heed::Error) -> Self {
        OpenError::Heed(e)
    }
}

impl HeedEngine {
    /// Opens (creating if needed) the environment in `dir` with a memory map
    /// of `map_size` bytes (a multiple of the OS page size; the most the
    /// files may grow to). Refuses an environment whose format entry is
    /// foreign or newer, and one holding data but no format entry.
    pub fn open(dir: &Path, map_size: usize) -> Result<HeedEngine, EngineError> {
        std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let heed_err = |what: &str| {
            let context = format!("{what} LMDB environment at {}", dir.display());
            move |source| EngineError::Heed { context, source }
        };
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(2);
        // SAFETY: the files are used only through this process's `Env`
        // (heed refuses a second open of the same path in one process, and
        // LMDB's lock file coordinates processes); nothing else maps or
        // truncates them while it is open.
        let env = unsafe { options.open(dir) }.map_err(heed_err("opening"))?;
        let wtxn = env.write_txn().map_err(heed_err("starting to create"))?;
        let opened = env.create_databases_and_commit(wtxn, |opener, wtxn| {
            let data: Database<Raw, Raw> = opener.create_database(wtxn, Some("data"))?;
            let meta: Database<Raw, Raw> = opener.create_database(wtxn, Some("meta"))?;
            check_or_write_format(dir, wtxn, &data, &meta)?;
            Ok::<_, OpenError>(CommitOrAbort::<_, std::convert::Infallible>::Commit((
                data, meta,
            )))
        });
        let (data, meta) = match opened {
            Ok(CommitOrAbort::Commit(dbs)) => dbs,
            Ok(CommitOrAbort::Abort(never)) => match never {},
            Err(OpenError::Heed(source)) => {
                return Err(heed_err("creating the databases of")(source));
            }
            Err(OpenError::Engine(e)) => return Err(e),
        };
        let max_encoded_key = env.max_key_size();
        Ok(HeedEngine {
            env,
            data,
            meta,
            dir: dir.to_path_buf(),
            map_size,
            max_encoded_key,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(String::new()),
        })
    }

    /// The directory holding the environment.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_poisoned(&self) -> Result<(), EngineError> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let cause = self
            .poison_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Err(EngineError::Poisoned { cause })
    }

    fn poison(&self, cause: &EngineError) {
        *self.poison_cause.lock().unwrap_or_else(|e| e.into_inner()) = cause.to_string();
        self.poisoned.store(true, Ordering::Release);
    }

    fn error(&self, what: &str, source: heed::Error) -> EngineError {
        let context = format!("{what} in {}", self.dir.display());
        match source {
            heed::Error::Mdb(MdbError::MapFull) => EngineError::Full {
                context,
                map_size: self.map_size,
            },
            heed::Error::Mdb(MdbError::Other(code)) if code == ENOSPC || code == EDQUOT => {
                EngineError::NoSpace { context }
            }
            heed::Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                EngineError::NoSpace { context }
            }
            source => EngineError::Heed { context, source },
        }
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, EngineError> {
        self.env
            .read_txn()
            .map_err(|e| self.error("starting a read transaction", e))
    }

    fn decode_key(&self, stored: &[u8]) -> Result<Bytes, EngineError> {
        match stored.split_first() {
            Some((&DATA_KEY_PREFIX, key)) => Ok(Bytes::copy_from_slice(key)),
            _ => Err(EngineError::Corrupt {
                location: format!("{} database \"data\"", self.dir.display()),
                reason: format!("stored key {stored:02x?} lacks the data key prefix"),
            }),
        }
    }

    /// `[begin, end)` over user keys as bounds over stored keys, or `None`
    /// when no stored key can lie in it.
    fn stored_bounds(&self, begin: &[u8], end: &[u8]) -> Option<StoredRange> {
        if begin >= end {
            return None;
        }
        let max = self.max_encoded_key;
        // A stored key is at most `max` bytes, so it is >= a longer bound
        // exactly when it is > the bound's first `max` bytes, and < a longer
        // bound exactly when it is <= them.
        let lower = match encode_key(begin) {
            key if key.len() > max => Bound::Excluded(key[..max].to_vec()),
            key => Bound::Included(key),
        };
        let upper = match encode_key(end) {
            key if key.len() > max => Bound::Included(key[..max].to_vec()),
            key => Bound::Excluded(key),
        };
        let empty = match (&lower, &upper) {
            (Bound::Included(l), Bound::Excluded(u)) => l >= u,
            (Bound::Included(l), Bound::Included(u)) => l > u,
            (Bound::Excluded(l), Bound::Excluded(u) | Bound::Included(u)) => l >= u,
            _ => false,
        };
        (!empty).then_some(StoredRange { lower, upper })
    }

    fn apply(&self, wtxn: &mut RwTxn<'_>, batch: WriteBatch) -> Result<(), EngineError> {
        let mut key_buf = Vec::new();
        for op in batch.ops() {
            match op {
                BatchOp::Set { key, value } => {
                    key_buf.clear();
                    key_buf.push(DATA_KEY_PREFIX);
                    key_buf.extend_from_slice(key);
                    self.data
                        .put(wtxn, &key_buf, value)
                        .map_err(|e| self.error("writing a key", e))?;
                }
                BatchOp::ClearRange { begin, end } => {
                    if let Some(range) = self.stored_bounds(begin, end) {
                        self.data
                            .delete_range(wtxn, &range.bounds())
                            .map_err(|e| self.error("clearing a range", e))?;
                    }
                }
                BatchOp::SetMetadata { name, value } => {
                    self.meta
                        .put(wtxn, name.as_bytes(), value)
                        .map_err(|e| self.error("writing metadata", e))?;
                }
            }
        }
        Ok(())
    }
}

impl KvEngine for HeedEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.check_poisoned()?;
        let stored = encode_key(key);
        if stored.len() > self.max_encoded_key {
            return Ok(None);
        }
        let rtxn = self.read_txn()?;
        let value = self
            .data
            .get(&rtxn, &stored)
            .map_err(|e| self.error("reading a key", e))?;
        Ok(value.map(Bytes::copy_from_slice))
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        self.check_poisoned()?;
        let Some(range) = self.stored_bounds(begin, end) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let bounds = range.bounds();
        let rtxn = self.read_txn()?;
        let scan_err = |e| self.error("scanning a range", e);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut push = |item: heed::Result<(&[u8], &[u8])>| -> Result<(), EngineError> {
            let (key, value) = item.map_err(scan_err)?;
            out.push((self.decode_key(key)?, Bytes::copy_from_slice(value)));
            Ok(())
        };
        if reverse {
            let iter = self.data.rev_range(&rtxn, &bounds).map_err(scan_err)?;
            iter.take(limit).try_for_each(&mut push)?;
        } else {
            let iter = self.data.range(&rtxn, &bounds).map_err(scan_err)?;
            iter.take(limit).try_for_each(&mut push)?;
        }
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.check_poisoned()?;
        batch.validate(self.max_key_len())?;
        let result = self
            .env
            .write_txn()
            .map_err(|e| self.error("starting a write transaction", e))
            .and_then(|mut wtxn| {
                self.apply(&mut wtxn, batch)?;
                wtxn.commit()
                    .map_err(|e| self.error("committing a write batch", e))
            });
        if let Err(e) = &result {
            if !e.is_out_of_space() {
                self.poison(e);
            }
        }
        result
    }

    fn metadata(&self, name: &str) -> Result<Option<Bytes>, EngineError> {
        self.check_poisoned()?;
        let rtxn = self.read_txn()?;
        let value = self
            .meta
            .get(&rtxn, name.as_bytes())
            .map_err(|e| self.error("reading metadata", e))?;
        Ok(value.map(Bytes::copy_from_slice))
    }

    fn max_key_len(&self) -> usize {
        self.max_encoded_key - 1
    }
}

fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(DATA_KEY_PREFIX);
    stored.extend_from_slice(key);
    stored
}

/// Bounds over stored keys, owned.
struct StoredRange {
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
}

impl StoredRange {
    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (borrow_bound(&self.lower), borrow_bound(&self.upper))
    }
}

fn borrow_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The "format" entry this build writes.
fn format_entry() -> Vec<u8> {
    let mut entry = FORMAT_MAGIC.to_vec();
    entry.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    entry
}

fn check_or_write_format(
    dir: &Path,
    wtxn: &mut RwTxn<'_>,
    data: &Database<Raw, Raw>,
    meta: &Database<Raw, Raw>,
) -> Result<(), OpenError> {
    let refuse = |reason: String| {
        OpenError::Engine(EngineError::UnsupportedFormat {
            location: dir.display().to_string(),
            reason,
        })
    };
    match meta.get(wtxn, FORMAT_METADATA.as_bytes())? {
        Some(entry) => {
            let (magic, version) = entry.split_at(entry.len().min(FORMAT_MAGIC.len()));
            if magic != FORMAT_MAGIC {
                return Err(refuse(format!(
                    "format entry {entry:02x?} does not start with {FORMAT_MAGIC:?}: not a teamlog storage engine"
                )));
            }
            let version = <[u8; 4]>::try_from(version).map_err(|_| {
                OpenError::Engine(EngineError::Corrupt {
                    location: dir.display().to_string(),
                    reason: format!("format entry {entry:02x?} has no 4-byte version"),
                })
            })?;
            match u32::from_le_bytes(version) {
                FORMAT_VERSION => Ok(()),
                newer if newer > FORMAT_VERSION => Err(refuse(format!(
                    "format version {newer} was written by a newer teamlog; this build reads {FORMAT_VERSION}"
                ))),
                older => Err(refuse(format!(
                    "format version {older} has no upgrade path to {FORMAT_VERSION}"
                ))),
            }
        }
        None if data.len(wtxn)? > 0 || meta.len(wtxn)? > 0 => {
            Err(OpenError::Engine(EngineError::Corrupt {
                location: dir.display().to_string(),
                reason: "the databases hold entries but no format entry".to_owned(),
            }))
        }
        None => Ok(meta.put(wtxn, FORMAT_METADATA.as_bytes(), &format_entry())?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: usize = 16 << 20;

    /// Rewrites the "format" entry directly, as a foreign or newer program
    /// would have left it.
    fn overwrite_format(dir: &Path, entry: &[u8]) {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(MAP).max_dbs(2);
        // SAFETY: the test's engine on this directory was dropped first.
        let env = unsafe { options.open(dir) }.unwrap();
        let rtxn = env.read_txn().unwrap();
        let meta: RawDb = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                let meta = opener.open_database::<Raw, Raw>(rtxn, Some("meta"))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(meta))
            })
            .unwrap()
            .unwrap_commit()
            .unwrap();
        let mut wtxn = env.write_txn().unwrap();
        meta.put(&mut wtxn, FORMAT_METADATA.as_bytes(), entry)
            .unwrap();
        wtxn.commit().unwrap();
    }

    fn unsupported(result: Result<HeedEngine, EngineError>) -> String {
        match result {
            Err(EngineError::UnsupportedFormat { reason, .. }) => reason,
            Err(e) => panic!("expected UnsupportedFormat, got {e}"),
            Ok(_) => panic!("expected UnsupportedFormat, but the engine opened"),
        }
    }

    #[test]
    fn new_environment_records_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let engine = HeedEngine::open(dir.path(), MAP).unwrap();
        assert_eq!(
            engine.metadata(FORMAT_METADATA).unwrap().as_deref(),
            Some(&format_entry()[..])
        );
        assert_eq!(engine.max_key_len(), 510);
    }

    #[test]
    fn foreign_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(HeedEngine::open(dir.path(), MAP).unwrap());
        overwrite_format(dir.path(), b"XXXX\x01\x00\x00\x00");
        let reason = unsupported(HeedEngine::open(dir.path(), MAP));
        assert!(reason.contains("not a teamlog storage engine"), "{reason}");
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(HeedEngine::open(dir.path(), MAP).unwrap());
        let mut entry = FORMAT_MAGIC.to_vec();
        entry.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        overwrite_format(dir.path(), &entry);
        let reason = unsupported(HeedEngine::open(dir.path(), MAP));
        assert!(reason.contains("newer teamlog"), "{reason}");
    }

    #[test]
    fn truncated_format_entry_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        drop(HeedEngine::open(dir.path(), MAP).unwrap());
        overwrite_format(dir.path(), b"TLKV\x01");
        assert!(matches!(
            HeedEngine::open(dir.path(), MAP),
            Err(EngineError::Corrupt { .. })
        ));
    }

    #[test]
    fn second_open_in_one_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = HeedEngine::open(dir.path(), MAP).unwrap();
        assert!(matches!(
            HeedEngine::open(dir.path(), MAP),
            Err(EngineError::Heed { .. })
        ));
    }

    #[test]
    fn bounds_longer_than_any_key_select_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let engine = HeedEngine::open(dir.path(), MAP).unwrap();
        let max = engine.max_key_len();
        let full = |fill: u8| Bytes::from(vec![fill; max]);
        let longer = |fill: u8| {
            let mut key = vec![fill; max];
            key.push(0);
            key
        };
        let mut batch = WriteBatch::new();
        for fill in [b'a', b'b', b'c'] {
            batch.set(full(fill), Bytes::from_static(b"v"));
        }
        engine.write(batch).unwrap();
        // [a.., b..\0) holds a.. and b..; (b..\0 lies just past b..).
        let keys: Vec<Bytes> = engine
            .range(&full(b'a'), &longer(b'b'), 10, false)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![full(b'a'), full(b'b')]);
        // [a..\0, c..) holds only b.. .
        let keys: Vec<Bytes> = engine
            .range(&longer(b'a'), &full(b'c'), 10, true)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![full(b'b')]);
        assert!(engine
            .range(&longer(b'a'), &longer(b'a'), 10, false)
            .unwrap()
            .is_empty());
        assert_eq!(engine.get(&longer(b'a')).unwrap(), None);

        let mut clear = WriteBatch::new();
        clear.clear_range(Bytes::from(longer(b'a')), Bytes::from(longer(b'b')));
        engine.write(clear).unwrap();
        assert!(engine.get(&full(b'a')).unwrap().is_some());
        assert_eq!(engine.get(&full(b'b')).unwrap(), None);
        assert!(engine.get(&full(b'c')).unwrap().is_some());
    }
}
