//! Specific behaviours of the cursors over a `MemorySource`: what a refill
//! fetches, empty versions, the barrier in both modes, end of stream, bad
//! data and refusals, and the iterator forms.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cursor::{
    BroadcastMode, BroadcastedStorageTeamPeekCursor, CorruptData, CursorError, Fetched,
    MemorySource, MutableTeamPeekCursor, Ordered, PeekCursor, PeekSource, SourceError,
    StorageTeamPeekCursor, TeamSet, TeamSetError, Unordered,
};
use futures::executor::block_on;
use proto::{
    Mutation, PeekReply, StorageServerId, StorageTeamId, Subsequence, TeamBlockBuilder, Version,
    VersionedMutation,
};

const A: StorageTeamId = StorageTeamId(1);
const B: StorageTeamId = StorageTeamId(2);
const C: StorageTeamId = StorageTeamId(3);

fn set(key: &str) -> Mutation {
    Mutation::SetValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"value"),
    }
}

fn key_of(m: &VersionedMutation) -> String {
    String::from_utf8_lossy(m.mutation.first_key()).into_owned()
}

fn source_with(mode: BroadcastMode, teams: &[StorageTeamId]) -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::new(mode));
    for team in teams {
        source.add_team(*team);
    }
    source
}

fn keys<C: PeekCursor>(cursor: &mut C) -> Vec<String> {
    cursor.iter().map(|m| key_of(&m)).collect()
}

#[test]
fn a_refill_fetches_only_the_dry_teams_that_hold_the_barrier() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A, B]);
    source
        .commit(Version(1), &[(B, Subsequence(1), set("b1"))])
        .unwrap();
    for version in 1..=20 {
        source
            .commit(
                Version(version + 1),
                &[(A, Subsequence(1), set(&format!("a{version}")))],
            )
            .unwrap();
    }
    // One version's block per fetch for A; B is complete through 21 at once.
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A, B], Version(1))
            .with_max_bytes(1);
    block_on(cursor.remote_more_available()).unwrap();
    assert_eq!((source.peek_count(A), source.peek_count(B)), (1, 1));
    assert_eq!(keys(&mut cursor), ["b1", "a1"]);
    for refill in 2..=5 {
        block_on(cursor.remote_more_available()).unwrap();
        assert_eq!(keys(&mut cursor).len(), 1);
        assert_eq!((source.peek_count(A), source.peek_count(B)), (refill, 1));
    }
}

#[test]
fn empty_versions_move_the_barrier_but_are_never_yielded() {
    let source = source_with(BroadcastMode::Broadcast, &[A, B]);
    source
        .commit(Version(1), &[(A, Subsequence(1), set("a1"))])
        .unwrap();
    source
        .commit(Version(2), &[(B, Subsequence(1), set("b2"))])
        .unwrap();
    source.commit(Version(3), &[]).unwrap();
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Unordered>::new(source, [A, B], Version(1));
    block_on(cursor.remote_more_available()).unwrap();
    assert_eq!(keys(&mut cursor), ["a1", "b2"]);
    assert_eq!(cursor.complete_below(), Version(4));
}

#[test]
fn a_lagging_team_holds_back_every_other_team_in_both_modes() {
    for mode in [BroadcastMode::Broadcast, BroadcastMode::NoBroadcast] {
        let source = source_with(mode, &[A, B]);
        for version in 1..=4 {
            let team = if version % 2 == 0 { A } else { B };
            source
                .commit(
                    Version(version),
                    &[(team, Subsequence(1), set(&format!("{version}")))],
                )
                .unwrap();
        }
        source.set_visible_end(B, Some(Version(3)));
        let mut cursor =
            BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A, B], Version(1));
        block_on(cursor.remote_more_available()).unwrap();
        assert_eq!(keys(&mut cursor), ["1", "2"], "{mode:?}");
        assert_eq!(cursor.complete_below(), Version(3));
        source.set_visible_end(B, None);
        block_on(cursor.remote_more_available()).unwrap();
        assert_eq!(keys(&mut cursor), ["3", "4"], "{mode:?}");
    }
}

