//! [`LogStore`] on a directory of preallocated files, one per segment.
//!
//! ```text
//!   <dir>/00000000000000000001.seg   capacity bytes, zero-filled at creation
//!   <dir>/00000000000000000002.seg
//!   <dir>/00000000000000000003.seg.tmp   (being created; deleted on open)
//!   <dir>/spare-00000000000000000007.seg (a removed or pre-filled file, reused by create)
//! ```
//!
//! Creation renames a spare file into place when one of the right size
//! exists; otherwise it writes zeros into `<id>.seg.tmp`, fsyncs it and
//! renames it into place. Either way the directory is fsynced, so a segment
//! either exists with its full capacity or not at all after a crash.
//!
//! Spares make creation cheap: `remove` renames up to [`MAX_SPARES`] files to
//! spares instead of deleting them (recycling, as in most write-ahead logs),
//! and whenever `create` leaves no spare, a background thread zero-fills one,
//! so the writer does not wait for a 64 MiB fill at every segment roll. A
//! recycled file still holds the old segment's bytes: the log never trusts
//! bytes it did not write (records carry a sequence number that must be the
//! next one), so stale content reads as the end of the log.
//!
//! Why zero-fill rather than `fallocate`: on ext4 `fallocate` leaves the
//! extents "unwritten", so the first write into each block must convert the
//! extent and every such fdatasync also commits metadata, which made small
//! synced appends slower (BENCHMARKS.md, TLog section). Zero-filling costs
//! one sequential write of the segment at creation, paid once per segment
//! instead of on every group commit.
//!
//! Reads use positioned I/O on shared `Arc<File>` handles, so readers on
//! other threads never contend with the writer for a file offset.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use proto::scatter::MAX_SLICES;

use crate::store::{check_bounds, LogStore, SegmentId, StoreError};

const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";
const ZERO_CHUNK: usize = 1 << 20;
const SPARE_PREFIX: &str = "spare-";
/// Spare files kept for reuse; more removed segments are deleted.
pub const MAX_SPARES: usize = 2;

struct SegmentFile {
    file: Arc<File>,
    capacity: u64,
}

/// Segments stored as files in one directory.
pub struct FileStore {
    dir: PathBuf,
    segments: RwLock<BTreeMap<SegmentId, SegmentFile>>,
    spares: Arc<Spares>,
    filler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for FileStore {
    /// Waits for a background fill, so no thread writes into the directory
    /// after the store is gone.
    fn drop(&mut self) {
        let filler = self
            .filler
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(filler) = filler {
            let _ = filler.join();
        }
    }
}

/// Files ready to become segments, and the background filler's state.
struct Spares {
    dir: PathBuf,
    ready: Mutex<Vec<(PathBuf, u64)>>,
    next_name: AtomicU64,
    filling: AtomicBool,
}

impl Spares {
    fn take(&self, capacity: u64) -> Option<PathBuf> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let at = ready.iter().position(|(_, c)| *c == capacity)?;
        Some(ready.swap_remove(at).0)
    }

    fn count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn new_path(&self) -> PathBuf {
        let n = self.next_name.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{SPARE_PREFIX}{n:020}{SEGMENT_SUFFIX}"))
    }

