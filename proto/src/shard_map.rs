//! The shard map: which storage teams hold which key range, at which version.
//!
//! ```text
//!  ""        "g"         "p"        \xff
//!  ├─ team 1 ─┼─ team 2 ──┼─ {src 2, dest 3} ─┤
//! ```
//!
//! Entries are keyed by shard begin; a shard runs to the next entry. Changes
//! arrive as commits of `\xff/keyServers/<begin>` keys, each at a version, and
//! an undo log over a window of recent versions lets a reader ask for the map
//! as it was at an older version (a two-version dictionary, generalised).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use crate::system_keys::{parse_key_servers_key, ShardAssignment, SystemKeyError};
use crate::types::{Mutation, StorageTeamId, Version};
use bytes::Bytes;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardMapError {
    #[error("the shard map must have a shard starting at the empty key")]
    NoFirstShard,
    #[error(transparent)]
    Malformed(#[from] SystemKeyError),
    #[error("shard assignment names unknown {0}")]
    UnknownTeam(StorageTeamId),
    #[error("a shard-map change may not remove the shard at the empty key")]
    RemovesFirstShard,
    #[error("shard-map changes at {version} arrived after {current}")]
    OutOfOrder { version: Version, current: Version },
}

/// The map at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    entries: BTreeMap<Bytes, ShardAssignment>,
}

impl ShardMap {
    pub fn new(
        entries: impl IntoIterator<Item = (Bytes, ShardAssignment)>,
    ) -> Result<Self, ShardMapError> {
        let entries: BTreeMap<_, _> = entries.into_iter().collect();
        if !entries.contains_key(&Bytes::new()) {
            return Err(ShardMapError::NoFirstShard);
        }
        Ok(ShardMap { entries })
    }

    /// The assignment of the shard holding `key`.
    pub fn assignment_of(&self, key: &[u8]) -> &ShardAssignment {
        self.entries
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(_, a)| a)
            .expect("the shard at the empty key covers every key")
    }

    /// The shard holding `key`: its `[begin, end)` and assignment (the last
    /// shard ends at the end of the user key space).
    pub fn locate(&self, key: &[u8]) -> (Bytes, Bytes, &ShardAssignment) {
        let (begin, assignment) = self
            .entries
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .expect("the shard at the empty key covers every key");
        let end = self
            .entries
            .range::<[u8], _>((Bound::Excluded(begin.as_ref()), Bound::Unbounded))
            .next()
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Bytes::from_static(crate::system_keys::USER_KEYS_END));
        (begin.clone(), end, assignment)
    }

    /// The shards overlapping `[begin, end)`, each clipped to it, in key order.
    pub fn split(&self, begin: &[u8], end: &[u8]) -> Vec<(Bytes, Bytes, &ShardAssignment)> {
        let mut pieces = Vec::new();
        if begin >= end {
            return pieces;
        }
        let first = self
            .entries
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin)))
            .next_back()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let mut shards = self.entries.range(first..).peekable();
        while let Some((shard_begin, assignment)) = shards.next() {
            if shard_begin.as_ref() >= end {
                break;
            }
            let piece_begin = shard_begin.as_ref().max(begin);
            let piece_end = match shards.peek() {
                Some((next, _)) => next.as_ref().min(end),
                None => end,
            };
            pieces.push((
                Bytes::copy_from_slice(piece_begin),
                Bytes::copy_from_slice(piece_end),
                assignment,
            ));
        }
        pieces
    }

    /// `count:u32 | (len:u32 | begin | len:u32 | assignment)^count`, LE.
    pub fn encode(&self) -> Bytes {
        let mut out = bytes::BytesMut::new();
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (begin, assignment) in &self.entries {
            let assignment = assignment.encode();
            for part in [begin.as_ref(), assignment.as_ref()] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out.freeze()
    }

    pub fn decode(mut bytes: &[u8]) -> Result<ShardMap, ShardMapError> {
        let truncated =
            ShardMapError::Malformed(SystemKeyError::MalformedAssignment("shard map truncated"));
        let mut take = |n: usize| -> Result<&[u8], ShardMapError> {
            if bytes.len() < n {
                return Err(truncated.clone());
            }
            let (head, rest) = bytes.split_at(n);
            bytes = rest;
            Ok(head)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let mut entries = Vec::new();
        for _ in 0..count {
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let begin = Bytes::copy_from_slice(take(len)?);
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            entries.push((begin, ShardAssignment::decode(take(len)?)?));
        }
        if !bytes.is_empty() {
            return Err(ShardMapError::Malformed(
                SystemKeyError::MalformedAssignment("trailing bytes"),
            ));
        }
        ShardMap::new(entries)
    }

    /// Every shard as (begin, assignment), in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &ShardAssignment)> {
        self.entries.iter()
    }
}