#[test]
fn a_locked_epoch_retires_teams_after_their_tail_and_ends_the_stream() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A, B]);
    source
        .commit(Version(1), &[(A, Subsequence(1), set("a1"))])
        .unwrap();
    source
        .commit(Version(2), &[(B, Subsequence(1), set("b2"))])
        .unwrap();
    source.lock();
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A, B], Version(1));
    assert!(block_on(cursor.remote_more_available()).unwrap());
    assert!(!cursor.is_end_of_stream(), "the tail is not delivered yet");
    assert_eq!(keys(&mut cursor), ["a1", "b2"]);
    assert!(cursor.is_end_of_stream());
    assert!(!block_on(cursor.remote_more_available()).unwrap());
    assert_eq!(cursor.teams().count(), 0, "both teams retired");
    let peeks = source.peek_count(A);
    assert!(!block_on(cursor.remote_more_available()).unwrap());
    assert_eq!(source.peek_count(A), peeks, "a retired team is not peeked");
    assert_eq!(block_on(cursor.next_mutation()).unwrap(), None);
}

#[test]
fn corrupt_blocks_are_errors_not_panics() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A]);
    source
        .commit_blocks(Version(1), vec![(A, Bytes::from_static(b"\x01garbage"))])
        .unwrap();
    let mut cursor = StorageTeamPeekCursor::new(source, A, Version(1));
    let error = block_on(cursor.remote_more_available()).unwrap_err();
    assert!(matches!(
        error,
        CursorError::Corrupt {
            team: A,
            source: CorruptData::Block(_)
        }
    ));
    assert!(!error.is_retryable());

    let source = source_with(BroadcastMode::NoBroadcast, &[A]);
    let mut other = TeamBlockBuilder::new(B);
    other.push(Version(1), Subsequence(1), &set("x")).unwrap();
    source
        .commit_blocks(Version(1), vec![(A, other.finish())])
        .unwrap();
    let mut cursor = BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source, [A], Version(1));
    assert!(matches!(
        block_on(cursor.remote_more_available()),
        Err(CursorError::Corrupt {
            source: CorruptData::WrongTeam { found: B },
            ..
        })
    ));
}

#[test]
fn refusals_come_back_as_source_errors_the_caller_can_act_on() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A]);
    for version in 1..=3 {
        source
            .commit(Version(version), &[(A, Subsequence(1), set("a"))])
            .unwrap();
    }
    source.pop(A, Version(3));
    let mut cursor = StorageTeamPeekCursor::new(source.clone(), A, Version(1));
    assert_eq!(
        block_on(cursor.remote_more_available()),
        Err(CursorError::Source {
            team: A,
            begin: Version(1),
            source: SourceError::Popped {
                begin: Version(1),
                popped: Some(Version(3))
            }
        })
    );
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source, [A, C], Version(3));
    let error = block_on(cursor.remote_more_available()).unwrap_err();
    assert_eq!(error.team(), C);
    assert!(matches!(
        error,
        CursorError::Source {
            source: SourceError::UnknownTeam,
            ..
        }
    ));
}

#[test]
fn reset_keeps_an_advance_to_target_in_force() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A, B]);
    source
        .commit(
            Version(1),
            &[
                (A, Subsequence(1), set("a1")),
                (B, Subsequence(2), set("b1")),
            ],
        )
        .unwrap();
    source
        .commit(Version(2), &[(B, Subsequence(1), set("b2"))])
        .unwrap();
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source, [A, B], Version(1));
    block_on(cursor.remote_more_available()).unwrap();
    assert!(block_on(cursor.advance_to(Version(1), Subsequence(2))).unwrap());
    assert_eq!(key_of(cursor.get()), "b1");
    cursor.reset();
    assert_eq!(keys(&mut cursor), ["b1", "b2"]);
}

#[test]
fn next_mutation_fetches_when_local_data_runs_out() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A]);
    source
        .commit(Version(1), &[(A, Subsequence(1), set("a1"))])
        .unwrap();
    let mut cursor = StorageTeamPeekCursor::new(source.clone(), A, Version(1));
    let first = block_on(cursor.next_mutation())
        .unwrap()
        .expect("one mutation");
    assert_eq!(key_of(&first), "a1");
    assert_eq!(
        block_on(cursor.next_mutation()).unwrap(),
        None,
        "nothing new yet"
    );
    assert!(!cursor.is_end_of_stream());
    source
        .commit(Version(2), &[(A, Subsequence(1), set("a2"))])
        .unwrap();
    let second = block_on(cursor.next_mutation())
        .unwrap()
        .expect("the new one");
    assert_eq!(key_of(&second), "a2");
}

fn mutable_over(
    source: Arc<MemorySource>,
    private: StorageTeamId,
) -> MutableTeamPeekCursor<Arc<MemorySource>> {
    MutableTeamPeekCursor::new(
        source,
        StorageServerId(1),
        TeamSet::new(private, [A]),
        Version(1),
    )
}