    /// Zero-fills a new spare on a background thread unless one is running.
    fn refill(self: &Arc<Self>, capacity: u64) -> Option<std::thread::JoinHandle<()>> {
        if self.filling.swap(true, Ordering::AcqRel) {
            return None;
        }
        let spares = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("tlog-spare-fill".into())
            .spawn(move || {
                let path = spares.new_path();
                match zero_filled(&spares.dir, &path, capacity) {
                    Ok(_) => {
                        let mut ready = spares.ready.lock().unwrap_or_else(|e| e.into_inner());
                        if ready.len() < MAX_SPARES {
                            ready.push((path, capacity));
                        } else {
                            // Removals filled the pool meanwhile.
                            let _ = fs::remove_file(&path);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not prepare a spare segment"),
                }
                spares.filling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.filling.store(false, Ordering::Release);
        }
        spawned.ok()
    }
}

/// Writes a zero-filled file of `capacity` bytes at `path` (through a
/// temporary name, fsynced, then the directory fsynced) and returns it open.
fn zero_filled(dir: &Path, path: &Path, capacity: u64) -> Result<File, StoreError> {
    let tmp = path.with_extension("seg.tmp");
    let filled = fill_zeros(&tmp, capacity);
    if filled.is_err() {
        // Give the space back: a full disk is the usual reason, and the
        // next attempt starts over anyway.
        let _ = fs::remove_file(&tmp);
    }
    let file = filled?;
    fs::rename(&tmp, path)
        .map_err(|e| io_err(format!("rename {} to {}", tmp.display(), path.display()), e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `capacity` zero bytes to a new file at `tmp` and syncs it.
fn fill_zeros(tmp: &Path, capacity: u64) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| io_err(format!("create {}", tmp.display()), e))?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut left = capacity;
    while left > 0 {
        let n = left.min(ZERO_CHUNK as u64) as usize;
        file.write_all(&zeros[..n])
            .map_err(|e| io_err(format!("preallocate {}", tmp.display()), e))?;
        left -= n as u64;
    }
    file.sync_all()
        .map_err(|e| io_err(format!("sync {}", tmp.display()), e))?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let what = || format!("sync directory {}", dir.display());
    let handle = File::open(dir).map_err(|e| io_err(what(), e))?;
    handle.sync_all().map_err(|e| io_err(what(), e))
}

impl FileStore {
    /// Opens (creating if needed) the directory and every `<id>.seg` in it;
    /// deletes leftovers of a creation interrupted by a crash.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|e| io_err(format!("create directory {}", dir.display()), e))?;
        let entries =
            fs::read_dir(dir).map_err(|e| io_err(format!("list {}", dir.display()), e))?;
        let mut segments = BTreeMap::new();
        let mut spares = Vec::new();
        let mut next_spare = 0;
        let mut removed_tmp = false;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
                if parse_id(stem.strip_prefix(SPARE_PREFIX).unwrap_or(stem)).is_some() {
                    let path = entry.path();
                    match fs::remove_file(&path) {
                        Ok(()) => removed_tmp = true,
                        // Gone already: a filler of an earlier store over
                        // this directory, still finishing, renamed it.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(format!("remove {}", path.display()), e)),
                    }
                }
                continue;
            }
            let spare = name
                .strip_prefix(SPARE_PREFIX)
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(parse_id);
            if let Some(n) = spare {
                let path = entry.path();
                let len = fs::metadata(&path)
                    .map_err(|e| io_err(format!("stat {}", path.display()), e))?
                    .len();
                spares.push((path, len));
                next_spare = next_spare.max(n + 1);
                continue;
            }
            let Some(id) = name.strip_suffix(SEGMENT_SUFFIX).and_then(parse_id) else {
                continue;
            };
            let path = entry.path();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(format!("open {}", path.display()), e))?;
            let capacity = file
                .metadata()
                .map_err(|e| io_err(format!("stat {}", path.display()), e))?
                .len();
            segments.insert(
                id,
                SegmentFile {
                    file: Arc::new(file),
                    capacity,
                },
            );
        }
        let store = FileStore {
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            spares: Arc::new(Spares {
                dir: dir.to_path_buf(),
                ready: Mutex::new(spares),
                next_name: AtomicU64::new(next_spare),
                filling: AtomicBool::new(false),
            }),
            filler: Mutex::new(None),
        };
        if removed_tmp {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of segment `id`'s file (whether or not it exists).
    pub fn path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
    }

    fn handle(&self, id: SegmentId) -> Result<(Arc<File>, u64), StoreError> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let seg = segments.get(&id).ok_or(StoreError::NoSuchSegment(id))?;
        Ok((Arc::clone(&seg.file), seg.capacity))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        sync_dir(&self.dir)
    }

    /// Spare files ready for reuse (for tests and status).
    pub fn spare_count(&self) -> usize {
        self.spares.count()
    }
}