/// A shard-map key range bound: the part after the prefix, or the end of
/// the key space for a bound past the whole prefix.
fn key_servers_bound(key: &[u8]) -> Option<&[u8]> {
    parse_key_servers_key(key).or_else(|| {
        (key > crate::system_keys::KEY_SERVERS_PREFIX).then_some(crate::system_keys::USER_KEYS_END)
    })
}

/// One undone change: the entry at `begin` as it was before.
#[derive(Clone, Debug)]
struct Undo {
    begin: Bytes,
    before: Option<ShardAssignment>,
}

/// The current map plus enough history to rebuild recent versions.
#[derive(Clone, Debug)]
pub struct VersionedShardMap {
    current: ShardMap,
    version: Version,
    undo: VecDeque<(Version, Vec<Undo>)>,
    /// Versions of history kept behind the newest change.
    window: u64,
    /// The oldest version whose map can still be rebuilt: the version of
    /// the newest change dropped from the history.
    history_from: Version,
}

impl VersionedShardMap {
    pub fn new(initial: ShardMap, version: Version, window: u64) -> Self {
        VersionedShardMap {
            current: initial,
            version,
            undo: VecDeque::new(),
            window,
            history_from: Version::ZERO,
        }
    }

    pub fn current(&self) -> &ShardMap {
        &self.current
    }

    /// The latest version whose changes are applied.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Checks that `mutations` (a batch's shard-map changes) can apply:
    /// values decode, teams are known, the first shard stays.
    pub fn check(
        &self,
        mutations: &[Mutation],
        known_team: impl Fn(StorageTeamId) -> bool,
    ) -> Result<(), ShardMapError> {
        for mutation in mutations {
            match mutation {
                Mutation::SetValue { key, value } if parse_key_servers_key(key).is_some() => {
                    let assignment = ShardAssignment::decode(value)?;
                    let unknown = assignment.teams().find(|t| !known_team(*t));
                    if let Some(team) = unknown {
                        return Err(ShardMapError::UnknownTeam(team));
                    }
                }
                Mutation::ClearRange { begin, end } => {
                    if let (Some(b), Some(_)) = (key_servers_bound(begin), key_servers_bound(end)) {
                        if b.is_empty() && begin.as_ref() < end.as_ref() {
                            return Err(ShardMapError::RemovesFirstShard);
                        }
                    }
                }
                Mutation::SetValue { .. } | Mutation::AppendIfFits { .. } => {}
            }
        }
        Ok(())
    }

