//! What a storage server may answer for: which key ranges its teams hold at
//! each version, as far as it has been told.
//!
//! ```text
//!  private team ─▶ \xff/teamSet/<me> at V   ─▶ team sets: V+1.. uses the new set
//!               └▶ \xff/keyServers/<b> at V ─▶ shard map (versioned)
//!  read(range, v) ─▶ every shard piece's source teams ∩ my team set at v ≠ ∅ ?
//! ```
//!
//! A server hears only of shard-map changes that concern its teams, so its
//! map may be stale for ranges it has nothing to do with; that never changes
//! an answer, which is only ever "one of mine" or "not mine".

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::shard_map::{ShardMap, ShardMapError, VersionedShardMap};
use proto::system_keys::USER_KEYS_END;
use proto::{Mutation, StorageTeamId, Version};

/// Key ranges `[begin, end)`, in key order.
pub type KeyRanges = Vec<(Bytes, Bytes)>;

#[derive(Clone, Debug)]
pub struct Ownership {
    map: VersionedShardMap,
    /// A set recorded at `V` holds from `V + 1` on.
    team_sets: BTreeMap<Version, BTreeSet<StorageTeamId>>,
    /// Shard-map mutations of the version being applied.
    pending: Option<(Version, Vec<Mutation>)>,
}

impl Ownership {
    /// The state as of `version`: `map` and `teams` hold from `version + 1`.
    /// The map's history is kept from the durable version on
    /// ([`Ownership::forget_before`]), however far versions jump.
    pub fn new(map: ShardMap, teams: BTreeSet<StorageTeamId>, version: Version) -> Self {
        Ownership {
            map: VersionedShardMap::new(map, version, u64::MAX),
            team_sets: BTreeMap::from([(version, teams)]),
            pending: None,
        }
    }

    /// Records a team set committed at `version`.
    pub fn set_teams(&mut self, version: Version, teams: BTreeSet<StorageTeamId>) {
        self.team_sets.insert(version, teams);
    }

    /// Queues a shard-map mutation at `version`; mutations of one version are
    /// applied together once a later version (or `settle`) arrives.
    pub fn shard_change(
        &mut self,
        version: Version,
        mutation: Mutation,
    ) -> Result<(), ShardMapError> {
        match &mut self.pending {
            Some((v, list)) if *v == version => list.push(mutation),
            _ => {
                self.settle()?;
                self.pending = Some((version, vec![mutation]));
            }
        }
        Ok(())
    }

    /// Applies the queued shard-map changes.
    pub fn settle(&mut self) -> Result<(), ShardMapError> {
        if let Some((version, list)) = self.pending.take() {
            self.map.apply(version, &list)?;
        }
        Ok(())
    }

    /// The assignment of the shard holding `key` by the newest map.
    pub fn current_assignment_of(&self, key: &[u8]) -> proto::system_keys::ShardAssignment {
        self.map.current().assignment_of(key).clone()
    }

    /// The version whose shard-map changes are queued, if any.
    pub fn pending_version(&self) -> Option<Version> {
        self.pending.as_ref().map(|(v, _)| *v)
    }

    /// By the newest map and team set: the ranges this server must add (a
    /// destination team is one of its teams, no source team is) and the
    /// ranges it holds or adds (any team of the shard is one of its), each
    /// in key order, neighbours joined.
    pub fn ranges_now(&self) -> (KeyRanges, KeyRanges) {
        let teams = self
            .team_sets
            .last_key_value()
            .map(|(_, teams)| teams.clone())
            .unwrap_or_default();
        let mine = |list: &[StorageTeamId]| list.iter().any(|t| teams.contains(t));
        let (mut adding, mut held) = (Vec::new(), Vec::new());
        for (begin, end, assignment) in self.map.current().split(b"", USER_KEYS_END) {
            if mine(&assignment.dest) && !mine(&assignment.src) {
                adding.push((begin.clone(), end.clone()));
            }
            if mine(&assignment.src) || mine(&assignment.dest) {
                push_joined(&mut held, begin, end);
            }
        }
        (adding, held)
    }

    /// The teams this server consumes at `version`.
    pub fn teams_at(&self, version: Version) -> BTreeSet<StorageTeamId> {
        self.team_sets
            .range(..version)
            .next_back()
            .or_else(|| self.team_sets.first_key_value())
            .map(|(_, teams)| teams.clone())
            .unwrap_or_default()
    }

