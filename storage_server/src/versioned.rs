//! The versioned store: reads at a version over the MVCC window and the
//! engine, and the flush that moves old versions into the engine.
//!
//! ```text
//!   versions:   ... durable ]( window ............... applied ]( in progress
//!                    │            │                        │
//!   engine state at ─┘            │      apply(v, m) ──────┴──▶ window
//!                                 │      set_applied(v): reads up to v allowed
//!   read(k, v), durable <= v <= applied = engine + window mutations <= v
//!
//!   flush: versions <= D ──▶ one WriteBatch [clears, sets, durable_version=D, extra..]
//!          ──▶ engine.write (one transaction) ──▶ window drops them, durable = D
//! ```
//!
//! The durable version is written in the same batch as the data it
//! describes, so a crash leaves the engine at exactly some earlier durable
//! version: replaying the team streams from there reproduces the rest.
//!
//! A range read merges the window's chains with the engine's keys, fetched
//! in chunks that grow while cleared or overridden keys are skipped, and
//! jumps over whole cleared spans instead of reading through them, so a
//! read returns `limit` results whenever that many exist without reading
//! the engine more than it needs.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use proto::{Mutation, Version};

use crate::copied::CopiedRanges;
use crate::engine::{EngineError, KvEngine, WriteBatch, FORMAT_METADATA};
use crate::sample::ByteSample;
use crate::window::{Chain, Window, WindowValue};

/// The metadata entry holding the durable version (u64 little-endian).
pub const DURABLE_VERSION_METADATA: &str = "durable_version";

/// The metadata entry holding the oldest version reads may be served at
/// when it lies above the durable version (u64 little-endian): a rebuilt
/// store's engine holds a copy newer than its durable version.
pub const READABLE_FROM_METADATA: &str = "readable_from";

/// The metadata entry listing the ranges a rebuild copied and the version
/// each was read at ([`CopiedRanges`]): the log's redo skips what they hold.
pub const COPIED_RANGES_METADATA: &str = "copied_ranges";

/// Most engine pairs one range read fetches at a time.
const MAX_ENGINE_CHUNK: usize = 1024;

/// How much the window may hold before it should be flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Versions kept above the durable version (1,000,000 per second).
    pub max_versions: u64,
    /// Estimated heap bytes the window may hold.
    pub max_bytes: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            max_versions: 5_000_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Why applying or flushing failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Mutations must come in version order, after the applied version.
    #[error("mutation at version {version} cannot follow version {last}")]
    VersionOrder { version: Version, last: Version },
    /// The engine cannot store a key this long.
    #[error("key of {len} bytes exceeds the engine's limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// A caller's metadata entry used a name the store or engine owns.
    #[error("metadata entry {0:?} is reserved")]
    ReservedMetadata(String),
    /// A rollback below what is (or is being made) durable.
    #[error("cannot roll back to {version}: {durable} is durable")]
    RollbackBelowDurable { version: Version, durable: Version },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The version is below the window: its state no longer exists.
    #[error("version {version} is older than the oldest readable version {oldest}")]
    TooOld { version: Version, oldest: Version },
    /// The version is not applied yet.
    #[error("version {version} is newer than the applied version {applied}")]
    FutureVersion { version: Version, applied: Version },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Key-value state at every version from the durable version to the
/// applied version.
pub struct VersionedStore<E: KvEngine> {
    engine: Arc<E>,
    window: Window,
    config: WindowConfig,
    durable: Version,
    applied: Version,
    /// Versions above this are not known committed: a recovery may still
    /// roll them back, so flushes keep them out of the engine.
    flush_limit: Version,
    /// The version of the newest applied mutation (may exceed `applied`
    /// while its version is in progress).
    newest_mutation: Version,
    /// Reads below this are refused even above the durable version (see
    /// [`READABLE_FROM_METADATA`]).
    readable_from: Version,
    /// The version a prepared flush is writing through: reads below it are
    /// refused, as the engine may already hold the state after it.
    flushing: Option<Version>,
    /// What a rebuild copied, while the log's redo has not passed it.
    copied: CopiedRanges,
    /// The newest version `copied` holds anything at.
    copied_through: Version,
    /// Sampled keys of the newest state, for the data distributor.
    byte_sample: ByteSample,
}

