//! The key ranges a rebuild copied, each with the version its page was
//! read at, so that the log's redo skips what a page already holds.
//!
//! ```text
//!  rebuild: page [b, e) read at v_i ─▶ CopiedRanges::record ─▶ engine metadata "copied_at"
//!  redo from v_first + 1: mutation at v on key k
//!      k in a page read at v_i >= v  ─▶ skipped (the page holds its effect)
//!      otherwise                     ─▶ applied (a clear, over the parts not skipped)
//! ```
//!
//! An append applied over a page that already holds it would append twice,
//! and a clear applied again could remove what a skipped append left, so
//! the redo must skip exactly what each page holds. Once the store is past
//! the newest page's version, nothing is skipped and the list is dropped.
//!
//! Encoding (integers little-endian): `format:u8 (=1) | count:u32 |
//! (len:u32 begin | len:u32 end | version:u64)*`, ranges in key order.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::{BufMut, Bytes};
use proto::Version;

const FORMAT: u8 = 1;

/// Copied ranges, disjoint, each with its page's read version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopiedRanges {
    /// begin ─▶ (end, version).
    ranges: BTreeMap<Bytes, (Bytes, Version)>,
}

/// Why a stored list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("copied ranges: {0}")]
pub struct DecodeError(&'static str);

impl CopiedRanges {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Records that `[begin, end)` was copied as of `version`. Ranges are
    /// recorded disjoint, as the pages of a copy are.
    pub fn record(&mut self, begin: Bytes, end: Bytes, version: Version) {
        if begin < end {
            self.ranges.insert(begin, (end, version));
        }
    }

    /// The newest page's version: past it, nothing is skipped.
    pub fn newest(&self) -> Version {
        self.ranges
            .values()
            .map(|(_, version)| *version)
            .max()
            .unwrap_or(Version::ZERO)
    }

    /// Whether a mutation of `key` at `version` is already in the copy.
    pub fn holds(&self, key: &[u8], version: Version) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, (end, copied_at))| key < end.as_ref() && version <= *copied_at)
    }

    /// The parts of `[begin, end)` that no page read at or after `version`
    /// holds: where a clear at `version` must still apply.
    pub fn not_held(&self, begin: &Bytes, end: &Bytes, version: Version) -> Vec<(Bytes, Bytes)> {
        let mut parts = Vec::new();
        let mut from = begin.clone();
        // The page starting at or before `begin`, then those inside.
        let before = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin.as_ref())))
            .next_back();
        let inside = self.ranges.range::<[u8], _>((
            Bound::Excluded(begin.as_ref()),
            Bound::Excluded(end.as_ref()),
        ));
        for (page_begin, (page_end, copied_at)) in before.into_iter().chain(inside) {
            if *copied_at < version || page_end <= &from {
                continue;
            }
            if page_begin > &from {
                parts.push((from.clone(), page_begin.clone()));
            }
            from = page_end.clone();
            if from >= *end {
                return parts;
            }
        }
        if from < *end {
            parts.push((from, end.clone()));
        }
        parts
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        out.put_u8(FORMAT);
        out.put_u32_le(self.ranges.len() as u32);
        for (begin, (end, version)) in &self.ranges {
            for bound in [begin, end] {
                out.put_u32_le(bound.len() as u32);
                out.put_slice(bound);
            }
            out.put_u64_le(version.0);
        }
        Bytes::from(out)
    }

    pub fn decode(bytes: &Bytes) -> Result<CopiedRanges, DecodeError> {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let part = bytes.get(at..at + n).ok_or(DecodeError("ends too early"))?;
            at += n;
            Ok::<_, DecodeError>(part)
        };
        if take(1)?[0] != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let mut copied = CopiedRanges::default();
        for _ in 0..count {
            let mut bound = || {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                Ok::<_, DecodeError>(Bytes::copy_from_slice(take(len)?))
            };
            let (begin, end) = (bound()?, bound()?);
            let version = Version(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")));
            copied.record(begin, end, version);
        }
        if at != bytes.len() {
            return Err(DecodeError("bytes after the last range"));
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    fn copied() -> CopiedRanges {
        let mut copied = CopiedRanges::default();
        copied.record(b("b"), b("d"), Version(10));
        copied.record(b("d"), b("f"), Version(20));
        copied.record(b("h"), b("k"), Version(30));
        copied
    }

    #[test]
    fn a_key_is_held_up_to_its_page_version() {
        let copied = copied();
        assert!(copied.holds(b"b", Version(10)));
        assert!(!copied.holds(b"b", Version(11)));
        assert!(copied.holds(b"e", Version(20)));
        assert!(!copied.holds(b"a", Version(1)));
        assert!(!copied.holds(b"f", Version(1)));
        assert!(!copied.holds(b"g", Version(1)));
        assert!(copied.holds(b"j", Version(5)));
        assert!(!copied.holds(b"k", Version(5)));
        assert_eq!(copied.newest(), Version(30));
    }

    #[test]
    fn a_clear_applies_only_where_no_newer_page_holds_it() {
        let copied = copied();
        let parts =
            |begin: &str, end: &str, v: u64| copied.not_held(&b(begin), &b(end), Version(v));
        // Every page is newer: only the gaps.
        assert_eq!(
            parts("a", "z", 5),
            vec![(b("a"), b("b")), (b("f"), b("h")), (b("k"), b("z"))]
        );
        // Only the pages at 20 and 30 hold a clear at 15.
        assert_eq!(
            parts("c", "i", 15),
            vec![(b("c"), b("d")), (b("f"), b("h"))]
        );
        // Inside one holding page: nothing.
        assert_eq!(parts("bb", "cc", 10), vec![]);
        // Newer than every page: all of it.
        assert_eq!(parts("a", "z", 31), vec![(b("a"), b("z"))]);
    }

    #[test]
    fn the_list_decodes_to_what_was_encoded_and_refuses_damage() {
        let copied = copied();
        let encoded = copied.encode();
        assert_eq!(CopiedRanges::decode(&encoded).unwrap(), copied);
        assert_eq!(
            CopiedRanges::decode(&CopiedRanges::default().encode()).unwrap(),
            CopiedRanges::default()
        );
        for cut in 0..encoded.len() {
            assert!(
                CopiedRanges::decode(&encoded.slice(..cut)).is_err(),
                "{cut}"
            );
        }
        let mut longer = encoded.to_vec();
        longer.push(0);
        assert!(CopiedRanges::decode(&Bytes::from(longer)).is_err());
    }
}
