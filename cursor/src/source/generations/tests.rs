use bytes::Bytes;
use futures::executor::block_on;
use proptest::prelude::*;
use proto::{Mutation, Subsequence, VersionedMutation};

use super::*;
use crate::source::{BroadcastMode, MemorySource};
use crate::{BroadcastedStorageTeamPeekCursor, Fetched, Ordered, PeekCursor};

const A: StorageTeamId = StorageTeamId(1);
const B: StorageTeamId = StorageTeamId(2);

fn set(key: String) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from_static(b"v"),
    }
}

fn key_of(m: &VersionedMutation) -> String {
    String::from_utf8_lossy(m.mutation.first_key()).into_owned()
}

fn route(
    epoch: u64,
    begin: u64,
    end: Option<u64>,
    source: Arc<MemorySource>,
) -> GenerationRoute<MemorySource> {
    GenerationRoute {
        epoch,
        begin: Version(begin),
        end: end.map(Version),
        source,
    }
}

fn memory(teams: &[StorageTeamId]) -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::new(BroadcastMode::NoBroadcast));
    for team in teams {
        source.add_team(*team);
    }
    source
}

/// What one generation's TLogs got: commits up to its recovery version,
/// which committed, then a tail that never did.
#[derive(Clone, Debug)]
struct GenerationPlan {
    committed: Vec<(u64, bool)>,
    tail: Vec<(u64, bool)>,
}

fn plans() -> impl Strategy<Value = Vec<GenerationPlan>> {
    let commits = || proptest::collection::vec((1u64..4, any::<bool>()), 0..8);
    proptest::collection::vec(
        (commits(), commits()).prop_map(|(committed, tail)| GenerationPlan { committed, tail }),
        1..5,
    )
}

/// Builds the generations (each on its own memory TLogs, versions as
/// gaps from the previous one) and the mutations a reader must see.
fn build(plans: &[GenerationPlan]) -> (Vec<GenerationRoute<MemorySource>>, Vec<(u64, String)>) {
    let mut routes = Vec::new();
    let mut expected = Vec::new();
    let mut begin = 0u64;
    for (g, plan) in plans.iter().enumerate() {
        let source = memory(&[A, B]);
        let current = g + 1 == plans.len();
        let mut version = begin;
        let commit = |version: u64, on_a: bool, kept: bool, expected: &mut Vec<(u64, String)>| {
            let key = format!("g{g}v{version}");
            let team = if on_a { A } else { B };
            source
                .commit(
                    Version(version),
                    &[(team, Subsequence(1), set(key.clone()))],
                )
                .unwrap();
            if kept {
                expected.push((version, key));
            }
        };
        for (gap, on_a) in &plan.committed {
            version += gap;
            commit(version, *on_a, true, &mut expected);
        }
        // The recovery version is at or below every locked TLog's end.
        let end = version;
        let mut tail = version;
        for (gap, on_a) in &plan.tail {
            tail += gap;
            commit(tail, *on_a, current, &mut expected);
        }
        if current {
            routes.push(route(g as u64 + 1, begin, None, source));
        } else {
            source.lock();
            routes.push(route(g as u64 + 1, begin, Some(end), source));
            begin = end;
        }
    }
    (routes, expected)
}

fn read_all(source: GenerationSource<MemorySource>, max_bytes: u32) -> Vec<(u64, String)> {
    let mut cursor =
        BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(Arc::new(source), [A, B], Version(1))
            .with_max_bytes(max_bytes);
    let mut seen = Vec::new();
    loop {
        match block_on(cursor.fetch()).expect("every generation answers") {
            Fetched::Mutations | Fetched::Progress => {
                seen.extend(cursor.iter().map(|m| (m.version.0, key_of(&m))));
            }
            Fetched::Nothing => return seen,
            Fetched::EndOfStream => panic!("the stream across generations never ends"),
        }
    }
}

proptest! {
    /// A cursor reads every generation's committed versions once, in
    /// order, and nothing of the tails that recoveries cut off, though the
    /// next generation reuses those version numbers.
    #[test]
    fn a_cursor_crosses_generations_without_loss_or_repeat(
        plans in plans(),
        max_bytes in prop_oneof![Just(1u32), Just(64), Just(1 << 20)],
    ) {
        let (routes, expected) = build(&plans);
        let seen = read_all(GenerationSource::new(routes), max_bytes);
        prop_assert_eq!(seen, expected);
    }
}

