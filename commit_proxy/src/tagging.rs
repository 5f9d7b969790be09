//! Tagging: turns one version's client commits into team message blocks.
//!
//! ```text
//!  commits (in order) ─▶ each mutation ─▶ user key/range: the shard map's teams
//!                                      └▶ system key: the private teams of the
//!                                         servers it concerns (every server for
//!                                         a shard-map change), and the metadata
//!                                         team (recruited commit paths)
//!  subsequences number the pieces 1, 2, 3, ... in commit order
//! ```
//!
//! A clear range spanning several shards is split at shard boundaries, one
//! piece per shard, each piece with its own subsequence. A piece sent to
//! several teams (source and destination during a move) carries the same
//! subsequence to each.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::system_keys::parse_key_servers_key;
use proto::team_set::parse_team_set_key;
use proto::{
    is_system_key, BlockError, Mutation, StorageTeamId, Subsequence, TeamBlockBuilder, Version,
};

use cluster::topology::Topology;
use proto::shard_map::ShardMap;

/// One version's blocks, and the metadata the resolver must order.
#[derive(Debug, Default)]
pub struct TaggedVersion {
    pub blocks: BTreeMap<StorageTeamId, Bytes>,
    /// The system-key mutations, in commit order.
    pub metadata: Vec<Mutation>,
}

pub fn tag_version(
    map: &ShardMap,
    topology: &Topology,
    version: Version,
    commits: &[Vec<Mutation>],
) -> Result<TaggedVersion, BlockError> {
    let mut builders: BTreeMap<StorageTeamId, TeamBlockBuilder> = BTreeMap::new();
    let mut metadata = Vec::new();
    let mut subsequence = 0u32;
    let mut emit = |teams: &mut dyn Iterator<Item = StorageTeamId>, piece: &Mutation| {
        subsequence += 1;
        for team in teams {
            builders
                .entry(team)
                .or_insert_with(|| TeamBlockBuilder::new(team))
                .push(version, Subsequence(subsequence), piece)?;
        }
        Ok::<(), BlockError>(())
    };
    for mutation in commits.iter().flatten() {
        match mutation {
            metadata_mutation if is_system_key(mutation.first_key()) => {
                let teams = concerned_private_teams(topology, metadata_mutation);
                emit(&mut teams.into_iter(), metadata_mutation)?;
                metadata.push(metadata_mutation.clone());
            }
            Mutation::SetValue { key, .. } | Mutation::AppendIfFits { key, .. } => {
                emit(&mut map.assignment_of(key).teams(), mutation)?;
            }
            Mutation::ClearRange { begin, end } => {
                for (piece_begin, piece_end, assignment) in map.split(begin, end) {
                    let piece = Mutation::ClearRange {
                        begin: piece_begin,
                        end: piece_end,
                    };
                    emit(&mut assignment.teams(), &piece)?;
                }
            }
        }
    }
    let blocks = builders
        .into_iter()
        .map(|(team, builder)| (team, builder.finish()))
        .collect();
    Ok(TaggedVersion { blocks, metadata })
}

/// The private teams of the servers a system mutation concerns: for a
/// shard-map change, every storage server; for a team set, the server
/// itself. And the metadata team, which a recovery reads.
///
/// Every server keeps the whole map: a server that becomes a destination
/// must know where the moving shard ends, and the split that made that
/// end concerned only the teams that held the shard then.
fn concerned_private_teams(topology: &Topology, mutation: &Mutation) -> BTreeSet<StorageTeamId> {
    let key = mutation.first_key();
    let servers: Vec<_> = if let Some(server) = parse_team_set_key(key) {
        vec![server]
    } else if parse_key_servers_key(key).is_some() {
        topology.private_teams.keys().copied().collect()
    } else {
        Vec::new()
    };
    servers
        .iter()
        .filter_map(|s| topology.private_teams.get(s).copied())
        .chain(topology.metadata_team)
        .collect()
}

