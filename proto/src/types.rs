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

/// How far past its committed version (or its floor) a sequencer hands
/// out versions: ten seconds of them. A generation's uncommitted tail is
/// thereby bounded, and the next generation's versions start above it
/// (`cluster::core_state`).
pub const MAX_VERSIONS_AHEAD: u64 = 10_000_000;

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

/// The largest value a key may hold: a set of a longer value is refused,
/// and an append that would grow a value past it leaves the value as it was.
pub const MAX_VALUE_BYTES: usize = 100_000;

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
    /// Appends `suffix` to the value of `key` (an absent key counts as
    /// empty), unless the result would exceed [`MAX_VALUE_BYTES`]: then the
    /// value stays as it was. The storage server computes the result when
    /// it applies the mutation, so concurrent appends never conflict.
    AppendIfFits {
        key: Bytes,
        suffix: Bytes,
    },
}

impl Mutation {
    /// Bytes of keys and values this mutation carries.
    pub fn payload_len(&self) -> usize {
        let (a, b) = self.operands();
        a.len() + b.len()
    }

    /// The key a mutation changes, or the first key of the range it clears.
    pub fn first_key(&self) -> &Bytes {
        self.operands().0
    }

    /// The byte that names this kind of mutation in the wire and log
    /// formats, and its two operands in their order there.
    pub fn encode(&self) -> (u8, &Bytes, &Bytes) {
        let (a, b) = self.operands();
        let kind = match self {
            Mutation::SetValue { .. } => MUTATION_KIND_SET_VALUE,
            Mutation::ClearRange { .. } => MUTATION_KIND_CLEAR_RANGE,
            Mutation::AppendIfFits { .. } => MUTATION_KIND_APPEND_IF_FITS,
        };
        (kind, a, b)
    }

    /// The mutation a kind byte and its operands name; `None` for a kind
    /// this version does not know.
    pub fn decode(kind: u8, a: Bytes, b: Bytes) -> Option<Mutation> {
        Some(match kind {
            MUTATION_KIND_SET_VALUE => Mutation::SetValue { key: a, value: b },
            MUTATION_KIND_CLEAR_RANGE => Mutation::ClearRange { begin: a, end: b },
            MUTATION_KIND_APPEND_IF_FITS => Mutation::AppendIfFits { key: a, suffix: b },
            _ => return None,
        })
    }

    /// Whether `kind` names a mutation this version knows.
    pub fn is_known_kind(kind: u8) -> bool {
        matches!(
            kind,
            MUTATION_KIND_SET_VALUE | MUTATION_KIND_CLEAR_RANGE | MUTATION_KIND_APPEND_IF_FITS
        )
    }

    fn operands(&self) -> (&Bytes, &Bytes) {
        match self {
            Mutation::SetValue { key, value } => (key, value),
            Mutation::ClearRange { begin, end } => (begin, end),
            Mutation::AppendIfFits { key, suffix } => (key, suffix),
        }
    }
}

const MUTATION_KIND_SET_VALUE: u8 = 1;
const MUTATION_KIND_CLEAR_RANGE: u8 = 2;
const MUTATION_KIND_APPEND_IF_FITS: u8 = 3;

/// `value` with `suffix` appended, or `None` when the result would exceed
/// [`MAX_VALUE_BYTES`] (the value then stays as it was).
pub fn append_if_fits(value: Option<&[u8]>, suffix: &[u8]) -> Option<Bytes> {
    let value = value.unwrap_or_default();
    if value.len() + suffix.len() > MAX_VALUE_BYTES {
        return None;
    }
    let mut appended = Vec::with_capacity(value.len() + suffix.len());
    appended.extend_from_slice(value);
    appended.extend_from_slice(suffix);
    Some(Bytes::from(appended))
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
    fn every_mutation_kind_decodes_to_what_was_encoded() {
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        for mutation in [
            Mutation::SetValue {
                key: a.clone(),
                value: b.clone(),
            },
            Mutation::ClearRange {
                begin: a.clone(),
                end: b.clone(),
            },
            Mutation::AppendIfFits {
                key: a.clone(),
                suffix: b.clone(),
            },
        ] {
            let (kind, x, y) = mutation.encode();
            assert!(Mutation::is_known_kind(kind));
            assert_eq!(
                Mutation::decode(kind, x.clone(), y.clone()),
                Some(mutation.clone())
            );
        }
        assert_eq!(Mutation::decode(0, a.clone(), b.clone()), None);
        assert!(!Mutation::is_known_kind(4));
    }

    #[test]
    fn an_append_that_would_not_fit_leaves_the_value() {
        assert_eq!(append_if_fits(None, b"x"), Some(Bytes::from_static(b"x")));
        assert_eq!(
            append_if_fits(Some(b"ab"), b"c"),
            Some(Bytes::from_static(b"abc"))
        );
        let full = vec![0u8; MAX_VALUE_BYTES];
        assert_eq!(
            append_if_fits(Some(&full), b""),
            Some(Bytes::from(full.clone()))
        );
        assert_eq!(append_if_fits(Some(&full), b"x"), None);
    }

    #[test]
    fn version_next_saturates() {
        assert_eq!(Version(7).next(), Version(8));
        assert_eq!(Version::MAX.next(), Version::MAX);
    }
}
