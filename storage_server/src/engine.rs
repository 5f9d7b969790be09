//! The narrow key-value interface under the versioned store.
//!
//! A [`KvEngine`] holds the durable state of one storage server: the
//! key-value pairs as of the durable version, plus a few named metadata
//! entries (the durable version itself, the team set, shard assignments).
//! It knows nothing of versions: the MVCC window above it does.
//!
//! ```text
//!   VersionedStore ──get/range──▶ KvEngine ──▶ HeedEngine  <dir>/data.mdb ("data", "meta")
//!        │                            ▲    └─▶ MemEngine   BTreeMaps behind a Mutex
//!        └──flush: one WriteBatch─────┘
//!              [clear_range.., set.., set_metadata..]  applied atomically, synced
//! ```
//!
//! Contract: `write` applies its batch atomically and durably before it
//! returns. After a write fails the engine is *poisoned*: the state on disk
//! may be anything a crash could leave, so every later call returns
//! [`EngineError::Poisoned`] and nothing is retried (the process must reopen
//! the engine, which recovers the last committed batch). One failure is
//! not: a write refused for lack of space ([`EngineError::is_out_of_space`])
//! changed nothing, so the engine stays usable and the batch may be written
//! again once there is room.

use bytes::Bytes;

/// The metadata entry each engine reserves for its on-disk format; a batch
/// may not write it.
pub const FORMAT_METADATA: &str = "format";

/// Durable key-value state as of one version (the durable version), plus
/// small metadata.
///
/// All methods take `&self` (implementations use interior mutability), so
/// readers on other threads can read while one writer writes.
pub trait KvEngine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// Keys in `[begin, end)`, ascending or descending, at most `limit` pairs.
    /// Nothing when `begin >= end` or `limit == 0`.
    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, EngineError>;
    /// Applies the batch atomically and durably (one transaction, synced)
    /// before returning. A batch that fails validation changes nothing and
    /// does not poison; any later failure poisons the engine.
    fn write(&self, batch: WriteBatch) -> Result<(), EngineError>;
    /// The metadata entry `name`, if any.
    fn metadata(&self, name: &str) -> Result<Option<Bytes>, EngineError>;
    /// The longest key `write` accepts in a `set`. Range bounds may be
    /// longer.
    fn max_key_len(&self) -> usize;
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Set {
        key: Bytes,
        value: Bytes,
    },
    /// Removes every key in `[begin, end)`; nothing when `begin >= end`.
    ClearRange {
        begin: Bytes,
        end: Bytes,
    },
    SetMetadata {
        name: String,
        value: Bytes,
    },
}

/// Ordered operations applied together by [`KvEngine::write`]; a later op
/// sees the effect of earlier ones (a clear then a set of a key leaves the
/// set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn set(&mut self, key: Bytes, value: Bytes) -> &mut Self {
        self.ops.push(BatchOp::Set { key, value });
        self
    }

    pub fn clear_range(&mut self, begin: Bytes, end: Bytes) -> &mut Self {
        self.ops.push(BatchOp::ClearRange { begin, end });
        self
    }

    pub fn set_metadata(&mut self, name: &str, value: Bytes) -> &mut Self {
        self.ops.push(BatchOp::SetMetadata {
            name: name.to_owned(),
            value,
        });
        self
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks what every engine refuses, before anything is written: keys
    /// longer than `max_key_len` and writes of the reserved format entry.
    pub fn validate(&self, max_key_len: usize) -> Result<(), EngineError> {
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                BatchOp::Set { key, .. } if key.len() > max_key_len => {
                    return Err(EngineError::KeyTooLarge {
                        len: key.len(),
                        max: max_key_len,
                    });
                }
                BatchOp::SetMetadata { name, .. } if name == FORMAT_METADATA => {
                    return Err(EngineError::InvalidBatch(format!(
                        "op {i} writes the reserved metadata entry {FORMAT_METADATA:?}"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl EngineError {
    /// A write refused for lack of room (the disk, a quota, or the map):
    /// it changed nothing and did not poison the engine.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, EngineError::Full { .. } | EngineError::NoSpace { .. })
    }
}

/// Why a [`KvEngine`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// LMDB failed; `context` names the operation and the path.
    #[error("{context}: {source}")]
    Heed {
        context: String,
        #[source]
        source: heed::Error,
    },
    /// A file-system call failed; `context` names the operation and path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The storage map is full: reopen with a larger map size.
    #[error("{context}: the map of {map_size} bytes is full")]
    Full { context: String, map_size: usize },
    /// The disk (or quota) has no room for the write; nothing was written.
    #[error("{context}: no space left on the disk")]
    NoSpace { context: String },
    /// Stored bytes do not decode: the files were damaged or written by
    /// something else.
    #[error("corrupt storage at {location}: {reason}")]
    Corrupt { location: String, reason: String },
    /// The files hold a format this build does not read (foreign or newer).
    #[error("unsupported storage format at {location}: {reason}")]
    UnsupportedFormat { location: String, reason: String },
    /// An earlier write failed; the engine refuses everything until reopened.
    #[error("engine poisoned by an earlier failed write: {cause}")]
    Poisoned { cause: String },
    /// A key longer than the engine stores; the batch was refused whole.
    #[error("key of {len} bytes exceeds the engine's limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// The batch breaks a rule of the interface; it was refused whole.
    #[error("invalid write batch: {0}")]
    InvalidBatch(String),
    /// A failure injected by a test engine.
    #[error("injected fault: {0}")]
    InjectedFault(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keeps_op_order() {
        let mut batch = WriteBatch::new();
        batch
            .clear_range(Bytes::from_static(b"a"), Bytes::from_static(b"z"))
            .set(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .set_metadata("durable", Bytes::from_static(b"1"));
        assert_eq!(batch.len(), 3);
        assert!(matches!(batch.ops()[0], BatchOp::ClearRange { .. }));
        assert!(matches!(batch.ops()[1], BatchOp::Set { .. }));
        assert!(matches!(batch.ops()[2], BatchOp::SetMetadata { .. }));
    }

    #[test]
    fn validation_refuses_long_keys_and_the_format_entry() {
        let mut long = WriteBatch::new();
        long.set(Bytes::from(vec![b'k'; 9]), Bytes::new());
        assert!(matches!(
            long.validate(8),
            Err(EngineError::KeyTooLarge { len: 9, max: 8 })
        ));
        assert!(long.validate(9).is_ok());

        let mut format = WriteBatch::new();
        format.set_metadata(FORMAT_METADATA, Bytes::new());
        assert!(matches!(
            format.validate(8),
            Err(EngineError::InvalidBatch(_))
        ));
    }

    #[test]
    fn long_range_bounds_are_allowed() {
        let mut batch = WriteBatch::new();
        batch.clear_range(Bytes::from(vec![0; 100]), Bytes::from(vec![1; 100]));
        assert!(batch.validate(8).is_ok());
    }
}