impl LogStore for FileStore {
    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        Ok(segments.keys().copied().collect())
    }

    fn create(&self, id: SegmentId, capacity: u64) -> Result<(), StoreError> {
        // The fill runs without the lock so readers of other segments are not
        // stalled for its duration; only the single writer creates.
        let path = self.path(id);
        if self.handle(id).is_ok() || path.exists() {
            return Err(StoreError::AlreadyExists(id));
        }
        let file = match self.spares.take(capacity) {
            Some(spare) => {
                fs::rename(&spare, &path).map_err(|e| {
                    io_err(
                        format!("rename {} to {}", spare.display(), path.display()),
                        e,
                    )
                })?;
                self.sync_dir()?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(format!("open {}", path.display()), e))?
            }
            None => zero_filled(&self.dir, &path, capacity)?,
        };
        if self.spares.count() == 0 {
            if let Some(started) = self.spares.refill(capacity) {
                let mut filler = self.filler.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(previous) = filler.replace(started) {
                    // `filling` was clear, so the previous fill has finished.
                    let _ = previous.join();
                }
            }
        }
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        segments.insert(
            id,
            SegmentFile {
                file: Arc::new(file),
                capacity,
            },
        );
        Ok(())
    }

    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let (file, capacity) = self.handle(id)?;
        check_bounds(id, offset, data.len() as u64, capacity, true)?;
        file.write_all_at(data, offset).map_err(|e| {
            io_err(
                format!(
                    "write {} bytes at {offset} to {}",
                    data.len(),
                    self.describe(id)
                ),
                e,
            )
        })
    }

    fn write_vectored_at(
        &self,
        id: SegmentId,
        offset: u64,
        parts: &[IoSlice<'_>],
    ) -> Result<(), StoreError> {
        let (file, capacity) = self.handle(id)?;
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        check_bounds(id, offset, total, capacity, true)?;
        let mut slices = parts.to_vec();
        let mut rest = &mut slices[..];
        let mut at = offset;
        while !rest.is_empty() {
            let batch = rest.len().min(MAX_SLICES);
            let written = match rustix::io::pwritev(&*file, &rest[..batch], at) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => Err(io::Error::from(e)),
            }
            .map_err(|e| {
                io_err(
                    format!("write {total} bytes at {offset} to {}", self.describe(id)),
                    e,
                )
            })?;
            IoSlice::advance_slices(&mut rest, written);
            at += written as u64;
        }
        Ok(())
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let (file, capacity) = self.handle(id)?;
        check_bounds(id, offset, buf.len() as u64, capacity, false)?;
        let want = (buf.len() as u64).min(capacity - offset) as usize;
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io_err(
                        format!("read {want} bytes at {offset} from {}", self.describe(id)),
                        e,
                    ))
                }
            }
        }
        Ok(done)
    }

    fn sync(&self, id: SegmentId) -> Result<(), StoreError> {
        let (file, _) = self.handle(id)?;
        file.sync_data().map_err(|source| StoreError::SyncFailed {
            segment: id,
            source,
        })
    }

    fn remove(&self, id: SegmentId) -> Result<(), StoreError> {
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        if !segments.contains_key(&id) {
            return Err(StoreError::NoSuchSegment(id));
        }
        let path = self.path(id);
        let capacity = segments[&id].capacity;
        let mut ready = self.spares.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.len() < MAX_SPARES {
            let spare = self.spares.new_path();
            fs::rename(&path, &spare).map_err(|e| {
                io_err(
                    format!("rename {} to {}", path.display(), spare.display()),
                    e,
                )
            })?;
            ready.push((spare, capacity));
        } else {
            fs::remove_file(&path).map_err(|e| io_err(format!("remove {}", path.display()), e))?;
        }
        drop(ready);
        segments.remove(&id);
        drop(segments);
        self.sync_dir()
    }

    fn capacity(&self, id: SegmentId) -> Result<u64, StoreError> {
        Ok(self.handle(id)?.1)
    }

    fn describe(&self, id: SegmentId) -> String {
        self.path(id).display().to_string()
    }
}

/// Parses a file stem of exactly 20 decimal digits.
fn parse_id(stem: &str) -> Option<SegmentId> {
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

fn io_err(what: String, source: io::Error) -> StoreError {
    StoreError::Io { what, source }
}