/// A flush whose batch is built: write it to the engine without holding
/// the store (reads and applies go on), then `finish_flush`.
pub struct PreparedFlush {
    plan: crate::window::FlushPlan,
    batch: Option<WriteBatch>,
    through: Version,
}

impl PreparedFlush {
    /// The version this flush makes durable.
    pub fn through(&self) -> Version {
        self.through
    }

    /// Writes the batch (one transaction, durable on return).
    pub fn write<E: KvEngine>(&mut self, engine: &E) -> Result<(), StoreError> {
        if let Some(batch) = self.batch.take() {
            engine.write(batch)?;
        }
        Ok(())
    }
}

/// How many pairs [`sample_engine`] reads at a time.
const SAMPLE_PAGE: usize = 1024;

/// The byte sample of what the engine holds, read through in pages.
fn sample_engine<E: KvEngine + ?Sized>(engine: &E) -> Result<ByteSample, StoreError> {
    let mut sample = ByteSample::default();
    let mut from = Bytes::new();
    loop {
        let page = engine.range(&from, proto::system_keys::USER_KEYS_END, SAMPLE_PAGE, false)?;
        for (key, value) in &page {
            sample.set(key, value.len());
        }
        match page.last() {
            Some((last, _)) if page.len() == SAMPLE_PAGE => from = proto::key_after(last),
            _ => return Ok(sample),
        }
    }
}

/// A version kept in metadata entry `name` (u64 little-endian); 0 if none.
pub fn version_metadata<E: KvEngine + ?Sized>(
    engine: &E,
    name: &str,
) -> Result<Version, StoreError> {
    match engine.metadata(name)? {
        None => Ok(Version::ZERO),
        Some(entry) => {
            let bytes = <[u8; 8]>::try_from(&entry[..]).map_err(|_| EngineError::Corrupt {
                location: format!("metadata entry {name:?}"),
                reason: format!("{} bytes where 8 were expected", entry.len()),
            })?;
            Ok(Version(u64::from_le_bytes(bytes)))
        }
    }
}

impl<E: KvEngine> VersionedStore<E> {
    /// Opens over `engine`; durable version read from engine metadata (0 if
    /// new).
    pub fn open(engine: Arc<E>, config: WindowConfig) -> Result<Self, StoreError> {
        let durable = version_metadata(engine.as_ref(), DURABLE_VERSION_METADATA)?;
        let readable_from = version_metadata(engine.as_ref(), READABLE_FROM_METADATA)?;
        let copied = match engine.metadata(COPIED_RANGES_METADATA)? {
            None => CopiedRanges::default(),
            Some(entry) => CopiedRanges::decode(&entry).map_err(|e| EngineError::Corrupt {
                location: format!("metadata entry {COPIED_RANGES_METADATA:?}"),
                reason: e.to_string(),
            })?,
        };
        // Dropped at the first mutation past it (every one after a durable
        // version at or above it).
        let copied_through = copied.newest();
        let byte_sample = sample_engine(engine.as_ref())?;
        Ok(VersionedStore {
            engine,
            window: Window::new(),
            config,
            durable,
            applied: durable,
            flush_limit: Version::MAX,
            newest_mutation: durable,
            readable_from,
            flushing: None,
            copied,
            copied_through,
            byte_sample,
        })
    }

    /// Applies one mutation at `version`. Versions must not decrease and
    /// must be above the applied version; within one version mutations
    /// apply in call order. After a rebuild, what a copied page already
    /// holds is skipped (see [`CopiedRanges`]).
    pub fn apply(&mut self, version: Version, mutation: &Mutation) -> Result<(), StoreError> {
        if version <= self.applied || version < self.newest_mutation {
            return Err(StoreError::VersionOrder {
                version,
                last: self.applied.max(self.newest_mutation),
            });
        }
        self.write(version, mutation)
    }

