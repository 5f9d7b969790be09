//! The key ranges a storage server is adding: a move named one of its teams
//! as a destination, and it must copy what a source holds while the
//! range's new mutations already reach it. The state machine, without I/O.
//!
//! ```text
//!  map at V: [b, e) = {src S, dest D ∋ mine}  ─▶ adding [b, e), nothing installed
//!  mutation at v in the part not installed    ─▶ buffered (clipped to that part)
//!  fetch: page [p, q) read from an S server at v_p ─▶ deliver
//!  store applied through W >= v_p: install at W:
//!      clear [p, q), set the page's pairs, redo buffered (v_p, W] of [p, q)
//!  every page installed and flushed ─▶ ready; the map flips to {src D}
//!  a range that leaves every team of mine     ─▶ cleared after the change
//! ```
//!
//! Pages are read each at its own (committed) version, never an old one,
//! so a move of any size completes. A page read at `v_p` holds everything
//! up to `v_p`; the buffer supplies what came after. Future pages are read
//! at or above `min_read_version`, so the buffer drops what they will hold,
//! and when it passes its byte bound it is dropped whole, raising
//! `min_read_version` past it.
//!
//! What persists with a flush through `F` is how far each range was
//! installed as of `F` and the clears still due; the buffer does not: a
//! restart reads the log on from `F`, which brings those mutations again.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use proto::rpc::AddingRangeStatus;
use proto::system_keys::USER_KEYS_END;
use proto::{Mutation, Version};

use crate::ownership::ranges_left;

const FORMAT: u8 = 1;

/// A page of a range, read from a source at `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub begin: Bytes,
    pub end: Bytes,
    pub version: Version,
    pub pairs: Vec<(Bytes, Bytes)>,
}

/// What the fetch should read next: `[begin, end)` of the adding range
/// starting at `range`, at a version of at least `min_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub range: Bytes,
    pub begin: Bytes,
    pub end: Bytes,
    pub min_version: Version,
}

#[derive(Clone, Debug, Default)]
struct Adding {
    end: Bytes,
    /// The shard-map change it began at (the durable version, restored).
    since: Version,
    /// Pages installed, in key order: (the version installed at, page end).
    installs: Vec<(Version, Bytes)>,
    /// Mutations of the part not installed yet, in version order.
    buffer: Vec<(Version, Mutation)>,
    buffer_bytes: u64,
    min_read_version: Version,
    /// A page read, waiting until the store has applied its version.
    page: Option<Page>,
    pairs_copied: u64,
    bytes_copied: u64,
    problem: Option<String>,
}

impl Adding {
    fn installed_to<'a>(&'a self, begin: &'a Bytes) -> &'a Bytes {
        self.installs.last().map_or(begin, |(_, end)| end)
    }

    fn complete(&self) -> bool {
        self.installs
            .last()
            .is_some_and(|(_, end)| *end == self.end)
    }
}

/// A range no longer added, kept until its removal is durable: a
/// recovery that rolls back below the removal brings it back as it was,
/// pages installed included (a copy finished at a committed version is
/// not copied again, and stays ready).
#[derive(Clone, Debug)]
struct Retired {
    at: Version,
    begin: Bytes,
    adding: Adding,
}

/// A clear of a range that left this server's teams, due after `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Drop {
    after: Version,
    begin: Bytes,
    end: Bytes,
    /// The version it was applied at, until that is durable.
    applied_at: Option<Version>,
}

