//! Checks a client commit before it joins a batch, so a bad commit is
//! refused whole and nothing of it is ever written.

use proto::rpc::{ClientCommitRequest, ErrorCode, ErrorReply};
use proto::system_keys::{parse_key_servers_key, KEY_SERVERS_PREFIX, USER_KEYS_END};
use proto::team_set::parse_team_set_key;
use proto::{is_system_key, Mutation};

/// Size limits of one commit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_commit_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: proto::MAX_KEY_BYTES,
            max_value_bytes: proto::MAX_VALUE_BYTES,
            max_commit_bytes: 10 << 20,
        }
    }
}

/// Refuses empty commits, oversized keys, values and commits, inverted
/// ranges, and system keys (unless an admin tool asks, and then only the
/// system keys this version understands); and read ranges outside the
/// system keys, where the resolver checks conflicts.
pub fn validate(request: &ClientCommitRequest, limits: &Limits) -> Result<(), ErrorReply> {
    if request.mutations.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::EmptyCommit,
            "a commit needs at least one mutation",
        ));
    }
    for (i, range) in request.read_ranges.iter().enumerate() {
        if range.begin > range.end {
            return Err(ErrorReply::new(
                ErrorCode::InvalidRange,
                format!("read range {i} begins after it ends"),
            ));
        }
        if !request.allow_system_keys || range.begin.as_ref() < USER_KEYS_END {
            return Err(ErrorReply::new(
                ErrorCode::SystemKey,
                format!(
                    "read range {i}: conflicts are checked over system keys only, for admin tools"
                ),
            ));
        }
    }
    let mut total = 0usize;
    for (i, mutation) in request.mutations.iter().enumerate() {
        total += mutation.payload_len();
        let key_error = |what: &str, len: usize| {
            ErrorReply::new(
                ErrorCode::KeyTooLarge,
                format!(
                    "mutation {i}: {what} of {len} bytes exceeds {} bytes",
                    limits.max_key_bytes
                ),
            )
        };
        match mutation {
            Mutation::SetValue { key, value: bytes }
            | Mutation::AppendIfFits { key, suffix: bytes } => {
                let set = matches!(mutation, Mutation::SetValue { .. });
                if key.len() > limits.max_key_bytes {
                    return Err(key_error("key", key.len()));
                }
                if bytes.len() > limits.max_value_bytes {
                    return Err(ErrorReply::new(
                        ErrorCode::ValueTooLarge,
                        format!(
                            "mutation {i}: {} of {} bytes exceeds {} bytes",
                            if set { "value" } else { "suffix" },
                            bytes.len(),
                            limits.max_value_bytes
                        ),
                    ));
                }
                if is_system_key(key) {
                    // No system key holds a value that grows.
                    let understood = set
                        && (parse_key_servers_key(key).is_some()
                            || parse_team_set_key(key).is_some());
                    check_system(request, i, understood)?;
                }
            }
            Mutation::ClearRange { begin, end } => {
                for bound in [begin, end] {
                    if bound.len() > limits.max_key_bytes {
                        return Err(key_error("range bound", bound.len()));
                    }
                }
                if begin > end {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidRange,
                        format!("mutation {i}: clear range begins after it ends"),
                    ));
                }
                if end.as_ref() > USER_KEYS_END {
                    let within_shard_map = begin.starts_with(KEY_SERVERS_PREFIX)
                        && (end.starts_with(KEY_SERVERS_PREFIX)
                            || end.as_ref() == proto::system_keys::key_servers_end().as_ref());
                    check_system(request, i, within_shard_map)?;
                }
            }
        }
    }
    if total > limits.max_commit_bytes {
        return Err(ErrorReply::new(
            ErrorCode::CommitTooLarge,
            format!(
                "commit of {total} bytes exceeds {} bytes",
                limits.max_commit_bytes
            ),
        ));
    }
    Ok(())
}