    /// Whether [`apply_at_applied`](Self::apply_at_applied) may write now:
    /// the applied version is neither durable nor being flushed.
    pub fn writable_at_applied(&self) -> bool {
        self.applied > self.durable.max(self.flushing.unwrap_or(Version::ZERO))
    }

    /// Applies `mutation` at the applied version itself, after what that
    /// version already holds. For what this server writes of its own
    /// accord (a copied page, a range given away) in ranges it serves no
    /// reads of at that version; a rollback below it takes it back.
    pub fn apply_at_applied(&mut self, mutation: &Mutation) -> Result<(), StoreError> {
        if !self.writable_at_applied() {
            return Err(StoreError::VersionOrder {
                version: self.applied,
                last: self.flushing.unwrap_or(self.durable).max(self.durable),
            });
        }
        self.write(self.applied, mutation)
    }

    fn write(&mut self, version: Version, mutation: &Mutation) -> Result<(), StoreError> {
        if version > self.copied_through && !self.copied.is_empty() {
            self.copied = CopiedRanges::default();
        }
        match mutation {
            Mutation::SetValue { key, value } => {
                self.check_key_len(key)?;
                if !self.copied.holds(key, version) {
                    self.window.set(version, key, value);
                    self.byte_sample.set(key, value.len());
                }
            }
            Mutation::ClearRange { begin, end } if self.copied.is_empty() => {
                self.window.clear(version, begin, end);
                self.byte_sample.clear(begin, end);
            }
            Mutation::ClearRange { begin, end } => {
                for (begin, end) in self.copied.not_held(begin, end, version) {
                    self.window.clear(version, &begin, &end);
                    self.byte_sample.clear(&begin, &end);
                }
            }
            Mutation::AppendIfFits { key, suffix } => {
                self.check_key_len(key)?;
                if !self.copied.holds(key, version) {
                    let latest = self.value_at(key, Version::MAX)?;
                    if let Some(appended) = proto::append_if_fits(latest.as_deref(), suffix) {
                        self.window.set(version, key, &appended);
                        self.byte_sample.set(key, appended.len());
                    }
                }
            }
        }
        self.newest_mutation = version;
        Ok(())
    }

