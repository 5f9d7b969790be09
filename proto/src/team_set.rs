//! The team-set record: which storage teams a storage server consumes.
//!
//! ```text
//! commit proxy: team_set_mutation(server, &set) ──▶ SetValue on the server's private team
//!                                                         │ (TLog stream)
//! MutableTeamPeekCursor: key == team_set_key(server) ◀────┘ TeamSet::decode(value)
//! ```
//!
//! Format:
//!
//! ```text
//! key   := b"\xff/teamSet/" | server id: u64 big-endian   (sorts by server id)
//! value := private team: u64 LE | count: u32 LE | storage team: u64 LE ^ count
//! ```
//!
//! A set committed at version `V` takes effect after `V`: teams it adds are
//! read from `V + 1`, teams it removes still deliver their mutations at `V`.

use std::collections::BTreeSet;

use crate::types::{Mutation, StorageServerId, StorageTeamId};
use bytes::{BufMut, Bytes, BytesMut};

/// The system-key prefix of every server's team-set key.
pub const TEAM_SET_KEY_PREFIX: &[u8] = b"\xff/teamSet/";

/// Why a team-set value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamSetError {
    #[error("team-set value of {len} bytes is truncated")]
    Truncated { len: usize },
    #[error("{0} trailing bytes after the team-set value")]
    TrailingBytes(usize),
    #[error("{0} appears twice in the team set")]
    DuplicateTeam(StorageTeamId),
    #[error("the team set names private team {found}, the cursor follows {expected}")]
    OtherPrivateTeam {
        expected: StorageTeamId,
        found: StorageTeamId,
    },
}

/// The server a team-set key names, if `key` is one.
pub fn parse_team_set_key(key: &[u8]) -> Option<StorageServerId> {
    let id: [u8; 8] = key.strip_prefix(TEAM_SET_KEY_PREFIX)?.try_into().ok()?;
    Some(StorageServerId(u64::from_be_bytes(id)))
}

/// The key under which `server`'s team set is written.
pub fn team_set_key(server: StorageServerId) -> Bytes {
    let mut key = BytesMut::with_capacity(TEAM_SET_KEY_PREFIX.len() + 8);
    key.put_slice(TEAM_SET_KEY_PREFIX);
    key.put_u64(server.0);
    key.freeze()
}

/// A storage server's private team and the storage teams it consumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamSet {
    pub private_team: StorageTeamId,
    pub teams: BTreeSet<StorageTeamId>,
}

impl TeamSet {
    pub fn new(
        private_team: StorageTeamId,
        teams: impl IntoIterator<Item = StorageTeamId>,
    ) -> Self {
        TeamSet {
            private_team,
            teams: teams.into_iter().collect(),
        }
    }

    /// The value bytes, teams in ascending order.
    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(8 + 4 + 8 * self.teams.len());
        value.put_u64_le(self.private_team.0);
        // A server consuming more than u32::MAX teams is not a real case; the
        // count saturates rather than wrapping into a wrong value.
        value.put_u32_le(u32::try_from(self.teams.len()).unwrap_or(u32::MAX));
        for team in &self.teams {
            value.put_u64_le(team.0);
        }
        value.freeze()
    }

    /// Parses a value; refuses truncation, trailing bytes and duplicates.
    pub fn decode(value: &[u8]) -> Result<TeamSet, TeamSetError> {
        let truncated = TeamSetError::Truncated { len: value.len() };
        let (private, rest) = value.split_first_chunk::<8>().ok_or(truncated.clone())?;
        let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(truncated.clone())?;
        let count = u32::from_le_bytes(*count) as usize;
        if rest.len() / 8 < count {
            return Err(truncated);
        }
        let mut teams = BTreeSet::new();
        for _ in 0..count {
            let (team, tail) = rest.split_first_chunk::<8>().ok_or(truncated.clone())?;
            let team = StorageTeamId(u64::from_le_bytes(*team));
            if !teams.insert(team) {
                return Err(TeamSetError::DuplicateTeam(team));
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(TeamSetError::TrailingBytes(rest.len()));
        }
        Ok(TeamSet {
            private_team: StorageTeamId(u64::from_le_bytes(*private)),
            teams,
        })
    }

    /// The mutation a commit proxy routes to `server`'s private team.
    pub fn mutation(&self, server: StorageServerId) -> Mutation {
        Mutation::SetValue {
            key: team_set_key(server),
            value: self.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn key_is_the_prefix_and_the_big_endian_server_id() {
        let key = team_set_key(StorageServerId(0x0102));
        assert_eq!(&key[..], b"\xff/teamSet/\0\0\0\0\0\0\x01\x02");
        assert!(crate::types::is_system_key(&key));
        assert!(team_set_key(StorageServerId(1)) < team_set_key(StorageServerId(256)));
        assert_eq!(parse_team_set_key(&key), Some(StorageServerId(0x0102)));
        assert_eq!(parse_team_set_key(&key[..key.len() - 1]), None);
        assert_eq!(parse_team_set_key(b"\xff/keyServers/a"), None);
    }

    #[test]
    fn value_layout_is_private_team_count_then_teams() {
        let set = TeamSet::new(StorageTeamId(9), [StorageTeamId(3), StorageTeamId(1)]);
        let mut expected = Vec::new();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(&set.encode()[..], &expected[..]);
    }

    #[test]
    fn bad_values_are_refused() {
        let good = TeamSet::new(StorageTeamId(1), [StorageTeamId(2)]).encode();
        for len in 0..good.len() {
            assert_eq!(
                TeamSet::decode(&good[..len]),
                Err(TeamSetError::Truncated { len })
            );
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(TeamSet::decode(&long), Err(TeamSetError::TrailingBytes(1)));
        let mut duplicate = Vec::new();
        duplicate.extend_from_slice(&1u64.to_le_bytes());
        duplicate.extend_from_slice(&2u32.to_le_bytes());
        duplicate.extend_from_slice(&5u64.to_le_bytes());
        duplicate.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(
            TeamSet::decode(&duplicate),
            Err(TeamSetError::DuplicateTeam(StorageTeamId(5)))
        );
        // A count far beyond the bytes present is refused before any work.
        let mut huge = 1u64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            TeamSet::decode(&huge),
            Err(TeamSetError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            private in any::<u64>(),
            teams in proptest::collection::btree_set(any::<u64>(), 0..20),
        ) {
            let set = TeamSet::new(StorageTeamId(private), teams.into_iter().map(StorageTeamId));
            prop_assert_eq!(TeamSet::decode(&set.encode()), Ok(set));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TeamSet::decode(&bytes);
        }
    }
}
