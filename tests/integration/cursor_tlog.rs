//! The cursors over real `teamlog tlog` processes: every cursor kind reads
//! back what was committed (broadcast and non-broadcast), while commits are
//! still arriving (long polls), through a team-set change on the private
//! team, to the end of stream after a lock; and a `TLogSource` fails over to
//! another replica when its TLog is killed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use cursor::{
    BroadcastedStorageTeamPeekCursor, MutableTeamPeekCursor, Ordered, PeekCursor,
    StorageTeamPeekCursor, TLogSource, TLogSourceConfig, TeamSet, Unordered,
};
use proto::rpc::{RegisterTeamRequest, TLogCommitRequest, TeamBlockData};
use proto::transport::RpcClient;
use proto::{
    Mutation, StorageServerId, StorageTeamId, Subsequence, TeamBlockBuilder, Version,
    VersionedMutation,
};
use testkit::tlog_stream::VersionChain;
use testkit::ChildProcess;

const TEAMS: [StorageTeamId; 3] = [StorageTeamId(1), StorageTeamId(2), StorageTeamId(3)];
const PRIVATE: StorageTeamId = StorageTeamId(100);
const SERVER: StorageServerId = StorageServerId(1);
const COMMITS: u64 = 120;

/// One commit's writes: (team, subsequence, mutation), and the team set
/// written for `SERVER` at it, if any.
struct Writes {
    writes: Vec<(StorageTeamId, Subsequence, Mutation)>,
    team_set: Option<BTreeSet<StorageTeamId>>,
}

fn set(key: String, value: u64) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from(value.to_le_bytes().to_vec()),
    }
}

/// The writes of commit `version`: teams 1, 2, 3 on every 2nd, 3rd, 5th
/// version, a mutation on both 1 and 3 every 7th, team-set changes at 40
/// and 80.
fn writes(version: u64) -> Writes {
    let mut writes = Vec::new();
    let mut subsequence = 0;
    let mut next = || {
        subsequence += 1;
        Subsequence(subsequence)
    };
    let team_set = match version {
        40 => Some(BTreeSet::from([TEAMS[0], TEAMS[1]])),
        80 => Some(BTreeSet::from([TEAMS[1], TEAMS[2]])),
        _ => None,
    };
    if let Some(teams) = &team_set {
        let mutation = TeamSet::new(PRIVATE, teams.iter().copied()).mutation(SERVER);
        writes.push((PRIVATE, next(), mutation));
    }
    for (team, every) in TEAMS.iter().zip([2, 3, 5]) {
        if version % every == 0 {
            writes.push((*team, next(), set(format!("{team}/{version}"), version)));
        }
    }
    if version % 7 == 0 {
        let s = next();
        let mutation = set(format!("shared/{version}"), version);
        writes.push((TEAMS[0], s, mutation.clone()));
        writes.push((TEAMS[2], s, mutation));
    }
    if writes.is_empty() {
        writes.push((TEAMS[0], next(), set(format!("filler/{version}"), version)));
    }
    Writes { writes, team_set }
}

/// A commit like `workload::set_commit`, with several teams, and empty
/// versions for every other team when broadcasting.
fn commit_request((prev, version): (Version, Version), broadcast: bool) -> TLogCommitRequest {
    let mut teams = Vec::new();
    let all = TEAMS.iter().chain([&PRIVATE]);
    for team in all {
        let mut builder = TeamBlockBuilder::new(*team);
        let mut mine: Vec<_> = writes(version.0)
            .writes
            .into_iter()
            .filter(|(t, _, _)| t == team)
            .collect();
        mine.sort_by_key(|(_, s, _)| *s);
        for (_, subsequence, mutation) in &mine {
            builder
                .push(version, *subsequence, mutation)
                .expect("ordered");
        }
        if mine.is_empty() {
            if !broadcast {
                continue;
            }
            builder.push_empty_version(version).expect("fresh block");
        }
        teams.push(TeamBlockData {
            team: *team,
            data: builder.finish(),
        });
    }
    TLogCommitRequest {
        prev_version: prev,
        version,
        known_committed_version: Version::ZERO,
        teams,
    }
}

/// What a cursor over `teams` yields in `(version, subsequence, team)`
/// order; with `mutable`, a storage team's data only while it is in the
/// server's team set (initially team 1), plus the private team's.
fn expected(teams: &[StorageTeamId], mutable: bool) -> Vec<VersionedMutation> {
    let mut team_set = BTreeSet::from([TEAMS[0]]);
    let mut out = Vec::new();
    for version in 1..=COMMITS {
        let Writes {
            writes,
            team_set: change,
        } = writes(version);
        for (team, subsequence, mutation) in writes {
            let wanted = if mutable {
                team == PRIVATE || team_set.contains(&team)
            } else {
                teams.contains(&team)
            };
            if wanted {
                out.push(VersionedMutation {
                    version: Version(version),
                    subsequence,
                    team,
                    mutation,
                });
            }
        }
        if let Some(next) = change {
            team_set = next;
        }
    }
    out.sort_by_key(|m| (m.version, m.subsequence, m.team));
    out
}