#[test]
fn a_corrupt_team_set_stops_the_mutable_cursor_at_its_version() {
    let private = StorageTeamId(100);
    let source = source_with(BroadcastMode::NoBroadcast, &[private, A]);
    source
        .commit(Version(1), &[(A, Subsequence(1), set("a1"))])
        .unwrap();
    let bad = Mutation::SetValue {
        key: cursor::team_set_key(StorageServerId(1)),
        value: Bytes::from_static(b"short"),
    };
    source
        .commit(
            Version(2),
            &[
                (private, Subsequence(1), bad),
                (A, Subsequence(2), set("a2")),
            ],
        )
        .unwrap();
    source
        .commit(Version(3), &[(A, Subsequence(1), set("a3"))])
        .unwrap();
    let mut cursor = mutable_over(source, private);
    let error = block_on(cursor.remote_more_available()).unwrap_err();
    assert!(matches!(
        error,
        CursorError::Corrupt {
            source: CorruptData::TeamSet {
                version: Version(2),
                error: TeamSetError::Truncated { .. }
            },
            ..
        }
    ));
    // Versions before the bad change are still delivered; nothing from it on.
    assert_eq!(keys(&mut cursor), ["a1"]);
    assert!(
        block_on(cursor.remote_more_available()).is_err(),
        "still refused"
    );
}

#[test]
fn a_team_set_naming_another_private_team_is_refused() {
    let private = StorageTeamId(100);
    let source = source_with(BroadcastMode::Broadcast, &[private, A]);
    let change = TeamSet::new(StorageTeamId(101), [A]).mutation(StorageServerId(1));
    source
        .commit(Version(1), &[(private, Subsequence(1), change)])
        .unwrap();
    let mut cursor = mutable_over(source, private);
    assert!(matches!(
        block_on(cursor.remote_more_available()),
        Err(CursorError::Corrupt {
            source: CorruptData::TeamSet {
                error: TeamSetError::OtherPrivateTeam { .. },
                ..
            },
            ..
        })
    ));
}

#[test]
fn a_team_added_by_a_change_is_fetched_in_the_same_refill() {
    let private = StorageTeamId(100);
    let source = source_with(BroadcastMode::NoBroadcast, &[private, A, B]);
    let change = TeamSet::new(private, [A, B]).mutation(StorageServerId(1));
    source
        .commit(
            Version(1),
            &[
                (private, Subsequence(1), change),
                (B, Subsequence(2), set("b1")),
            ],
        )
        .unwrap();
    source
        .commit(Version(2), &[(B, Subsequence(1), set("b2"))])
        .unwrap();
    let mut cursor = mutable_over(source.clone(), private);
    assert!(block_on(cursor.remote_more_available()).unwrap());
    assert_eq!(
        keys(&mut cursor).len(),
        2,
        "the change and b2; b1 predates B"
    );
    assert_eq!(source.peek_count(B), 1);
    assert_eq!(
        cursor.team_set().teams.into_iter().collect::<Vec<_>>(),
        [A, B]
    );
}

#[test]
fn a_fetch_says_what_it_brought() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A, B]);
    source
        .commit(Version(1), &[(A, Subsequence(1), set("a1"))])
        .unwrap();
    let mut single = StorageTeamPeekCursor::new(source.clone(), A, Version(1));
    assert_eq!(block_on(single.fetch()), Ok(Fetched::Mutations));
    assert_eq!(keys(&mut single), ["a1"]);
    assert_eq!(block_on(single.fetch()), Ok(Fetched::Nothing));

    // B's TLog has not reached version 2: A's version 2 waits at the barrier.
    source
        .commit(Version(2), &[(A, Subsequence(1), set("a2"))])
        .unwrap();
    source.set_visible_end(B, Some(Version(2)));
    let mut merged =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A, B], Version(2));
    assert_eq!(block_on(merged.fetch()), Ok(Fetched::Progress));
    assert!(!merged.has_remaining());
    source.set_visible_end(B, None);
    assert_eq!(block_on(merged.fetch()), Ok(Fetched::Mutations));
    assert_eq!(keys(&mut merged), ["a2"]);

    source.lock();
    assert_eq!(block_on(merged.fetch()), Ok(Fetched::EndOfStream));
    assert_eq!(block_on(merged.fetch()), Ok(Fetched::EndOfStream));
    assert!(!block_on(merged.remote_more_available()).unwrap());
}

/// A memory source that refuses every peek while `failing` is set.
struct FlakySource {
    inner: Arc<MemorySource>,
    failing: AtomicBool,
}