    /// Applies one version's metadata mutations (others are ignored).
    pub fn apply(&mut self, version: Version, mutations: &[Mutation]) -> Result<(), ShardMapError> {
        if version <= self.version {
            return Err(ShardMapError::OutOfOrder {
                version,
                current: self.version,
            });
        }
        let mut undo = Vec::new();
        let entries = &mut self.current.entries;
        for mutation in mutations {
            match mutation {
                Mutation::SetValue { key, value } => {
                    let Some(begin) = parse_key_servers_key(key) else {
                        continue;
                    };
                    let assignment = ShardAssignment::decode(value)?;
                    let begin = Bytes::copy_from_slice(begin);
                    let before = entries.insert(begin.clone(), assignment);
                    undo.push(Undo { begin, before });
                }
                Mutation::ClearRange { begin, end } => {
                    let (Some(b), Some(e)) = (key_servers_bound(begin), key_servers_bound(end))
                    else {
                        continue;
                    };
                    let doomed: Vec<Bytes> = entries
                        .range::<[u8], _>((Bound::Included(b), Bound::Excluded(e)))
                        .map(|(k, _)| k.clone())
                        .filter(|k| !k.is_empty())
                        .collect();
                    for begin in doomed {
                        let before = entries.remove(&begin);
                        undo.push(Undo { begin, before });
                    }
                }
                Mutation::AppendIfFits { .. } => {}
            }
        }
        self.version = version;
        if !undo.is_empty() {
            self.undo.push_back((version, undo));
        }
        while self
            .undo
            .front()
            .is_some_and(|(v, _)| v.0.saturating_add(self.window) < version.0)
        {
            let (dropped, _) = self.undo.pop_front().expect("a front");
            self.history_from = dropped;
        }
        Ok(())
    }

    /// Undoes every change above `version`: a recovery ended their
    /// generation below them, so they never committed.
    pub fn rollback_to(&mut self, version: Version) {
        while let Some((v, changes)) = self.undo.back() {
            if *v <= version {
                break;
            }
            for undo in changes.iter().rev() {
                match &undo.before {
                    Some(before) => self
                        .current
                        .entries
                        .insert(undo.begin.clone(), before.clone()),
                    None => self.current.entries.remove(&undo.begin),
                };
            }
            self.undo.pop_back();
        }
        self.version = self.version.min(version);
    }

    /// Forgets the changes at or below `version`: the maps before it can
    /// no longer be rebuilt. For a history kept by need rather than by a
    /// window of versions (a window breaks when versions jump, as at a
    /// recovery's floor).
    pub fn forget_through(&mut self, version: Version) {
        while self.undo.front().is_some_and(|(v, _)| *v <= version) {
            let (dropped, _) = self.undo.pop_front().expect("a front");
            self.history_from = dropped;
        }
    }