#[cfg(test)]
mod tests {
    use proto::system_keys::{key_servers_key, ShardAssignment, METADATA_TEAM};
    use proto::team_set::team_set_key;
    use proto::{BlockEntry, StorageServerId, TeamBlock};

    use super::*;
    use crate::test_topology::sample;

    fn map() -> ShardMap {
        ShardMap::new([
            (Bytes::new(), ShardAssignment::to(StorageTeamId(1))),
            (
                Bytes::from_static(b"m"),
                ShardAssignment {
                    src: vec![StorageTeamId(2)],
                    dest: vec![StorageTeamId(3)],
                },
            ),
        ])
        .unwrap()
    }

    fn set(key: &[u8]) -> Mutation {
        Mutation::SetValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::from_static(b"v"),
        }
    }

    fn entries(tagged: &TaggedVersion, team: u64) -> Vec<(u32, Mutation)> {
        let Some(bytes) = tagged.blocks.get(&StorageTeamId(team)) else {
            return Vec::new();
        };
        TeamBlock::parse(bytes.clone())
            .unwrap()
            .entries()
            .map(|e| match e {
                BlockEntry::Message(m) => (m.subsequence.0, m.mutation),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn mutations_go_to_their_shards_teams_in_commit_order() {
        let clear = Mutation::ClearRange {
            begin: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"z"),
        };
        let commits = vec![vec![set(b"b"), set(b"n")], vec![clear]];
        let tagged = tag_version(&map(), &sample(), Version(7), &commits).unwrap();
        let piece = |b: &'static [u8], e: &'static [u8]| Mutation::ClearRange {
            begin: Bytes::from_static(b),
            end: Bytes::from_static(e),
        };
        assert_eq!(
            entries(&tagged, 1),
            vec![(1, set(b"b")), (3, piece(b"a", b"m"))]
        );
        // Source and destination of the moving shard both get its pieces.
        let moving = vec![(2, set(b"n")), (4, piece(b"m", b"z"))];
        assert_eq!(entries(&tagged, 2), moving);
        assert_eq!(entries(&tagged, 3), moving);
        assert!(tagged.metadata.is_empty());
    }

    #[test]
    fn system_mutations_reach_the_private_teams_of_the_servers_they_concern() {
        // Every server hears of a shard-map change, so that a server that
        // later becomes a destination knows where the shard ends.
        let team_set = Mutation::SetValue {
            key: team_set_key(StorageServerId(20)),
            value: Bytes::from_static(b"x"),
        };
        let shard = Mutation::SetValue {
            key: key_servers_key(b"c"),
            value: ShardAssignment::to(StorageTeamId(3)).encode(),
        };
        let commits = vec![vec![team_set.clone()], vec![set(b"a"), shard.clone()]];
        let tagged = tag_version(&map(), &sample(), Version(9), &commits).unwrap();
        for private in [1010, 1011, 1021, 1030, 1031] {
            assert_eq!(
                entries(&tagged, private),
                vec![(3, shard.clone())],
                "{private}"
            );
        }
        assert_eq!(
            entries(&tagged, 1020),
            vec![(1, team_set.clone()), (3, shard.clone())]
        );
        assert!(entries(&tagged, METADATA_TEAM.0).is_empty());
        assert_eq!(tagged.metadata, vec![team_set, shard]);
    }

    #[test]
    fn a_recruited_commit_path_also_sends_every_system_mutation_to_the_metadata_team() {
        let mut topology = sample();
        topology.metadata_team = Some(METADATA_TEAM);
        let shard = Mutation::SetValue {
            key: key_servers_key(b"c"),
            value: ShardAssignment::to(StorageTeamId(3)).encode(),
        };
        let commits = vec![vec![set(b"a")], vec![shard.clone(), set(b"d")]];
        let tagged = tag_version(&map(), &topology, Version(9), &commits).unwrap();
        assert_eq!(entries(&tagged, METADATA_TEAM.0), vec![(2, shard.clone())]);
        assert_eq!(entries(&tagged, 1030), vec![(2, shard)]);
    }
}
