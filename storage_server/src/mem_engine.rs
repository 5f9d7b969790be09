//! In-memory [`KvEngine`] for tests and simulation.
//!
//! Two `BTreeMap`s (data and metadata) behind one `Mutex`. A batch is
//! validated first and then applied under the lock, so it is atomic; there
//! is no unsynced state to lose, so a "restart" is a new `VersionedStore`
//! over the same engine. `fail_next_write` makes the next write fail without
//! changing anything and poison the engine, as a failed LMDB commit does;
//! `set_full` makes writes fail for lack of space, which does not poison.
//!
//! ```text
//!   write(batch) ──validate──▶ lock ──▶ apply ops in order ──▶ data / meta
//!                                  └─ fail_next_write set? ──▶ poisoned, nothing applied
//! ```

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::engine::{BatchOp, EngineError, KvEngine, WriteBatch};

/// LMDB's default key limit less the byte `HeedEngine` prefixes to every
/// key, so that tests behave alike on both engines.
pub const DEFAULT_MAX_KEY_LEN: usize = 510;

#[derive(Default)]
struct State {
    data: BTreeMap<Bytes, Bytes>,
    meta: BTreeMap<String, Bytes>,
    poisoned: Option<String>,
    fail_next_write: bool,
    full: bool,
    /// A write was refused for lack of space since `full` was last set.
    refused_for_space: bool,
}

/// An engine whose state lives in memory.
pub struct MemEngine {
    state: Mutex<State>,
    max_key_len: usize,
}

impl Default for MemEngine {
    fn default() -> Self {
        MemEngine::new()
    }
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> MemEngine {
        MemEngine::with_max_key_len(DEFAULT_MAX_KEY_LEN)
    }

    /// An empty engine refusing keys longer than `max_key_len`.
    pub fn with_max_key_len(max_key_len: usize) -> MemEngine {
        MemEngine {
            state: Mutex::new(State::default()),
            max_key_len,
        }
    }

    /// Makes the next `write` fail without applying anything and poison the
    /// engine.
    pub fn fail_next_write(&self) {
        self.lock().fail_next_write = true;
    }

    /// While `full`, writes fail as on a full disk: nothing is applied and
    /// the engine is not poisoned.
    pub fn set_full(&self, full: bool) {
        let mut state = self.lock();
        state.full = full;
        state.refused_for_space = false;
    }

    /// Whether a write was refused for lack of space since the last
    /// [`MemEngine::set_full`]: the server met the full disk.
    pub fn refused_for_space(&self) -> bool {
        self.lock().refused_for_space
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the engine from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless poisoned.
    fn usable(&self) -> Result<MutexGuard<'_, State>, EngineError> {
        let state = self.lock();
        match &state.poisoned {
            Some(cause) => Err(EngineError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(state),
        }
    }
}

impl KvEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.usable()?.data.get(key).cloned())
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        let state = self.usable()?;
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let range = state
            .data
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let pair = |(k, v): (&Bytes, &Bytes)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        })
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut state = self.usable()?;
        batch.validate(self.max_key_len)?;
        if state.full {
            state.refused_for_space = true;
            return Err(EngineError::NoSpace {
                context: "writing a batch to the memory engine".into(),
            });
        }
        if std::mem::take(&mut state.fail_next_write) {
            let cause = "write failed by fail_next_write".to_owned();
            state.poisoned = Some(cause.clone());
            return Err(EngineError::InjectedFault(cause));
        }
        for op in batch.into_ops() {
            match op {
                BatchOp::Set { key, value } => {
                    state.data.insert(key, value);
                }
                BatchOp::ClearRange { begin, end } => {
                    if begin >= end {
                        continue;
                    }
                    let doomed: Vec<Bytes> = state
                        .data
                        .range::<[u8], _>((Bound::Included(&begin[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        state.data.remove(&key);
                    }
                }
                BatchOp::SetMetadata { name, value } => {
                    state.meta.insert(name, value);
                }
            }
        }
        Ok(())
    }

    fn metadata(&self, name: &str) -> Result<Option<Bytes>, EngineError> {
        Ok(self.usable()?.meta.get(name).cloned())
    }

    fn max_key_len(&self) -> usize {
        self.max_key_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn injected_failure_applies_nothing_and_poisons() {
        let engine = MemEngine::new();
        engine.fail_next_write();
        let mut batch = WriteBatch::new();
        batch.set(b("k"), b("v"));
        assert!(matches!(
            engine.write(batch.clone()),
            Err(EngineError::InjectedFault(_))
        ));
        assert!(matches!(
            engine.get(b"k"),
            Err(EngineError::Poisoned { .. })
        ));
        assert!(matches!(
            engine.write(batch),
            Err(EngineError::Poisoned { .. })
        ));
    }

    #[test]
    fn refused_batch_does_not_poison() {
        let engine = MemEngine::with_max_key_len(2);
        let mut batch = WriteBatch::new();
        batch.set(b("ok"), b("v")).set(b("long"), b("v"));
        assert!(matches!(
            engine.write(batch),
            Err(EngineError::KeyTooLarge { len: 4, max: 2 })
        ));
        assert_eq!(engine.get(b"ok").unwrap(), None);
    }
}