#[test]
fn an_ended_generation_counts_everything_to_its_end_committed() {
    let old = memory(&[A]);
    for v in [3, 5, 9] {
        old.commit(Version(v), &[(A, Subsequence(1), set(format!("k{v}")))])
            .unwrap();
    }
    old.lock();
    let source = GenerationSource::new(vec![
        route(1, 0, Some(5), old),
        route(2, 5, None, memory(&[A])),
    ]);
    let reply = block_on(source.peek(A, Version(1), 1 << 20)).unwrap();
    assert_eq!(reply.blocks.len(), 2);
    assert_eq!(reply.end, Version(6));
    assert!(!reply.end_of_stream);
    assert_eq!(reply.known_committed_version, Version(5));
    assert_eq!(reply.max_known_version, Version(5));
}

#[test]
fn a_block_that_straddles_the_recovery_version_is_cut() {
    let old = memory(&[A]);
    let mut builder = TeamBlockBuilder::new(A);
    builder
        .push(Version(4), Subsequence(1), &set("in".into()))
        .unwrap();
    builder.push_empty_version(Version(5)).unwrap();
    builder
        .push(Version(7), Subsequence(1), &set("out".into()))
        .unwrap();
    old.commit_blocks(Version(7), vec![(A, builder.finish())])
        .unwrap();
    old.lock();
    let source = GenerationSource::new(vec![
        route(1, 0, Some(5), old),
        route(2, 5, None, memory(&[A])),
    ]);
    let reply = block_on(source.peek(A, Version(1), 1 << 20)).unwrap();
    let block = reply.blocks[0].parse().unwrap();
    assert_eq!(
        block.versions().collect::<Vec<_>>(),
        [Version(4), Version(5)]
    );
}

#[test]
fn a_locked_current_generation_means_waiting_for_the_next() {
    let current = memory(&[A]);
    current
        .commit(Version(2), &[(A, Subsequence(1), set("k".into()))])
        .unwrap();
    current.lock();
    let source = GenerationSource::new(vec![route(1, 0, None, current.clone())]);
    let error = block_on(source.peek(A, Version(3), 1 << 20)).unwrap_err();
    assert!(error.is_retryable(), "{error}");
    // Once the recovery ends it at 2, the next generation takes over.
    source.set_generations(vec![
        route(1, 0, Some(2), current),
        route(2, 2, None, memory(&[A])),
    ]);
    assert_eq!(source.newest_epoch(), Some(2));
    let reply = block_on(source.peek(A, Version(3), 1 << 20)).unwrap();
    assert!(reply.blocks.is_empty() && !reply.end_of_stream);
}

#[test]
fn versions_no_generation_holds_are_refused_by_what_happened_to_them() {
    let source = GenerationSource::<MemorySource>::new(Vec::new());
    assert!(block_on(source.peek(A, Version(1), 1))
        .unwrap_err()
        .is_retryable());
    let old = memory(&[A]);
    old.commit(Version(20), &[]).unwrap();
    old.lock();
    source.set_generations(vec![route(4, 10, Some(20), old)]);
    assert_eq!(
        block_on(source.peek(A, Version(10), 1)),
        Err(SourceError::Popped {
            begin: Version(10),
            popped: Some(Version(11))
        })
    );
    // After the last ended generation, before its successor is known.
    assert!(block_on(source.peek(A, Version(21), 1))
        .unwrap_err()
        .is_retryable());
}

#[test]
fn a_team_the_current_generation_does_not_know_yet_is_worth_waiting_for() {
    let ended = memory(&[A]);
    ended.commit(Version(5), &[]).unwrap();
    ended.lock();
    let source = GenerationSource::new(vec![
        route(1, 0, Some(5), ended),
        route(2, 5, None, memory(&[])),
    ]);
    let error = block_on(source.peek(A, Version(6), 1 << 20)).unwrap_err();
    assert!(error.is_retryable(), "{error}");
    // An ended generation that lacks the team will never have it.
    assert_eq!(
        block_on(source.peek(B, Version(1), 1 << 20)),
        Err(SourceError::UnknownTeam)
    );
}

/// A source whose peeks never answer: a TLog's long poll with nothing new,
/// or a lost TLog's retries.
struct Silent;

impl PeekSource for Silent {
    fn peek(
        &self,
        _team: StorageTeamId,
        _begin: Version,
        _max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        std::future::pending()
    }
}

#[test]
fn an_interrupt_ends_peeks_in_flight_and_to_come_until_acknowledged() {
    use futures::FutureExt;

    let source = GenerationSource::new(vec![GenerationRoute {
        epoch: 1,
        begin: Version(0),
        end: None,
        source: Arc::new(Silent),
    }]);
    assert!(source.interrupted().now_or_never().is_none());
    let mut in_flight = Box::pin(source.peek(A, Version(1), 1));
    assert!((&mut in_flight).now_or_never().is_none());

    source.interrupt();
    let error = block_on(in_flight).unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(source.interrupted().now_or_never().is_some());
    let seen = source.interrupts();
    assert!(block_on(source.peek(A, Version(1), 1))
        .unwrap_err()
        .is_retryable());

    // The owner read the generations again: peeks go through once more.
    source.acknowledge(seen);
    assert!(source.interrupted().now_or_never().is_none());
    assert!(source.peek(A, Version(1), 1).now_or_never().is_none());
    // An interrupt asked for while the owner read is not taken back by it.
    source.interrupt();
    source.acknowledge(seen);
    assert!(source.interrupted().now_or_never().is_some());
}