    /// The map that routed the mutations of `version`: a change committed at
    /// `V` routes from `V + 1` on, as the proxies tag `V` with the map before
    /// `V`'s own changes.
    fn routing_map_at(&self, version: Version) -> Option<ShardMap> {
        self.map.at(Version(version.0.saturating_sub(1)))
    }

    /// Whether every key of `[begin, end)` belongs, at `version`, to a shard
    /// whose source teams include one of this server's teams.
    pub fn owns(&self, begin: &[u8], end: &[u8], version: Version) -> bool {
        let Some(map) = self.routing_map_at(version) else {
            return false;
        };
        let teams = self.teams_at(version);
        let mine = |src: &[StorageTeamId]| src.iter().any(|t| teams.contains(t));
        if begin >= end {
            return mine(&map.assignment_of(begin).src);
        }
        map.split(begin, end).iter().all(|(_, _, a)| mine(&a.src))
    }

    /// Whether `key` is owned at `version`.
    pub fn owns_key(&self, key: &[u8], version: Version) -> bool {
        let Some(map) = self.routing_map_at(version) else {
            return false;
        };
        let teams = self.teams_at(version);
        map.assignment_of(key).src.iter().any(|t| teams.contains(t))
    }

    /// What to persist with a flush through `version`: the map and team set
    /// as of then (not later: a restart replays what follows).
    pub fn snapshot_at(&self, version: Version) -> Option<(Bytes, BTreeSet<StorageTeamId>)> {
        let map = self.map.at(version)?;
        Some((map.encode(), self.teams_at(version.next())))
    }

    /// Forgets every change above `version` (a recovery ended their
    /// generation below them).
    pub fn rollback_to(&mut self, version: Version) {
        if self.pending.as_ref().is_some_and(|(v, _)| *v > version) {
            self.pending = None;
        }
        self.map.rollback_to(version);
        self.team_sets.split_off(&version.next());
    }

    /// Forgets team sets older than `version`'s and shard-map changes
    /// below it (nothing older can be read or flushed any more). A read at
    /// `version` is judged by the map before `version`'s own changes, so
    /// those stay undoable.
    pub fn forget_before(&mut self, version: Version) {
        self.map
            .forget_through(Version(version.0.saturating_sub(1)));
        let keep = self.team_sets.range(..version).next_back().map(|(v, _)| *v);
        if let Some(keep) = keep {
            self.team_sets = self.team_sets.split_off(&keep);
        }
    }
}

/// Appends `[begin, end)`, joining it to the last range when they touch.
fn push_joined(ranges: &mut Vec<(Bytes, Bytes)>, begin: Bytes, end: Bytes) {
    match ranges.last_mut() {
        Some((_, last_end)) if *last_end == begin => *last_end = end,
        _ => ranges.push((begin, end)),
    }
}

