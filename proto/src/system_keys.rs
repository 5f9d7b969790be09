//! The system key space (`\xff...`): where cluster metadata lives, and how it
//! is encoded. Metadata changes are ordinary commits of these keys, so every
//! change happens at a version.
//!
//! ```text
//!  \xff/keyServers/<begin>  →  ShardAssignment { src teams, dest teams }
//!      the shard starting at <begin> runs to the next keyServers entry
//!  \xff/teamSet/<server:u64 BE>  →  TeamSet (see `team_set`)
//!      routed to that server's private team; its cursor follows it
//! ```
//!
//! In a cluster whose commit path is recruited, every system mutation also
//! goes to the [`METADATA_TEAM`] on the TLogs, which a recovery reads to
//! carry the shard map into the next generation.

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{StorageServerId, StorageTeamId};

pub const KEY_SERVERS_PREFIX: &[u8] = b"\xff/keyServers/";

/// The end of the user key space: every user key sorts below it.
pub const USER_KEYS_END: &[u8] = b"\xff";

const ASSIGNMENT_FORMAT: u8 = 1;

/// The team that carries every system mutation of a recruited commit path,
/// so that a recovery can read each generation's shard-map changes from
/// its locked TLogs. No storage server reads it.
pub const METADATA_TEAM: StorageTeamId = StorageTeamId(u64::MAX);

/// Who pops the [`METADATA_TEAM`]: the cluster controller, once the core
/// state holds the shard map as of the popped version.
pub const METADATA_READER: StorageServerId = StorageServerId(u64::MAX);

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SystemKeyError {
    #[error("shard assignment value is malformed: {0}")]
    MalformedAssignment(&'static str),
}

/// The key of the shard-map entry for the shard starting at `begin`.
pub fn key_servers_key(begin: &[u8]) -> Bytes {
    let mut key = BytesMut::with_capacity(KEY_SERVERS_PREFIX.len() + begin.len());
    key.put_slice(KEY_SERVERS_PREFIX);
    key.put_slice(begin);
    key.freeze()
}

/// The first key after every shard-map key.
pub fn key_servers_end() -> Bytes {
    let mut end = KEY_SERVERS_PREFIX.to_vec();
    *end.last_mut().expect("the prefix is not empty") += 1;
    Bytes::from(end)
}

/// The shard begin a shard-map key names, if `key` is one.
pub fn parse_key_servers_key(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(KEY_SERVERS_PREFIX)
}

/// Which teams hold a shard. While a move is in flight both the source and
/// the destination teams get its mutations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShardAssignment {
    pub src: Vec<StorageTeamId>,
    pub dest: Vec<StorageTeamId>,
}

impl ShardAssignment {
    pub fn to(team: StorageTeamId) -> Self {
        ShardAssignment {
            src: vec![team],
            dest: Vec::new(),
        }
    }

    /// Every team that receives the shard's mutations: sources, then
    /// destinations, without repeats.
    pub fn teams(&self) -> impl Iterator<Item = StorageTeamId> + '_ {
        let dest = self.dest.iter().filter(|t| !self.src.contains(t));
        self.src.iter().chain(dest).copied()
    }

    /// `format:u8 | n:u32 | src:u64^n | m:u32 | dest:u64^m`, little-endian.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(9 + 8 * (self.src.len() + self.dest.len()));
        out.put_u8(ASSIGNMENT_FORMAT);
        for list in [&self.src, &self.dest] {
            out.put_u32_le(list.len() as u32);
            for team in list {
                out.put_u64_le(team.0);
            }
        }
        out.freeze()
    }

    pub fn decode(mut value: &[u8]) -> Result<Self, SystemKeyError> {
        let malformed = SystemKeyError::MalformedAssignment;
        let (&format, rest) = value.split_first().ok_or(malformed("empty"))?;
        if format != ASSIGNMENT_FORMAT {
            return Err(malformed("unknown format"));
        }
        value = rest;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let (count, rest) = value
                .split_first_chunk::<4>()
                .ok_or(malformed("truncated"))?;
            let count = u32::from_le_bytes(*count) as usize;
            value = rest;
            if value.len() < count.saturating_mul(8) {
                return Err(malformed("truncated"));
            }
            for chunk in value[..count * 8].chunks_exact(8) {
                let id = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
                list.push(StorageTeamId(id));
            }
            value = &value[count * 8..];
        }
        if !value.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        let [src, dest] = lists;
        if src.is_empty() {
            return Err(malformed("a shard needs a source team"));
        }
        Ok(ShardAssignment { src, dest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_round_trip_and_refuse_malformed_values() {
        let a = ShardAssignment {
            src: vec![StorageTeamId(1), StorageTeamId(2)],
            dest: vec![StorageTeamId(2), StorageTeamId(7)],
        };
        let bytes = a.encode();
        assert_eq!(ShardAssignment::decode(&bytes), Ok(a.clone()));
        for cut in 0..bytes.len() {
            assert!(ShardAssignment::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(ShardAssignment::decode(&long).is_err());
        assert!(ShardAssignment::decode(&ShardAssignment::default().encode()).is_err());
        let teams: Vec<_> = a.teams().collect();
        assert_eq!(
            teams,
            vec![StorageTeamId(1), StorageTeamId(2), StorageTeamId(7)]
        );
    }

    #[test]
    fn shard_keys_name_their_begin() {
        let key = key_servers_key(b"apple");
        assert_eq!(parse_key_servers_key(&key), Some(&b"apple"[..]));
        assert_eq!(parse_key_servers_key(b"\xff/other"), None);
    }
}