/// Reads to the end of the stream, checking each batch re-iterates.
async fn drain<C: PeekCursor>(cursor: &mut C) -> Result<Vec<VersionedMutation>> {
    let mut out = Vec::new();
    while !cursor.is_end_of_stream() {
        if !cursor.remote_more_available().await? {
            continue;
        }
        let first: Vec<_> = cursor.iter().collect();
        cursor.reset();
        let again: Vec<_> = cursor.iter().collect();
        assert_eq!(first, again, "a batch re-iterates identically");
        out.extend(first);
    }
    Ok(out)
}

fn source_config() -> TLogSourceConfig {
    TLogSourceConfig {
        long_poll: Duration::from_millis(200),
        initial_backoff: Duration::from_millis(10),
        ..TLogSourceConfig::default()
    }
}

async fn start_tlog(dir: &Path) -> Result<(ChildProcess, RpcClient)> {
    let tlog = ChildProcess::spawn(crate::exe(), dir, &[]).await?;
    let client = RpcClient::connect(tlog.addr, Default::default()).await?;
    for team in TEAMS.iter().chain([&PRIVATE]) {
        let request = RegisterTeamRequest {
            team: *team,
            servers: vec![SERVER],
        };
        client.register_team(request).await?;
    }
    Ok((tlog, client))
}

/// Commits everything (each commit waits for its predecessor's
/// acknowledgement), then locks the TLog.
async fn commit_all_then_lock(client: RpcClient, broadcast: bool) -> Result<()> {
    let chain = VersionChain::default();
    for _ in 0..COMMITS {
        client
            .tlog_commit(commit_request(chain.next_pair(), broadcast))
            .await?;
    }
    client.lock().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cursor_reads_back_what_was_committed_in_both_modes() -> Result<()> {
    for broadcast in [true, false] {
        let dir = tempfile::tempdir()?;
        let (tlog, client) = start_tlog(dir.path()).await?;
        let source =
            Arc::new(TLogSource::new(source_config()).with_default_replicas(vec![tlog.addr]));
        // The cursors start before anything is committed: they long-poll
        // and follow the commits as they come.
        let committer = tokio::spawn(commit_all_then_lock(client, broadcast));

        let mut ordered =
            BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), TEAMS, Version(1))
                .with_max_bytes(512);
        let mut unordered = BroadcastedStorageTeamPeekCursor::<_, Unordered>::new(
            source.clone(),
            TEAMS,
            Version(1),
        );
        let mut mutable = MutableTeamPeekCursor::<_, Ordered>::new(
            source.clone(),
            SERVER,
            TeamSet::new(PRIVATE, [TEAMS[0]]),
            Version(1),
        )
        .with_max_bytes(256);
        let mut single = StorageTeamPeekCursor::new(source.clone(), TEAMS[1], Version(1));
        let (ordered_out, unordered_out, mutable_out, single_out) = tokio::try_join!(
            drain(&mut ordered),
            drain(&mut unordered),
            drain(&mut mutable),
            drain(&mut single),
        )?;
        committer.await??;

        let mode = if broadcast {
            "broadcast"
        } else {
            "no broadcast"
        };
        assert_eq!(ordered_out, expected(&TEAMS, false), "ordered, {mode}");
        let mut by_team = expected(&TEAMS, false);
        by_team.sort_by_key(|m| (m.version, m.team, m.subsequence));
        assert_eq!(unordered_out, by_team, "unordered, {mode}");
        assert_eq!(mutable_out, expected(&[], true), "mutable, {mode}");
        assert_eq!(
            mutable.team_set().teams,
            BTreeSet::from([TEAMS[1], TEAMS[2]])
        );
        assert_eq!(single_out, expected(&TEAMS[1..2], false), "single, {mode}");
        assert!(ordered.teams().next().is_none(), "every team retired");
        tlog.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tlog_source_fails_over_when_a_replica_dies() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let (first, first_client) = start_tlog(dirs[0].path()).await?;
    let (second, second_client) = start_tlog(dirs[1].path()).await?;
    // Both replicas hold the same commits and end the same epoch.
    commit_all_then_lock(first_client, false).await?;
    commit_all_then_lock(second_client, false).await?;

    let source = Arc::new(
        TLogSource::new(source_config()).with_team(TEAMS[0], vec![first.addr, second.addr]),
    );
    let mut cursor = StorageTeamPeekCursor::new(source, TEAMS[0], Version(1)).with_max_bytes(256);
    assert!(cursor.remote_more_available().await?);
    let mut out: Vec<_> = cursor.iter().collect();
    let before = out.len();
    first.kill9().await?;
    out.extend(drain(&mut cursor).await?);
    assert!(
        before > 0 && before < out.len(),
        "read {before} before the kill"
    );
    assert_eq!(out, expected(&TEAMS[..1], false));
    Ok(second.stop().await?)
}