/// Why a stored adding state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("adding ranges: {0}")]
pub struct DecodeError(&'static str);

/// The ranges being added and the clears of ranges given away.
#[derive(Clone, Debug, Default)]
pub struct AddingRanges {
    /// begin ─▶ the range's state.
    ranges: BTreeMap<Bytes, Adding>,
    retired: Vec<Retired>,
    drops: Vec<Drop>,
    /// The most bytes the buffers may hold together.
    buffer_limit: u64,
}

impl AddingRanges {
    pub fn new(buffer_limit: u64) -> Self {
        AddingRanges {
            buffer_limit,
            ..AddingRanges::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.drops.is_empty()
    }

    /// Makes the ranges being added `wanted` (after a shard-map change at
    /// `version`), and clears `given_away` after it. A range no longer
    /// wanted stops being added once complete (the map flipped to this
    /// server) or when none of it is this server's (in `held`, the key
    /// ranges its teams hold or are adding, in key order); an incomplete
    /// one this server still holds whole, and none of which it is adding
    /// anew, goes on, copying from whoever holds it now. Of an incomplete
    /// one that a change cut up (part given away, or part wanted anew as
    /// its own range: a move that took over another's start), the parts
    /// still held and not wanted anew are copied afresh as ranges of
    /// their own: ranges being added never overlap, so each mutation is
    /// buffered, and redone over its page, once.
    pub fn reconcile(
        &mut self,
        version: Version,
        wanted: &[(Bytes, Bytes)],
        held: &[(Bytes, Bytes)],
        given_away: Vec<(Bytes, Bytes)>,
    ) {
        let mut leaving = Vec::new();
        let mut afresh = Vec::new();
        for (begin, adding) in &self.ranges {
            if wanted.iter().any(|(b, e)| b == begin && *e == adding.end) {
                continue;
            }
            let whole = [(begin.clone(), adding.end.clone())];
            let held_parts = ranges_left(&whole, &ranges_left(&whole, held));
            if adding.complete() || held_parts.is_empty() {
                leaving.push(begin.clone());
                continue;
            }
            let going_on = ranges_left(&held_parts, wanted);
            if going_on != whole {
                leaving.push(begin.clone());
                afresh.extend(going_on);
            }
        }
        for begin in leaving {
            if let Some(adding) = self.ranges.remove(&begin) {
                self.retired.push(Retired {
                    at: version,
                    begin,
                    adding,
                });
            }
        }
        for (begin, end) in wanted.iter().chain(&afresh) {
            self.ranges.entry(begin.clone()).or_insert_with(|| Adding {
                end: end.clone(),
                since: version,
                min_read_version: version,
                ..Adding::default()
            });
        }
        for (begin, end) in given_away {
            self.drops.push(Drop {
                after: version,
                begin,
                end,
                applied_at: None,
            });
        }
    }

    /// The parts of `mutation` (at `version`) to apply now; the rest,
    /// in ranges not installed yet, is buffered.
    pub fn route(&mut self, version: Version, mutation: Mutation) -> Vec<Mutation> {
        if self.ranges.is_empty() {
            return vec![mutation];
        }
        let mut rest = vec![mutation];
        for (begin, adding) in &mut self.ranges {
            let from = adding.installed_to(begin).clone();
            let mut outside = Vec::new();
            for piece in rest {
                if let Some(inside) = clip(&piece, &from, &adding.end) {
                    adding.buffer_bytes += inside.payload_len() as u64;
                    adding.buffer.push((version, inside));
                }
                outside.extend(clip(&piece, b"", &from));
                outside.extend(clip(&piece, &adding.end, USER_KEYS_END));
            }
            rest = outside;
        }
        self.bound_buffers();
        rest
    }

    /// Over the byte bound, every buffer is dropped: pages read from now
    /// on must be read above what it held.
    fn bound_buffers(&mut self) {
        let total: u64 = self.ranges.values().map(|a| a.buffer_bytes).sum();
        if total <= self.buffer_limit {
            return;
        }
        for adding in self.ranges.values_mut() {
            if let Some((newest, _)) = adding.buffer.last() {
                adding.min_read_version = adding.min_read_version.max(*newest);
            }
            adding.buffer.clear();
            adding.buffer_bytes = 0;
            if adding
                .page
                .as_ref()
                .is_some_and(|p| p.version < adding.min_read_version)
            {
                adding.page = None;
            }
        }
    }

    /// The next page to read, for a range with no page waiting.
    pub fn next_request(&self) -> Option<PageRequest> {
        self.ranges.iter().find_map(|(begin, adding)| {
            (adding.page.is_none() && !adding.complete()).then(|| PageRequest {
                range: begin.clone(),
                begin: adding.installed_to(begin).clone(),
                end: adding.end.clone(),
                min_version: adding.min_read_version,
            })
        })
    }

    /// Hands over a page read for `request`; `false` when it is no longer
    /// wanted (the range changed meanwhile, or the page is too old).
    pub fn deliver(&mut self, request: &PageRequest, page: Page) -> bool {
        let Some(adding) = self.ranges.get_mut(&request.range) else {
            return false;
        };
        let fits = adding.page.is_none()
            && adding.end == request.end
            && *adding.installed_to(&request.range) == page.begin
            && page.begin < page.end
            && page.end <= adding.end
            && page.version >= adding.min_read_version;
        if fits {
            adding.pairs_copied += page.pairs.len() as u64;
            adding.bytes_copied += page
                .pairs
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>();
            adding.problem = None;
            adding.page = Some(page);
        }
        fits
    }

    /// Notes why the fetch of the range at `range` failed, for status.
    pub fn note_problem(&mut self, range: &Bytes, problem: String) {
        if let Some(adding) = self.ranges.get_mut(range) {
            adding.problem = Some(problem);
        }
    }

    /// Whether anything waits to be written at the next version applied.
    pub fn has_work_due(&self, applied: Version) -> bool {
        self.ranges
            .values()
            .any(|a| a.page.as_ref().is_some_and(|p| p.version <= applied))
            || self
                .drops
                .iter()
                .any(|d| d.applied_at.is_none() && d.after < applied)
    }

    /// What to write at version `at` (the store's applied version, above
    /// what is durable): clears due, and every page whose version the
    /// store has reached, with the buffered mutations that followed it.
    pub fn take_due(&mut self, at: Version) -> Vec<Mutation> {
        let mut out = Vec::new();
        for drop in &mut self.drops {
            if drop.applied_at.is_none() && drop.after < at {
                out.push(Mutation::ClearRange {
                    begin: drop.begin.clone(),
                    end: drop.end.clone(),
                });
                drop.applied_at = Some(at);
            }
        }
        for adding in self.ranges.values_mut() {
            let Some(page) = adding.page.take_if(|p| p.version <= at) else {
                continue;
            };
            out.push(Mutation::ClearRange {
                begin: page.begin.clone(),
                end: page.end.clone(),
            });
            out.extend(
                page.pairs
                    .into_iter()
                    .map(|(key, value)| Mutation::SetValue { key, value }),
            );
            let mut kept = Vec::new();
            for (version, mutation) in adding.buffer.drain(..) {
                if version > page.version {
                    out.extend(clip(&mutation, &page.begin, &page.end));
                    if let Some(later) = clip(&mutation, &page.end, &adding.end) {
                        kept.push((version, later));
                    }
                }
            }
            adding.buffer_bytes = kept.iter().map(|(_, m)| m.payload_len() as u64).sum();
            adding.buffer = kept;
            adding.min_read_version = adding.min_read_version.max(page.version);
            adding.installs.push((at, page.end));
        }
        out
    }

    /// Forgets ranges begun, installs, clears and buffered mutations above
    /// `version` (a recovery ended their generation below them), and
    /// brings back the ranges that stopped being added above it.
    pub fn rollback_to(&mut self, version: Version) {
        self.ranges.retain(|_, adding| adding.since <= version);
        let (back, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| r.at > version);
        self.retired = kept;
        for retired in back.into_iter().filter(|r| r.adding.since <= version) {
            self.ranges.entry(retired.begin).or_insert(retired.adding);
        }
        for (begin, adding) in &mut self.ranges {
            adding.installs.retain(|(at, _)| *at <= version);
            adding.buffer.retain(|(v, _)| *v <= version);
            adding.buffer_bytes = adding
                .buffer
                .iter()
                .map(|(_, m)| m.payload_len() as u64)
                .sum();
            let from = adding.installed_to(begin).clone();
            if adding.page.as_ref().is_some_and(|p| p.begin != from) {
                adding.page = None;
            }
        }
        self.drops.retain(|d| d.after <= version);
        for drop in &mut self.drops {
            if drop.applied_at.is_some_and(|at| at > version) {
                drop.applied_at = None;
            }
        }
    }

    /// The newest install of a complete range not yet durable at
    /// `durable`: a flush through it makes the range ready.
    pub fn flush_wanted(&self, durable: Version) -> Option<Version> {
        self.ranges
            .values()
            .filter(|a| a.complete())
            .filter_map(|a| a.installs.last().map(|(at, _)| *at))
            .filter(|at| *at > durable)
            .max()
    }

    /// Forgets clears and removals made durable at `durable`: no
    /// rollback goes below it.
    pub fn forget_durable(&mut self, durable: Version) {
        self.retired.retain(|r| r.at > durable);
        self.drops
            .retain(|d| d.applied_at.is_none_or(|at| at > durable));
    }

    /// Whether some key of `[begin, end)` (or `begin` alone, for an empty
    /// range) lies in a range being added and not installed as of
    /// `version`: not installed yet, or by a page written above it (below
    /// its install, the store holds what was there before the copy).
    pub fn overlaps_missing(&self, begin: &[u8], end: &[u8], version: Version) -> bool {
        let meets = |b: &[u8], e: &[u8]| match begin >= end {
            true => b <= begin && begin < e,
            false => b < end && begin < e && b < e,
        };
        self.ranges.iter().any(|(range_begin, adding)| {
            let mut page_begin = range_begin;
            for (at, page_end) in &adding.installs {
                if *at > version && meets(page_begin, page_end) {
                    return true;
                }
                page_begin = page_end;
            }
            meets(page_begin, &adding.end)
        })
    }

    pub fn status(&self, durable: Version) -> Vec<AddingRangeStatus> {
        self.ranges
            .iter()
            .map(|(begin, adding)| AddingRangeStatus {
                begin: begin.clone(),
                end: adding.end.clone(),
                installed_to: adding.installed_to(begin).clone(),
                pairs_copied: adding.pairs_copied,
                bytes_copied: adding.bytes_copied,
                ready: adding.complete()
                    && adding.installs.last().is_some_and(|(at, _)| *at <= durable),
                problem: adding.problem.clone(),
                idle_ms: 0,
                size_left: None,
                size_per_sec: 0,
            })
            .collect()
    }

    /// The state as of a flush through `through`:
    /// `format:u8 | n:u32 | (begin | end | installed_to)^n | m:u32 |
    /// (begin | end)^m`, each key `len:u32 | bytes`, little-endian.
    pub fn encode(&self, through: Version) -> Bytes {
        let mut out = Vec::new();
        out.put_u8(FORMAT);
        // What was being added at `through`: what a restart from it must
        // go on with, while the log brings the changes after it again.
        let alive: Vec<(&Bytes, &Adding)> = self
            .ranges
            .iter()
            .chain(
                self.retired
                    .iter()
                    .filter(|r| r.at > through)
                    .map(|r| (&r.begin, &r.adding)),
            )
            .filter(|(_, adding)| adding.since <= through)
            .collect();
        out.put_u32_le(alive.len() as u32);
        for (begin, adding) in alive {
            let installed = adding
                .installs
                .iter()
                .take_while(|(at, _)| *at <= through)
                .last()
                .map_or(begin, |(_, end)| end);
            for key in [begin, &adding.end, installed] {
                put_key(&mut out, key);
            }
        }
        let due: Vec<&Drop> = self
            .drops
            .iter()
            .filter(|d| d.after <= through && d.applied_at.is_none_or(|at| at > through))
            .collect();
        out.put_u32_le(due.len() as u32);
        for drop in due {
            put_key(&mut out, &drop.begin);
            put_key(&mut out, &drop.end);
        }
        Bytes::from(out)
    }

    /// The state a flush through `durable` stored.
    pub fn decode(
        mut bytes: &[u8],
        durable: Version,
        buffer_limit: u64,
    ) -> Result<AddingRanges, DecodeError> {
        let (&format, rest) = bytes.split_first().ok_or(DecodeError("empty"))?;
        if format != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        bytes = rest;
        let mut state = AddingRanges::new(buffer_limit);
        for _ in 0..take_u32(&mut bytes)? {
            let begin = take_key(&mut bytes)?;
            let end = take_key(&mut bytes)?;
            let installed = take_key(&mut bytes)?;
            if begin >= end || installed < begin || installed > end {
                return Err(DecodeError("range out of order"));
            }
            let installs = if installed > begin {
                vec![(durable, installed)]
            } else {
                Vec::new()
            };
            state.ranges.insert(
                begin,
                Adding {
                    end,
                    since: durable,
                    installs,
                    min_read_version: durable,
                    ..Adding::default()
                },
            );
        }
        for _ in 0..take_u32(&mut bytes)? {
            let begin = take_key(&mut bytes)?;
            let end = take_key(&mut bytes)?;
            state.drops.push(Drop {
                after: durable,
                begin,
                end,
                applied_at: None,
            });
        }
        if !bytes.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(state)
    }
}

/// The part of `mutation` inside `[begin, end)`, if any.
fn clip(mutation: &Mutation, begin: &[u8], end: &[u8]) -> Option<Mutation> {
    match mutation {
        Mutation::SetValue { key, .. } | Mutation::AppendIfFits { key, .. } => {
            (begin <= key.as_ref() && key.as_ref() < end).then(|| mutation.clone())
        }
        Mutation::ClearRange {
            begin: clear_begin,
            end: clear_end,
        } => {
            let b = clear_begin.as_ref().max(begin);
            let e = clear_end.as_ref().min(end);
            (b < e).then(|| Mutation::ClearRange {
                begin: Bytes::copy_from_slice(b),
                end: Bytes::copy_from_slice(e),
            })
        }
    }
}

fn put_key(out: &mut Vec<u8>, key: &[u8]) {
    out.put_u32_le(key.len() as u32);
    out.put_slice(key);
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, DecodeError> {
    let (head, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(DecodeError("truncated"))?;
    *bytes = rest;
    Ok(u32::from_le_bytes(*head))
}

fn take_key(bytes: &mut &[u8]) -> Result<Bytes, DecodeError> {
    let len = take_u32(bytes)? as usize;
    if bytes.len() < len {
        return Err(DecodeError("truncated"));
    }
    let (key, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(Bytes::copy_from_slice(key))
}

#[cfg(test)]
mod tests;