fn check_system(
    request: &ClientCommitRequest,
    i: usize,
    understood: bool,
) -> Result<(), ErrorReply> {
    if !request.allow_system_keys {
        return Err(ErrorReply::new(
            ErrorCode::SystemKey,
            format!("mutation {i} writes the system key range (keys starting with \\xff)"),
        ));
    }
    if !understood {
        return Err(ErrorReply::new(
            ErrorCode::SystemKey,
            format!("mutation {i} writes a system key this cluster does not understand"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::rpc::KeyRange;
    use proto::system_keys::{key_servers_key, ShardAssignment};
    use proto::team_set::team_set_key;
    use proto::{StorageServerId, StorageTeamId};

    use super::*;

    fn commit(mutations: Vec<Mutation>, allow_system_keys: bool) -> ClientCommitRequest {
        ClientCommitRequest {
            mutations,
            allow_system_keys,
            ..ClientCommitRequest::default()
        }
    }

    fn set(key: &[u8], value_len: usize) -> Mutation {
        Mutation::SetValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::from(vec![0; value_len]),
        }
    }

    fn clear(begin: &[u8], end: &[u8]) -> Mutation {
        Mutation::ClearRange {
            begin: Bytes::copy_from_slice(begin),
            end: Bytes::copy_from_slice(end),
        }
    }

    fn append(key: &[u8], suffix_len: usize) -> Mutation {
        Mutation::AppendIfFits {
            key: Bytes::copy_from_slice(key),
            suffix: Bytes::from(vec![0; suffix_len]),
        }
    }

    fn code(request: ClientCommitRequest) -> Option<ErrorCode> {
        validate(&request, &Limits::default()).err().map(|e| e.code)
    }

    #[test]
    fn ordinary_commits_pass() {
        assert_eq!(
            code(commit(
                vec![
                    set(b"a", 10),
                    clear(b"a", b"b"),
                    clear(b"", b"\xff"),
                    append(b"a", 5)
                ],
                false
            )),
            None
        );
    }

    #[test]
    fn each_kind_of_bad_commit_gets_its_own_error() {
        assert_eq!(code(commit(vec![], false)), Some(ErrorCode::EmptyCommit));
        assert_eq!(
            code(commit(vec![set(&[b'k'; 10_001], 1)], false)),
            Some(ErrorCode::KeyTooLarge)
        );
        assert_eq!(
            code(commit(vec![set(b"k", 100_001)], false)),
            Some(ErrorCode::ValueTooLarge)
        );
        assert_eq!(
            code(commit(vec![append(&[b'k'; 10_001], 1)], false)),
            Some(ErrorCode::KeyTooLarge)
        );
        assert_eq!(
            code(commit(vec![append(b"k", 100_001)], false)),
            Some(ErrorCode::ValueTooLarge)
        );
        assert_eq!(
            code(commit(vec![clear(b"b", b"a")], false)),
            Some(ErrorCode::InvalidRange)
        );
        assert_eq!(
            code(commit(vec![set(b"\xffk", 1)], false)),
            Some(ErrorCode::SystemKey)
        );
        assert_eq!(
            code(commit(vec![clear(b"a", b"\xff\x01")], false)),
            Some(ErrorCode::SystemKey)
        );
        let big: Vec<_> = (0..110)
            .map(|i| set(format!("k{i}").as_bytes(), 100_000))
            .collect();
        assert_eq!(code(commit(big, false)), Some(ErrorCode::CommitTooLarge));
    }

    #[test]
    fn admin_commits_may_write_the_system_keys_this_cluster_understands() {
        let shard = Mutation::SetValue {
            key: key_servers_key(b"m"),
            value: ShardAssignment::to(StorageTeamId(2)).encode(),
        };
        let team_set = set(&team_set_key(StorageServerId(3)), 20);
        assert_eq!(code(commit(vec![shard.clone(), team_set], true)), None);
        assert_eq!(code(commit(vec![shard], false)), Some(ErrorCode::SystemKey));
        assert_eq!(
            code(commit(vec![set(b"\xff/other", 1)], true)),
            Some(ErrorCode::SystemKey)
        );
        // No system key holds a value that grows, an admin's or not.
        assert_eq!(
            code(commit(
                vec![append(&team_set_key(StorageServerId(3)), 1)],
                true
            )),
            Some(ErrorCode::SystemKey)
        );
        let unshard = Mutation::ClearRange {
            begin: key_servers_key(b"m"),
            end: key_servers_key(b"n"),
        };
        assert_eq!(code(commit(vec![unshard], true)), None);
        assert_eq!(
            code(commit(vec![clear(b"\xff/a", b"\xff/z")], true)),
            Some(ErrorCode::SystemKey)
        );
    }

    #[test]
    fn read_ranges_must_lie_in_the_system_keys_and_come_from_admin_tools() {
        let range = |b: &'static [u8], e: &'static [u8]| KeyRange {
            begin: Bytes::from_static(b),
            end: Bytes::from_static(e),
        };
        let reading = |ranges: Vec<KeyRange>, admin: bool| ClientCommitRequest {
            read_version: proto::Version(5),
            read_ranges: ranges,
            ..commit(vec![set(b"k", 1)], admin)
        };
        let shard_map = range(b"\xff/keyServers/a", b"\xff/keyServers/c");
        assert_eq!(code(reading(vec![shard_map.clone()], true)), None);
        assert_eq!(
            code(reading(vec![shard_map], false)),
            Some(ErrorCode::SystemKey)
        );
        assert_eq!(
            code(reading(vec![range(b"a", b"\xff/x")], true)),
            Some(ErrorCode::SystemKey)
        );
        assert_eq!(
            code(reading(vec![range(b"\xff/z", b"\xff/a")], true)),
            Some(ErrorCode::InvalidRange)
        );
    }
}
