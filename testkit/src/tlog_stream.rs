//! Commits and reads straight against one TLog, without the commit path: a
//! shared version chain, commit building, and reading a team's stream back
//! to check what was acknowledged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use proto::rpc::{PeekRequest, RegisterTeamRequest, TLogCommitRequest, TeamBlockData};
use proto::transport::RpcClient;
use proto::{
    BlockEntry, Mutation, StorageTeamId, Subsequence, TeamBlock, TeamBlockBuilder, Version,
};

use crate::TestkitError;

/// Hands out `(prev_version, version)` pairs in order, like a sequencer.
#[derive(Default)]
pub struct VersionChain {
    last: Mutex<u64>,
}

impl VersionChain {
    pub fn starting_at(last: Version) -> Self {
        VersionChain {
            last: Mutex::new(last.0),
        }
    }

    pub fn next_pair(&self) -> (Version, Version) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = *last;
        *last += 1;
        (Version(prev), Version(*last))
    }
}

/// A commit that sets `key` to `value` on `team` and, when `broadcast`
/// lists other teams, tells each of them "nothing at this version".
pub fn set_commit(
    (prev, version): (Version, Version),
    team: StorageTeamId,
    key: Bytes,
    value: Bytes,
    broadcast: &[StorageTeamId],
) -> TLogCommitRequest {
    let mut teams = Vec::with_capacity(1 + broadcast.len());
    let mut builder = TeamBlockBuilder::new(team);
    builder
        .push(version, Subsequence(1), &Mutation::SetValue { key, value })
        .expect("a fresh block accepts its first message");
    teams.push(TeamBlockData {
        team,
        data: builder.finish(),
    });
    for other in broadcast.iter().filter(|t| **t != team) {
        let mut builder = TeamBlockBuilder::new(*other);
        builder
            .push_empty_version(version)
            .expect("a fresh block accepts an empty version");
        teams.push(TeamBlockData {
            team: *other,
            data: builder.finish(),
        });
    }
    TLogCommitRequest {
        prev_version: prev,
        version,
        // One TLog: what precedes a commit it takes is committed.
        known_committed_version: prev,
        teams,
    }
}

/// Registers `teams` on the TLog (with no servers yet), as proxies
/// register every team of the topology at start: a TLog takes commits only
/// for teams it knows.
pub async fn register_teams(
    client: &RpcClient,
    teams: &[StorageTeamId],
) -> Result<(), TestkitError> {
    for team in teams {
        let request = RegisterTeamRequest {
            team: *team,
            servers: Vec::new(),
        };
        client
            .register_team(request)
            .await
            .map_err(|source| TestkitError::Rpc {
                what: format!("registering {team}"),
                source,
            })?;
    }
    Ok(())
}

/// Reads `team` from `begin` until `through` and returns each version's
/// mutations (empty versions as empty lists), checking versions increase.
pub async fn read_team(
    client: &RpcClient,
    team: StorageTeamId,
    begin: Version,
    through: Version,
) -> Result<BTreeMap<Version, Vec<Mutation>>, TestkitError> {
    let mut out: BTreeMap<Version, Vec<Mutation>> = BTreeMap::new();
    for entry in read_team_entries(client, team, begin, through).await? {
        let list = out.entry(entry.version()).or_default();
        if let BlockEntry::Message(m) = entry {
            list.push(m.mutation);
        }
    }
    Ok(out)
}

/// Every entry of `team`'s stream from `begin` through `through`, in
/// stream order, checking that (version, subsequence) strictly increases.
pub async fn read_team_entries(
    client: &RpcClient,
    team: StorageTeamId,
    begin: Version,
    through: Version,
) -> Result<Vec<BlockEntry>, TestkitError> {
    let mut out: Vec<BlockEntry> = Vec::new();
    let mut next = begin;
    while next <= through {
        let reply = client
            .peek(PeekRequest {
                team,
                begin: next,
                max_bytes: 1 << 20,
                timeout_ms: 1000,
            })
            .await
            .map_err(|source| TestkitError::Rpc {
                what: format!("peeking {team} at {next}"),
                source,
            })?;
        for data in reply.blocks {
            let block = TeamBlock::parse(data.data)?;
            for entry in block.entries() {
                if entry.version() < next {
                    return Err(TestkitError::StreamOrder(format!(
                        "{team}: version {} delivered again after {next}",
                        entry.version()
                    )));
                }
                if let Some(last) = out.last() {
                    if entry.sort_key() <= last.sort_key() {
                        return Err(TestkitError::StreamOrder(format!(
                            "{team}: {:?} does not follow {:?}",
                            entry.sort_key(),
                            last.sort_key()
                        )));
                    }
                }
                if entry.version() <= through {
                    out.push(entry);
                }
            }
        }
        if reply.end <= next && reply.end_of_stream {
            break;
        }
        next = next.max(reply.end);
    }
    Ok(out)
}