impl PeekSource for FlakySource {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        let failing = self.failing.load(Ordering::SeqCst);
        let reply = self.inner.peek(team, begin, max_bytes);
        async move {
            if failing {
                return Err(SourceError::Unavailable {
                    attempts: 1,
                    reason: "injected".into(),
                });
            }
            reply.await
        }
    }
}

/// Fetches and consumes version 1, fails a fetch, resets, then fetches
/// version 2: the reset after the failure must not yield version 1 again.
fn reset_after_a_failed_fetch<C: PeekCursor>(
    source: &Arc<FlakySource>,
    cursor: &mut C,
    team: StorageTeamId,
) {
    source
        .inner
        .commit(Version(1), &[(team, Subsequence(1), set("v1"))])
        .unwrap();
    assert!(block_on(cursor.remote_more_available()).unwrap());
    assert_eq!(keys(cursor), ["v1"]);
    source.failing.store(true, Ordering::SeqCst);
    let error = block_on(cursor.fetch()).unwrap_err();
    assert!(error.is_retryable(), "{error}");
    cursor.reset();
    assert!(
        !cursor.has_remaining(),
        "a failed fetch ends the batch before it"
    );
    source.failing.store(false, Ordering::SeqCst);
    source
        .inner
        .commit(Version(2), &[(team, Subsequence(1), set("v2"))])
        .unwrap();
    assert_eq!(block_on(cursor.fetch()), Ok(Fetched::Mutations));
    assert_eq!(keys(cursor), ["v2"]);
    cursor.reset();
    assert_eq!(keys(cursor), ["v2"], "re-iterable until the next fetch");
}

#[test]
fn every_cursor_resets_after_a_failed_fetch_to_what_that_fetch_brought() {
    let flaky = || {
        Arc::new(FlakySource {
            inner: source_with(BroadcastMode::Broadcast, &[A]),
            failing: AtomicBool::new(false),
        })
    };
    let source = flaky();
    let mut single = StorageTeamPeekCursor::new(source.clone(), A, Version(1));
    reset_after_a_failed_fetch(&source, &mut single, A);
    let source = flaky();
    let mut merged =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A], Version(1));
    reset_after_a_failed_fetch(&source, &mut merged, A);
    let source = flaky();
    let private = StorageTeamId(50);
    source.inner.add_team(private);
    let team_set = TeamSet {
        private_team: private,
        teams: [A].into_iter().collect(),
    };
    let mut mutable = MutableTeamPeekCursor::<_, Ordered>::new(
        source.clone(),
        StorageServerId(7),
        team_set,
        Version(1),
    );
    reset_after_a_failed_fetch(&source, &mut mutable, A);
}

/// Versions of the batch the last fetch brought.
fn batch_versions<C: PeekCursor>(cursor: &mut C) -> Vec<u64> {
    let mut versions: Vec<u64> = cursor.iter().map(|m| m.version.0).collect();
    versions.dedup();
    versions
}

#[test]
fn a_version_limit_splits_what_one_peek_brought_into_batches() {
    let source = source_with(BroadcastMode::NoBroadcast, &[A, B]);
    for version in 1..=5 {
        let team = if version == 3 { B } else { A };
        source
            .commit(
                Version(version),
                &[
                    (team, Subsequence(1), set("x")),
                    (team, Subsequence(2), set("y")),
                ],
            )
            .unwrap();
    }
    let mut single = StorageTeamPeekCursor::new(source.clone(), A, Version(1)).with_max_versions(2);
    assert_eq!(block_on(single.fetch()), Ok(Fetched::Mutations));
    assert_eq!(batch_versions(&mut single), [1, 2]);
    assert_eq!(single.complete_below(), Version(4), "version 3 is not A's");
    let peeks = source.peek_count(A);
    assert_eq!(block_on(single.fetch()), Ok(Fetched::Mutations));
    single.reset();
    assert_eq!(batch_versions(&mut single), [4, 5], "re-iterable");
    assert_eq!(source.peek_count(A), peeks, "served from what was buffered");
    assert_eq!(single.complete_below(), Version(6));

    let mut merged =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), [A, B], Version(1))
            .with_max_versions(2);
    let mut batches = Vec::new();
    while merged.complete_below() < Version(6) {
        assert_eq!(block_on(merged.fetch()), Ok(Fetched::Mutations));
        let batch = batch_versions(&mut merged);
        assert_eq!(
            Version(*batch.last().unwrap() + 1),
            merged.complete_below(),
            "the barrier follows the batch"
        );
        batches.push(batch);
    }
    assert_eq!(batches, [vec![1, 2], vec![3, 4], vec![5]]);
}
