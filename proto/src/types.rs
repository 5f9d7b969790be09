//! The domain vocabulary every teamlog process shares.
//!
//! `(version, subsequence)` is the total order of all mutations in the
//! cluster: merging team streams by it reproduces the commit order exactly.

use std::fmt;

use bytes::Bytes;

/// A commit version: strictly increasing cluster-wide, handed out by the
/// sequencer, advancing about 1,000,000 per second of wall time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);
    pub const MAX: Version = Version(u64::MAX);

    /// The version right after this one, saturating at `Version::MAX`.
    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The order of a mutation inside one commit version, starting at 1 and
/// shared by all teams of that commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subsequence(pub u32);

impl fmt::Display for Subsequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A storage team: the servers that hold the same shards and consume the
/// same team stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct StorageTeamId(pub u64);

impl fmt::Display for StorageTeamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "team-{}", self.0)
    }
}

/// A storage server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct StorageServerId(pub u64);

impl fmt::Display for StorageServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ss-{}", self.0)
    }
}

/// A commit proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct ProxyId(pub u64);

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy-{}", self.0)
    }
}

/// Keys starting with this byte are system keys; user input there is refused.
pub const SYSTEM_KEY_PREFIX: u8 = 0xff;

/// The longest key the cluster takes: what its storage engine (LMDB, 511
/// bytes, less a prefix byte) can hold.
pub const MAX_KEY_BYTES: usize = 510;

/// Whether `key` lies in the system range.
pub fn is_system_key(key: &[u8]) -> bool {
    key.first() == Some(&SYSTEM_KEY_PREFIX)
}

/// The end of the single key `key` as a range: `key\x00`, the smallest key
/// after it.
pub fn key_after(key: &[u8]) -> Bytes {
    let mut end = Vec::with_capacity(key.len() + 1);
    end.extend_from_slice(key);
    end.push(0);
    Bytes::from(end)
}

/// One change to the key space.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    SetValue {
        key: Bytes,
        value: Bytes,
    },
    /// Clears every key in `[begin, end)`.
    ClearRange {
        begin: Bytes,
        end: Bytes,
    },
}

impl Mutation {
    /// Bytes of keys and values this mutation carries.
    pub fn payload_len(&self) -> usize {
        match self {
            Mutation::SetValue { key, value } => key.len() + value.len(),
            Mutation::ClearRange { begin, end } => begin.len() + end.len(),
        }
    }
}

/// A mutation at its place in the total order, on the team that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionedMutation {
    pub version: Version,
    pub subsequence: Subsequence,
    pub team: StorageTeamId,
    pub mutation: Mutation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_keys_are_recognised_by_their_first_byte() {
        assert!(is_system_key(b"\xffconf"));
        assert!(!is_system_key(b"user"));
        assert!(!is_system_key(b""));
    }

    #[test]
    fn the_key_after_a_key_is_the_key_and_a_zero_byte() {
        assert_eq!(key_after(b"a"), Bytes::from_static(b"a\x00"));
        assert_eq!(key_after(b""), Bytes::from_static(b"\x00"));
        assert!(key_after(b"a").as_ref() > b"a".as_ref());
        assert!(key_after(b"a").as_ref() < b"a\x00\x00".as_ref());
    }

    #[test]
    fn version_next_saturates() {
        assert_eq!(Version(7).next(), Version(8));
        assert_eq!(Version::MAX.next(), Version::MAX);
    }
}