/// The parts of `before` not in `after` (both in key order, disjoint).
pub fn ranges_left(before: &[(Bytes, Bytes)], after: &[(Bytes, Bytes)]) -> Vec<(Bytes, Bytes)> {
    let mut left = Vec::new();
    for (begin, end) in before {
        let mut from = begin.clone();
        for (b, e) in after {
            if e <= &from || b >= end {
                continue;
            }
            if *b > from {
                left.push((from.clone(), b.clone()));
            }
            from = e.clone();
            if from >= *end {
                break;
            }
        }
        if from < *end {
            left.push((from, end.clone()));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use proto::system_keys::{key_servers_key, ShardAssignment};

    use super::*;

    const A: StorageTeamId = StorageTeamId(1);
    const B: StorageTeamId = StorageTeamId(2);

    fn ownership() -> Ownership {
        let map = ShardMap::new([
            (Bytes::new(), ShardAssignment::to(A)),
            (Bytes::from_static(b"m"), ShardAssignment::to(B)),
        ])
        .unwrap();
        Ownership::new(map, BTreeSet::from([A]), Version(10))
    }

    #[test]
    fn ranges_are_owned_only_when_every_piece_is_mine() {
        let o = ownership();
        assert!(o.owns(b"a", b"l", Version(11)));
        assert!(o.owns_key(b"l", Version(11)));
        assert!(!o.owns_key(b"n", Version(11)));
        assert!(!o.owns(b"a", b"n", Version(11)));
    }

    #[test]
    fn team_sets_and_shard_moves_take_effect_after_their_version() {
        let mut o = ownership();
        o.set_teams(Version(20), BTreeSet::from([A, B]));
        assert!(!o.owns_key(b"n", Version(20)));
        assert!(o.owns_key(b"n", Version(21)));
        let mv = Mutation::SetValue {
            key: key_servers_key(b"m"),
            value: ShardAssignment::to(A).encode(),
        };
        o.set_teams(Version(29), BTreeSet::from([A]));
        o.shard_change(Version(30), mv).unwrap();
        o.settle().unwrap();
        assert!(!o.owns_key(b"n", Version(30)));
        assert!(o.owns_key(b"n", Version(31)));
        let (map, teams) = o.snapshot_at(Version(25)).unwrap();
        assert_eq!(
            ShardMap::decode(&map).unwrap().assignment_of(b"n").src,
            vec![B]
        );
        assert_eq!(teams, BTreeSet::from([A, B]));
    }

    #[test]
    fn ranges_now_name_what_to_add_and_what_is_held() {
        let mut o = ownership();
        let start = Mutation::SetValue {
            key: key_servers_key(b"m"),
            value: ShardAssignment {
                src: vec![B],
                dest: vec![A],
            }
            .encode(),
        };
        o.shard_change(Version(20), start).unwrap();
        o.settle().unwrap();
        let (adding, held) = o.ranges_now();
        let r = |b: &'static [u8], e: &'static [u8]| (Bytes::from_static(b), Bytes::from_static(e));
        assert_eq!(adding, vec![r(b"m", b"\xff")]);
        assert_eq!(held, vec![r(b"", b"\xff")]);
        assert_eq!(
            ranges_left(&held, &[r(b"c", b"d"), r(b"m", b"\xff")]),
            vec![r(b"", b"c"), r(b"d", b"m")]
        );
        assert!(ranges_left(&held, &held).is_empty());
    }

    /// A recovery's floor makes versions jump far past any window: the
    /// maps from the durable version on stay, however old the changes
    /// after it are next to the newest, until a flush passes them.
    #[test]
    fn maps_are_kept_from_the_durable_version_across_a_jump_of_versions() {
        let mut o = ownership();
        let to = |team| Mutation::SetValue {
            key: key_servers_key(b"m"),
            value: ShardAssignment::to(team).encode(),
        };
        o.shard_change(Version(20), to(A)).unwrap();
        o.settle().unwrap();
        o.shard_change(Version(10_000_020), to(B)).unwrap();
        o.settle().unwrap();
        let src_at = |o: &Ownership, v| {
            let (map, _) = o.snapshot_at(Version(v)).unwrap();
            ShardMap::decode(&map)
                .unwrap()
                .assignment_of(b"n")
                .src
                .clone()
        };
        assert_eq!(src_at(&o, 15), vec![B]);
        assert_eq!(src_at(&o, 25), vec![A]);
        assert_eq!(src_at(&o, 10_000_025), vec![B]);
        o.forget_before(Version(25));
        assert!(
            o.snapshot_at(Version(15)).is_none(),
            "below the durable version"
        );
        assert_eq!(src_at(&o, 25), vec![A]);
        // Durable at a version that changed the map, a read there is
        // still judged by the map before the change.
        o.forget_before(Version(10_000_020));
        assert!(o.owns_key(b"n", Version(10_000_020)));
        assert!(!o.owns_key(b"n", Version(10_000_021)));
    }

    #[test]
    fn a_rollback_forgets_team_sets_and_shard_moves_above_it() {
        let mut o = ownership();
        o.set_teams(Version(20), BTreeSet::from([A, B]));
        let mv = Mutation::SetValue {
            key: key_servers_key(b"m"),
            value: ShardAssignment::to(A).encode(),
        };
        o.shard_change(Version(30), mv.clone()).unwrap();
        o.settle().unwrap();
        o.set_teams(Version(40), BTreeSet::from([B]));
        o.rollback_to(Version(25));
        assert_eq!(o.teams_at(Version(50)), BTreeSet::from([A, B]));
        let (map, _) = o.snapshot_at(Version(50)).unwrap();
        assert_eq!(
            ShardMap::decode(&map).unwrap().assignment_of(b"n").src,
            vec![B]
        );
        // The same version numbers apply again after the rollback.
        o.shard_change(Version(30), mv).unwrap();
        o.settle().unwrap();
        assert!(o.owns_key(b"n", Version(31)));
    }
}
