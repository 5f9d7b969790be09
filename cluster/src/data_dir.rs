//! A process's data directory: one process holds it at a time, and the small
//! files written there (addresses, cluster files) are replaced atomically
//! and durably.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive lock on a data dir (`flock` on `DIR/LOCK`), held until
/// dropped. The kernel releases it when the process dies, so a crash never
/// leaves a stale lock behind.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if missing and locks it; fails at once, without
    /// waiting, when another process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        let path = dir.join("LOCK");
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(DataDirError::InUse {
                path: dir.to_path_buf(),
            }),
            Err(errno) => Err(DataDirError::Io {
                path,
                source: errno.into(),
            }),
        }
    }
}

/// Replaces `path` with `contents` so that a reader, or a restart after a
/// crash, sees either the old file or the whole new one: written to a
/// temporary file beside it, synced, renamed over it, and the directory
/// synced.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io_error(dir))?;
    file.write_all(contents).map_err(io_error(file.path()))?;
    file.as_file().sync_all().map_err(io_error(file.path()))?;
    file.persist(path).map_err(|e| DataDirError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_held_by_one_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(DataDirError::InUse { .. })
        ));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("address");
        write_atomically(&path, b"first, and longer").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_atomic_write_into_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        assert!(matches!(
            write_atomically(&path, b"x"),
            Err(DataDirError::Io { .. })
        ));
    }
}