    fn check_key_len(&self, key: &[u8]) -> Result<(), StoreError> {
        let max = self.engine.max_key_len();
        if key.len() > max {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    /// Marks `version` fully applied (even if it had no mutations for this
    /// server): reads at or below it may be served. Lower versions than the
    /// applied one change nothing.
    pub fn set_applied(&mut self, version: Version) {
        self.applied = self.applied.max(version);
    }

    pub fn applied_version(&self) -> Version {
        self.applied
    }

    pub fn durable_version(&self) -> Version {
        self.durable
    }

    /// The oldest version reads can be served at: the durable version (the
    /// engine holds exactly that state), or above it while a flush is
    /// being written or a rebuilt copy is newer.
    pub fn oldest_readable(&self) -> Version {
        self.flushing
            .map_or(self.durable, |f| f.max(self.durable))
            .max(self.readable_from)
    }

    /// Whether reads at `version` can be served now.
    pub fn check_readable(&self, version: Version) -> Result<(), ReadError> {
        let oldest = self.oldest_readable();
        if version < oldest {
            return Err(ReadError::TooOld { version, oldest });
        }
        if version > self.applied {
            return Err(ReadError::FutureVersion {
                version,
                applied: self.applied,
            });
        }
        Ok(())
    }

    /// The value of `key` at `version`.
    pub fn get(&self, key: &[u8], version: Version) -> Result<Option<Bytes>, ReadError> {
        self.check_readable(version)?;
        Ok(self.value_at(key, version)?)
    }

    /// The value of `key` at `version` by the window, else the engine,
    /// without asking whether the version is readable.
    fn value_at(&self, key: &[u8], version: Version) -> Result<Option<Bytes>, EngineError> {
        Ok(match self.window.get(key, version) {
            WindowValue::Set(value) => Some(value.clone()),
            WindowValue::Cleared => None,
            WindowValue::Unchanged => self.engine.get(key)?,
        })
    }

    /// The pairs in `[begin, end)` at `version`, ascending or descending, at
    /// most `limit` of them.
    pub fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        version: Version,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        self.get_range_within(begin, end, limit, usize::MAX, reverse, version)
    }

    /// Like [`get_range`](Self::get_range), also stopping once the pairs
    /// returned hold `max_bytes` of keys and values (so at most
    /// `max_bytes` plus one pair).
    pub fn get_range_within(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
        reverse: bool,
        version: Version,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        self.check_readable(version)?;
        let mut out = Vec::new();
        if begin >= end || limit == 0 {
            return Ok(out);
        }
        let mut chains = self.window.chains(begin, end);
        let mut next_chain = move || {
            if reverse {
                chains.next_back()
            } else {
                chains.next()
            }
        };
        let mut chain = next_chain();
        let mut engine = EngineScan::new(&*self.engine, begin, end, reverse);
        let mut bytes = 0;
        while out.len() < limit && bytes < max_bytes {
            let stored = engine.peek(limit - out.len())?;
            let (window_first, engine_first) = match (chain, stored) {
                (None, None) => break,
                (Some(window), None) => (Some((window, None)), None),
                (None, Some(pair)) => (None, Some(pair)),
                (Some(window), Some(pair)) => {
                    let window_key: &[u8] = window.0;
                    let order = if reverse {
                        pair.0[..].cmp(window_key)
                    } else {
                        window_key.cmp(&pair.0[..])
                    };
                    match order {
                        Ordering::Less => (Some((window, None)), None),
                        Ordering::Equal => (Some((window, engine.pop())), None),
                        Ordering::Greater => (None, Some(pair)),
                    }
                }
            };
            if let Some(((key, history), under)) = window_first {
                if let Some(pair) = self.resolve(key, history, under, version) {
                    bytes += pair.0.len() + pair.1.len();
                    out.push(pair);
                }
                chain = next_chain();
            }
            if let Some((key, value)) = engine_first {
                match self.window.cleared_span(&key, version) {
                    Some((span_begin, span_end)) => engine.skip(span_begin, span_end),
                    None => {
                        engine.pop();
                        bytes += key.len() + value.len();
                        out.push((key, value));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A window key's pair at `version`, given the engine's pair for it.
    fn resolve(
        &self,
        key: &Bytes,
        history: &Chain,
        engine_pair: Option<(Bytes, Bytes)>,
        version: Version,
    ) -> Option<(Bytes, Bytes)> {
        match history.at(version) {
            WindowValue::Set(value) => Some((key.clone(), value.clone())),
            WindowValue::Cleared => None,
            WindowValue::Unchanged => {
                engine_pair.filter(|_| self.window.cleared_span(key, version).is_none())
            }
        }
    }

    /// Forgets every version above `version`, which a recovery ended the
    /// generation at: they never committed. Durable versions cannot be
    /// rolled back, and are never above a recovery version.
    pub fn rollback_to(&mut self, version: Version) -> Result<(), StoreError> {
        let floor = self.flushing.unwrap_or(self.durable).max(self.durable);
        if version < floor {
            return Err(StoreError::RollbackBelowDurable {
                version,
                durable: floor,
            });
        }
        self.window.rollback_after(version);
        self.applied = self.applied.min(version);
        self.newest_mutation = self.newest_mutation.min(version);
        Ok(())
    }

    /// Keeps versions above `version` out of the engine: they are not
    /// known to be committed. Until told, nothing is held back.
    pub fn limit_flushes_to(&mut self, version: Version) {
        self.flush_limit = version;
    }

    /// The version a flush now would make durable: everything older than
    /// the window's version span or beyond its byte budget, never past the
    /// applied version nor the flush limit.
    pub fn flush_target(&self) -> Version {
        let by_versions = Version(self.applied.0.saturating_sub(self.config.max_versions));
        let by_bytes = self
            .window
            .release_point(self.config.max_bytes)
            .unwrap_or(Version::ZERO);
        by_versions
            .max(by_bytes)
            .min(self.applied)
            .min(self.flush_limit)
            .max(self.durable)
    }

    /// The most a flush can make durable if asked for `version`: never
    /// past the applied version nor the flush limit.
    pub fn flushable_through(&self, version: Version) -> Version {
        version.min(self.applied).min(self.flush_limit)
    }

    /// Whether the window is over its version span or byte budget with
    /// something flushable.
    pub fn should_flush(&self) -> bool {
        if self.flushing.is_some() {
            return false;
        }
        let target = self.flush_target();
        // Once the window is full, every batch would free a sliver: flush in
        // chunks of a tenth of the window instead, so one write transaction
        // (and its syncs, which hold reads back) carries many versions. Over
        // the byte budget, flush at once.
        let chunk = (self.config.max_versions / 10).max(1);
        target > self.durable
            && (target.0 - self.durable.0 >= chunk || self.window.bytes() > self.config.max_bytes)
    }

    /// Moves every applied version older than the window (by versions or
    /// bytes) into the engine: ONE WriteBatch for all of them, plus the
    /// durable version and `extra_metadata`. Returns the new durable
    /// version.
    pub fn flush(&mut self, extra_metadata: &[(&str, Bytes)]) -> Result<Version, StoreError> {
        self.flush_to(self.flush_target(), extra_metadata)
    }

    /// Moves every version up to `version` (capped at the applied version)
    /// into the engine in one batch, as `flush` does; for a clean shutdown
    /// or a checkpoint. With nothing to move and no metadata, writes nothing.
    pub fn flush_to(
        &mut self,
        version: Version,
        extra_metadata: &[(&str, Bytes)],
    ) -> Result<Version, StoreError> {
        let Some(mut flush) = self.prepare_flush(version, extra_metadata)? else {
            return Ok(self.durable);
        };
        match flush.write(self.engine.as_ref()) {
            Ok(()) => Ok(self.finish_flush(flush)),
            Err(e) => {
                self.abandon_flush(flush);
                Err(e)
            }
        }
    }

    /// Builds the flush through `version` (capped as `flush_to` caps it) and
    /// stops serving reads below it; `None` when there is nothing to move.
    /// Write the result with `PreparedFlush::write` (the store need not be
    /// held: reads at or above the flush version are answered from the
    /// window either way), then `finish_flush` it.
    pub fn prepare_flush(
        &mut self,
        version: Version,
        extra_metadata: &[(&str, Bytes)],
    ) -> Result<Option<PreparedFlush>, StoreError> {
        for (name, _) in extra_metadata {
            if *name == DURABLE_VERSION_METADATA
                || *name == READABLE_FROM_METADATA
                || *name == COPIED_RANGES_METADATA
                || *name == FORMAT_METADATA
            {
                return Err(StoreError::ReservedMetadata((*name).to_owned()));
            }
        }
        let through = version.min(self.applied).max(self.durable);
        if self.flushing.is_some() || (through == self.durable && extra_metadata.is_empty()) {
            return Ok(None);
        }
        Ok(Some(self.prepare(through, extra_metadata)))
    }

    fn prepare(&mut self, through: Version, extra_metadata: &[(&str, Bytes)]) -> PreparedFlush {
        let plan = self.window.plan_flush(through);
        let mut batch = WriteBatch::new();
        self.window.write_flush(&plan, &mut batch);
        batch.set_metadata(
            DURABLE_VERSION_METADATA,
            Bytes::copy_from_slice(&through.0.to_le_bytes()),
        );
        for (name, value) in extra_metadata {
            batch.set_metadata(name, value.clone());
        }
        self.flushing = Some(through);
        PreparedFlush {
            plan,
            batch: Some(batch),
            through,
        }
    }

    /// Drops what a written flush moved from the window; the flush version
    /// is durable from now on.
    pub fn finish_flush(&mut self, flush: PreparedFlush) -> Version {
        self.window.discard(flush.plan);
        self.durable = flush.through;
        self.flushing = None;
        flush.through
    }

    /// Forgets a prepared flush whose write failed (the engine is poisoned
    /// then): reads below its version are refused no longer.
    pub fn abandon_flush(&mut self, flush: PreparedFlush) {
        debug_assert_eq!(self.flushing, Some(flush.through));
        self.flushing = None;
    }

    /// Sampled keys of the newest state: bytes held per range.
    pub fn byte_sample(&self) -> &ByteSample {
        &self.byte_sample
    }

    /// Estimated heap bytes the window holds.
    pub fn window_bytes(&self) -> u64 {
        self.window.bytes()
    }

    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }
}

/// The engine's pairs of a range, fetched in chunks on demand.
struct EngineScan<'e, E> {
    engine: &'e E,
    /// The part of the range not fetched yet: `[lower, upper)`.
    lower: Vec<u8>,
    upper: Vec<u8>,
    reverse: bool,
    /// Fetched pairs in scan order.
    buffered: VecDeque<(Bytes, Bytes)>,
    /// The engine has nothing more in `[lower, upper)`.
    drained: bool,
    /// Pairs fetched so far; the next chunk is at least this big, so a
    /// read that keeps skipping needs only logarithmically many fetches.
    fetched: usize,
}

impl<'e, E: KvEngine> EngineScan<'e, E> {
    fn new(engine: &'e E, begin: &[u8], end: &[u8], reverse: bool) -> Self {
        EngineScan {
            engine,
            lower: begin.to_vec(),
            upper: end.to_vec(),
            reverse,
            buffered: VecDeque::new(),
            drained: false,
            fetched: 0,
        }
    }

    /// The next pair in scan order; `wanted` is how many results the read
    /// still needs (the size of a first chunk).
    fn peek(&mut self, wanted: usize) -> Result<Option<(Bytes, Bytes)>, EngineError> {
        if self.buffered.is_empty() && !self.drained {
            self.fetch(wanted)?;
        }
        Ok(self.buffered.front().cloned())
    }

    fn pop(&mut self) -> Option<(Bytes, Bytes)> {
        self.buffered.pop_front()
    }

    fn fetch(&mut self, wanted: usize) -> Result<(), EngineError> {
        let chunk = wanted.max(self.fetched).clamp(1, MAX_ENGINE_CHUNK);
        let pairs = self
            .engine
            .range(&self.lower, &self.upper, chunk, self.reverse)?;
        self.drained = pairs.len() < chunk;
        if let Some((last, _)) = pairs.last() {
            if self.reverse {
                self.upper = last.to_vec();
            } else {
                // The smallest key after `last`.
                self.lower = last.to_vec();
                self.lower.push(0);
            }
        }
        self.drained |= self.lower >= self.upper;
        self.fetched += pairs.len();
        self.buffered.extend(pairs);
        Ok(())
    }

    /// Drops the pairs in `[begin, end)` (a cleared span) without reading
    /// the rest of it from the engine.
    fn skip(&mut self, begin: &[u8], end: &[u8]) {
        if self.reverse {
            while self.buffered.front().is_some_and(|(k, _)| &k[..] >= begin) {
                self.buffered.pop_front();
            }
            if begin < &self.upper[..] {
                self.upper = begin.to_vec();
            }
        } else {
            while self.buffered.front().is_some_and(|(k, _)| &k[..] < end) {
                self.buffered.pop_front();
            }
            if end > &self.lower[..] {
                self.lower = end.to_vec();
            }
        }
        self.drained |= self.lower >= self.upper;
    }
}

#[cfg(test)]
mod tests;