    /// The map as of `version`, or None when that is older than the history kept.
    pub fn at(&self, version: Version) -> Option<ShardMap> {
        if version < self.history_from {
            return None;
        }
        let mut map = self.current.clone();
        for (_, changes) in self.undo.iter().rev().take_while(|(v, _)| *v > version) {
            for undo in changes.iter().rev() {
                match &undo.before {
                    Some(before) => map.entries.insert(undo.begin.clone(), before.clone()),
                    None => map.entries.remove(&undo.begin),
                };
            }
        }
        Some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_keys::key_servers_key;

    fn team(id: u64) -> ShardAssignment {
        ShardAssignment::to(StorageTeamId(id))
    }

    fn map() -> ShardMap {
        ShardMap::new([
            (Bytes::new(), team(1)),
            (Bytes::from_static(b"g"), team(2)),
            (Bytes::from_static(b"p"), team(3)),
        ])
        .unwrap()
    }

    fn set_shard(begin: &'static [u8], a: ShardAssignment) -> Mutation {
        Mutation::SetValue {
            key: key_servers_key(begin),
            value: a.encode(),
        }
    }

    #[test]
    fn keys_and_ranges_find_their_shards() {
        let m = map();
        assert_eq!(m.assignment_of(b""), &team(1));
        assert_eq!(m.assignment_of(b"f\xff"), &team(1));
        assert_eq!(m.assignment_of(b"g"), &team(2));
        assert_eq!(m.assignment_of(b"zzz"), &team(3));
        let pieces: Vec<_> = m
            .split(b"c", b"q")
            .into_iter()
            .map(|(b, e, a)| (b, e, a.src[0].0))
            .collect();
        assert_eq!(
            pieces,
            vec![
                (Bytes::from_static(b"c"), Bytes::from_static(b"g"), 1),
                (Bytes::from_static(b"g"), Bytes::from_static(b"p"), 2),
                (Bytes::from_static(b"p"), Bytes::from_static(b"q"), 3),
            ]
        );
        assert!(m.split(b"q", b"q").is_empty());
        let (begin, end, a) = m.locate(b"h");
        assert_eq!((&begin[..], &end[..], a), (&b"g"[..], &b"p"[..], &team(2)));
        let (begin, end, _) = m.locate(b"zz");
        assert_eq!((&begin[..], &end[..]), (&b"p"[..], &b"\xff"[..]));
        assert_eq!(m.split(b"h", b"i").len(), 1);
    }

    #[test]
    fn maps_encode_and_refuse_damage() {
        let m = map();
        let bytes = m.encode();
        assert_eq!(ShardMap::decode(&bytes), Ok(m));
        for cut in 0..bytes.len() {
            assert!(ShardMap::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.to_vec();
        long.push(1);
        assert!(ShardMap::decode(&long).is_err());
    }

    #[test]
    fn history_rebuilds_older_versions() {
        let mut v = VersionedShardMap::new(map(), Version(10), 1_000);
        v.apply(Version(20), &[set_shard(b"k", team(4))]).unwrap();
        let clear = Mutation::ClearRange {
            begin: key_servers_key(b"g"),
            end: key_servers_key(b"p"),
        };
        v.apply(Version(30), &[clear]).unwrap();
        assert_eq!(v.current().assignment_of(b"h"), &team(1));
        assert_eq!(v.at(Version(25)).unwrap().assignment_of(b"k"), &team(4));
        assert_eq!(v.at(Version(25)).unwrap().assignment_of(b"h"), &team(2));
        assert_eq!(v.at(Version(15)).unwrap(), map());
        assert!(matches!(
            v.apply(Version(30), &[]),
            Err(ShardMapError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn history_beyond_the_window_is_forgotten() {
        let mut v = VersionedShardMap::new(map(), Version(0), 100);
        v.apply(Version(10), &[set_shard(b"k", team(4))]).unwrap();
        v.apply(Version(500), &[set_shard(b"m", team(5))]).unwrap();
        assert!(v.at(Version(5)).is_none());
        assert!(v.at(Version(450)).is_some());
        // Once every change has left the history, older versions are still
        // unknown, not answered with the current map.
        let mut v = VersionedShardMap::new(map(), Version(0), 100);
        v.apply(Version(10), &[set_shard(b"k", team(4))]).unwrap();
        v.apply(Version(500), &[]).unwrap();
        assert!(v.at(Version(5)).is_none());
        assert_eq!(v.at(Version(10)).unwrap().assignment_of(b"k"), &team(4));
    }

    #[test]
    fn checks_refuse_bad_changes() {
        let v = VersionedShardMap::new(map(), Version(0), 100);
        let known = |t: StorageTeamId| t.0 <= 5;
        assert_eq!(v.check(&[set_shard(b"k", team(4))], known), Ok(()));
        assert_eq!(
            v.check(&[set_shard(b"k", team(9))], known),
            Err(ShardMapError::UnknownTeam(StorageTeamId(9)))
        );
        let garbage = Mutation::SetValue {
            key: key_servers_key(b"k"),
            value: Bytes::from_static(b"\x07"),
        };
        assert!(matches!(
            v.check(&[garbage], known),
            Err(ShardMapError::Malformed(_))
        ));
        let wipe = Mutation::ClearRange {
            begin: key_servers_key(b""),
            end: key_servers_key(b"z"),
        };
        assert_eq!(
            v.check(&[wipe], known),
            Err(ShardMapError::RemovesFirstShard)
        );
    }
}