fn versions_of(reply: &PeekReply) -> Vec<u64> {
    reply
        .blocks
        .iter()
        .flat_map(|block| {
            let parsed = block.parse().unwrap();
            parsed.entries().map(|e| e.version().0).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_generation_read_while_open_that_ends_asks_the_reader_to_roll_back_once() {
    let first = memory(&[A]);
    for v in 1..=5 {
        first
            .commit(Version(v), &[(A, Subsequence(1), set(format!("k{v}")))])
            .unwrap();
    }
    let source = GenerationSource::new(vec![route(1, 0, None, first.clone())]);
    let reply = block_on(source.peek(A, Version(1), 1 << 20)).unwrap();
    assert_eq!(versions_of(&reply), vec![1, 2, 3, 4, 5]);
    assert_eq!(source.take_rollback(), None);

    // Whoever installs the recovery's routes, the reader learns of it,
    // and reads nothing more, of any generation, until it rolls back.
    let second = memory(&[A]);
    second
        .commit(Version(13), &[(A, Subsequence(1), set("k13".into()))])
        .unwrap();
    source.set_generations(vec![
        route(1, 0, Some(3), first.clone()),
        route(2, 3, None, second),
    ]);
    let held = block_on(source.peek(A, Version(6), 1 << 20));
    assert!(
        matches!(&held, Err(SourceError::Unavailable { reason, .. }) if reason.contains("rolls back first")),
        "{held:?}"
    );
    assert_eq!(source.take_rollback(), Some(Version(3)));
    assert_eq!(source.take_rollback(), None);
    let reply = block_on(source.peek(A, Version(4), 1 << 20)).unwrap();
    assert_eq!(versions_of(&reply), vec![13]);

    // A reader that the open generation never took past its end (it
    // started above it, from a copy at a newer version) owes nothing.
    source.set_generations(vec![route(1, 0, None, first.clone())]);
    source.restart_reader();
    let nowhere = block_on(source.peek(A, Version(9), 1 << 20)).unwrap();
    assert!(nowhere.end <= Version(9) && nowhere.blocks.is_empty());
    source.set_generations(vec![
        route(1, 0, Some(3), first.clone()),
        route(2, 3, None, memory(&[A])),
    ]);
    assert_eq!(source.take_rollback(), None);

    // A reader that starts over from committed data owes nothing.
    source.set_generations(vec![route(1, 0, None, first.clone())]);
    block_on(source.peek(A, Version(1), 1 << 20)).unwrap();
    source.restart_reader();
    source.set_generations(vec![route(1, 0, Some(3), first)]);
    assert_eq!(source.take_rollback(), None);
}

/// A memory source whose peeks wait for the test to let them through.
struct Gated {
    inner: Arc<MemorySource>,
    gate: tokio::sync::Semaphore,
}

impl PeekSource for Gated {
    async fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> Result<PeekReply, SourceError> {
        let _pass = self.gate.acquire().await.expect("the gate stays open");
        self.inner.peek(team, begin, max_bytes).await
    }
}

#[test]
fn a_peek_whose_generation_ends_while_it_is_out_is_cut_at_the_end() {
    use futures::FutureExt;

    let tlogs = memory(&[A]);
    for v in 1..=5 {
        tlogs
            .commit(Version(v), &[(A, Subsequence(1), set(format!("k{v}")))])
            .unwrap();
    }
    let gated = Arc::new(Gated {
        inner: tlogs,
        gate: tokio::sync::Semaphore::new(0),
    });
    let open = |end: Option<u64>| GenerationRoute {
        epoch: 1,
        begin: Version(0),
        end: end.map(Version),
        source: gated.clone(),
    };
    let source = GenerationSource::new(vec![open(None)]);
    let mut out = Box::pin(source.peek(A, Version(1), 1 << 20));
    assert!((&mut out).now_or_never().is_none());
    source.set_generations(vec![open(Some(2))]);
    gated.gate.add_permits(1);
    let reply = block_on(out).unwrap();
    assert_eq!(versions_of(&reply), vec![1, 2]);
    assert_eq!(reply.end, Version(3));
    // Nothing past the end reached the reader: nothing to roll back.
    assert_eq!(source.take_rollback(), None);
}
