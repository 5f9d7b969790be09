//! The shard map as of one version, as the core state keeps it: what a
//! generation's proxies start from. Recoveries and the controller's
//! checkpoints carry it forward by the shard-map changes the metadata
//! team holds.
//!
//! ```text
//!  snapshot at v ── changes in (v, w], read from the metadata team ──▶ snapshot at w
//!  generation e's proxies route from the snapshot at e's recovery version
//! ```

use proto::key_text::{escape, unescape};
use proto::shard_map::{ShardMap, ShardMapError, VersionedShardMap};
use proto::system_keys::ShardAssignment;
use proto::{Mutation, StorageTeamId, Version};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardSnapshotError {
    #[error("shard map snapshot at {version}: key {begin:?} is not valid key text")]
    Key { version: Version, begin: String },
    #[error("shard map snapshot at {version}: {source}")]
    Map {
        version: Version,
        source: ShardMapError,
    },
    #[error("shard-map changes at {change} are not after the snapshot at {version}")]
    Stale { change: Version, version: Version },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMapSnapshot {
    /// Every shard-map change at or below this version is in `shards`.
    pub version: Version,
    pub shards: Vec<SnapshotShard>,
}

/// One shard: its first key (key text, `proto::key_text`) and teams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotShard {
    pub begin: String,
    pub src: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dest: Vec<u64>,
}

impl ShardMapSnapshot {
    pub fn new(version: Version, map: &ShardMap) -> Self {
        let ids = |teams: &[StorageTeamId]| teams.iter().map(|t| t.0).collect();
        let shards = map
            .entries()
            .map(|(begin, a)| SnapshotShard {
                begin: escape(begin),
                src: ids(&a.src),
                dest: ids(&a.dest),
            })
            .collect();
        ShardMapSnapshot { version, shards }
    }

    pub fn map(&self) -> Result<ShardMap, ShardSnapshotError> {
        let teams = |ids: &[u64]| ids.iter().map(|t| StorageTeamId(*t)).collect();
        let mut entries = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let begin = unescape(&shard.begin).map_err(|_| ShardSnapshotError::Key {
                version: self.version,
                begin: shard.begin.clone(),
            })?;
            let assignment = ShardAssignment {
                src: teams(&shard.src),
                dest: teams(&shard.dest),
            };
            entries.push((begin, assignment));
        }
        ShardMap::new(entries).map_err(|source| self.map_error(source))
    }

    /// The snapshot at `through`: this one with `changes` (each version's
    /// system mutations, in version order, all above this snapshot's
    /// version and at or below `through`) applied.
    pub fn advanced(
        &self,
        through: Version,
        changes: &[(Version, Vec<Mutation>)],
    ) -> Result<Self, ShardSnapshotError> {
        if let Some((change, _)) = changes
            .iter()
            .find(|(v, _)| *v <= self.version || *v > through)
        {
            return Err(ShardSnapshotError::Stale {
                change: *change,
                version: self.version,
            });
        }
        let mut map = VersionedShardMap::new(self.map()?, self.version, 0);
        for (version, mutations) in changes {
            map.apply(*version, mutations)
                .map_err(|source| self.map_error(source))?;
        }
        Ok(ShardMapSnapshot::new(
            through.max(self.version),
            map.current(),
        ))
    }

    /// The moves in flight, one line each: the shard, its source and
    /// destination teams.
    pub fn moves(&self) -> Vec<String> {
        let mut ends: Vec<String> = self
            .shards
            .iter()
            .skip(1)
            .map(|s| s.begin.clone())
            .collect();
        ends.push(escape(proto::system_keys::USER_KEYS_END));
        self.shards
            .iter()
            .zip(ends)
            .filter(|(shard, _)| !shard.dest.is_empty())
            .map(|(shard, end)| {
                format!(
                    "moving [{}, {end}) from teams {:?} to {:?}",
                    shard.begin, shard.src, shard.dest
                )
            })
            .collect()
    }

    fn map_error(&self, source: ShardMapError) -> ShardSnapshotError {
        ShardSnapshotError::Map {
            version: self.version,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::system_keys::key_servers_key;

    use super::*;

    fn team(id: u64) -> ShardAssignment {
        ShardAssignment::to(StorageTeamId(id))
    }

    fn sample() -> ShardMap {
        ShardMap::new([
            (Bytes::new(), team(1)),
            (Bytes::from_static(b"m\xff\x00"), team(2)),
        ])
        .unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_through_json_with_binary_keys() {
        let snapshot = ShardMapSnapshot::new(Version(7), &sample());
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: ShardMapSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.map().unwrap(), sample());
    }

    #[test]
    fn changes_advance_a_snapshot_in_version_order_and_stale_ones_are_refused() {
        let snapshot = ShardMapSnapshot::new(Version(10), &sample());
        let moving = ShardAssignment {
            src: vec![StorageTeamId(1)],
            dest: vec![StorageTeamId(3)],
        };
        let changes = vec![
            (
                Version(12),
                vec![Mutation::SetValue {
                    key: key_servers_key(b"c"),
                    value: moving.encode(),
                }],
            ),
            (
                Version(15),
                vec![Mutation::SetValue {
                    key: key_servers_key(b"c"),
                    value: team(3).encode(),
                }],
            ),
        ];
        let next = snapshot.advanced(Version(20), &changes).unwrap();
        assert_eq!(next.version, Version(20));
        let map = next.map().unwrap();
        assert_eq!(map.assignment_of(b"d"), &team(3));
        assert_eq!(map.assignment_of(b"b"), &team(1));
        let halfway = snapshot.advanced(Version(13), &changes[..1]).unwrap();
        assert_eq!(halfway.map().unwrap().assignment_of(b"c"), &moving);
        assert_eq!(
            halfway.moves(),
            vec!["moving [c, m\\xff\\x00) from teams [1] to [3]".to_owned()]
        );
        assert!(next.moves().is_empty());
        assert!(matches!(
            next.advanced(Version(30), &changes),
            Err(ShardSnapshotError::Stale { .. })
        ));
        assert!(matches!(
            snapshot.advanced(Version(14), &changes),
            Err(ShardSnapshotError::Stale { .. })
        ));
        let no_first = ShardMapSnapshot {
            version: Version(1),
            shards: Vec::new(),
        };
        assert!(matches!(
            no_first.map(),
            Err(ShardSnapshotError::Map { .. })
        ));
    }
}
