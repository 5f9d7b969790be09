//! The engine's rules, driven directly: a fake writer assigns locations and
//! reports durability, so every ordering can be forced.

use bytes::Bytes;
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, TeamBlockBuilder, Version};

use super::*;
use crate::log::RecordLocation;

const A: StorageTeamId = StorageTeamId(1);
const B: StorageTeamId = StorageTeamId(2);
/// Never registered with any harness.
const UNREGISTERED: StorageTeamId = StorageTeamId(3);
const S1: StorageServerId = StorageServerId(1);
const S2: StorageServerId = StorageServerId(2);

fn block(team: StorageTeamId, version: u64, value: &[u8]) -> Bytes {
    let mut b = TeamBlockBuilder::new(team);
    let mutation = Mutation::SetValue {
        key: Bytes::from_static(b"k"),
        value: Bytes::copy_from_slice(value),
    };
    b.push(Version(version), Subsequence(1), &mutation).unwrap();
    b.finish()
}

fn request(prev: u64, version: u64, teams: &[StorageTeamId]) -> CommitRequest {
    CommitRequest {
        prev_version: Version(prev),
        version: Version(version),
        known_committed_version: Version(prev),
        blocks: teams
            .iter()
            .map(|t| (*t, block(*t, version, b"value")))
            .collect(),
    }
}

/// Plays the writer: records appends and makes them durable on demand.
struct Harness {
    core: TLogCore<u32>,
    appended: Vec<(u64, Record)>,
    done: Vec<(u32, Result<Version, CoreError>)>,
    locks: Vec<(u32, Result<LockOutcome, CoreError>)>,
    registered: Vec<(u32, Result<(), CoreError>)>,
    removed: Vec<SegmentId>,
    segment: SegmentId,
    offset: u64,
    located: Vec<(Version, RecordLocation)>,
    located_all: Vec<(Version, RecordLocation)>,
    payloads: Vec<Bytes>,
}

impl Harness {
    fn new(config: CoreConfig) -> Self {
        Harness {
            core: TLogCore::new(config),
            appended: Vec::new(),
            done: Vec::new(),
            locks: Vec::new(),
            registered: Vec::new(),
            removed: Vec::new(),
            segment: 1,
            offset: 64,
            located: Vec::new(),
            located_all: Vec::new(),
            payloads: Vec::new(),
        }
    }

    /// A harness whose TLog knows teams A and B, registered (with no
    /// servers yet) as proxies register every team at start.
    fn with_teams(config: CoreConfig) -> Self {
        let mut h = Harness::new(config);
        for team in [A, B] {
            let location = RecordLocation {
                segment: 1,
                offset: 0,
                len: 0,
            };
            let servers = Vec::new();
            h.core
                .recover_record(location, Record::Register { team, servers });
        }
        let actions = h.core.finish_recovery();
        h.run(actions);
        h
    }

    fn run(&mut self, actions: Vec<Action<u32>>) {
        for action in actions {
            match action {
                Action::Append {
                    seq,
                    record,
                    payload,
                } => {
                    if let Record::Commit(c) = &record {
                        let payload = payload.to_bytes();
                        let location = RecordLocation {
                            segment: self.segment,
                            offset: self.offset,
                            len: payload.len() as u32,
                        };
                        self.offset += payload.len() as u64;
                        self.located.push((c.version, location));
                        self.located_all.push((c.version, location));
                        self.payloads.push(payload);
                    }
                    self.appended.push((seq, record));
                }
                Action::RemoveSegmentsBefore(id) => self.removed.push(id),
                Action::CommitDone(token, result) => self.done.push((token, result)),
                Action::LockDone(token, result) => self.locks.push((token, result)),
                Action::RegisterDone(token, result) | Action::BeginDone(token, result) => {
                    self.registered.push((token, result))
                }
            }
        }
    }

    fn commit(&mut self, request: CommitRequest, token: u32) {
        match PreparedCommit::new(request) {
            Ok(commit) => {
                let actions = self.core.commit(commit, token, 0);
                self.run(actions);
            }
            Err(e) => self.done.push((token, Err(e))),
        }
    }

    /// Everything appended so far becomes durable.
    fn sync(&mut self) {
        let through = self.appended.last().map(|(seq, _)| *seq).unwrap_or(0);
        let located = std::mem::take(&mut self.located);
        let actions = self.core.on_durable(through, &located);
        self.run(actions);
    }

    fn peek(&self, team: StorageTeamId, begin: u64) -> Result<PeekPlan, CoreError> {
        self.core.plan_peek(team, Version(begin), 1 << 20)
    }
}

fn ready(plan: Result<PeekPlan, CoreError>) -> PeekResult {
    match plan {
        Ok(PeekPlan::Ready(result)) => result,
        other => panic!("expected a ready peek, got {other:?}"),
    }
}

#[test]
fn a_commit_is_acknowledged_and_visible_only_once_durable() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A, B]), 1);
    assert!(h.done.is_empty());
    assert_eq!(h.appended.len(), 1);
    assert!(matches!(h.peek(A, 1), Ok(PeekPlan::Wait)));
    h.sync();
    assert_eq!(h.done, vec![(1, Ok(Version(5)))]);
    let result = ready(h.peek(A, 1));
    assert_eq!(result.blocks.len(), 1);
    assert_eq!(result.end, Version(6));
}

#[test]
fn an_early_commit_waits_for_its_predecessor_then_both_chain() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(5, 9, &[A]), 2);
    assert!(
        h.appended.is_empty(),
        "a commit must not be appended before its predecessor"
    );
    h.commit(request(0, 5, &[A]), 1);
    let versions: Vec<Version> = h
        .appended
        .iter()
        .map(|(_, r)| match r {
            Record::Commit(c) => c.version,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, vec![Version(5), Version(9)]);
    h.sync();
    assert_eq!(h.done, vec![(1, Ok(Version(5))), (2, Ok(Version(9)))]);
}

/// A commit that gave up on its predecessor leaves a gap in the chain,
/// reported until the log moves on.
#[test]
fn a_waiting_commit_fails_when_its_predecessor_never_comes() {
    let mut h = Harness::with_teams(CoreConfig {
        commit_wait_timeout_ms: 100,
        ..CoreConfig::default()
    });
    let commit = PreparedCommit::new(request(5, 9, &[A])).unwrap();
    let actions = h.core.commit(commit, 1, 1_000);
    h.run(actions);
    let actions = h.core.tick(1_099);
    h.run(actions);
    assert!(h.done.is_empty());
    assert_eq!(h.core.chain_gap(), None, "a commit still waiting is no gap");
    let actions = h.core.tick(1_100);
    h.run(actions);
    assert!(matches!(
        h.done.as_slice(),
        [(1, Err(CoreError::MissingPredecessor { .. }))]
    ));
    let gap = h.core.chain_gap().expect("the chain has a gap");
    assert!(gap.contains("5->9"), "{gap}");
    h.commit(request(0, 5, &[A]), 2);
    h.sync();
    assert_eq!(h.core.durable_version(), Version(5));
    assert_eq!(h.core.chain_gap(), None, "the predecessor closed the gap");
}

#[test]
fn duplicates_are_acknowledged_without_a_second_append() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    h.commit(request(0, 5, &[A]), 2);
    assert_eq!(h.appended.len(), 1);
    h.sync();
    h.commit(request(0, 5, &[A]), 3);
    assert_eq!(h.appended.len(), 1);
    let acked: Vec<u32> = h
        .done
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(acked, vec![1, 2, 3]);
    h.commit(request(2, 5, &[A]), 4);
    assert!(matches!(
        h.done.last(),
        Some((4, Err(CoreError::VersionConflict { .. })))
    ));
    assert_eq!(ready(h.peek(A, 0)).blocks.len(), 1);
}

#[test]
fn commits_that_break_the_rules_are_refused_without_effect() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    h.commit(request(3, 7, &[A]), 2);
    h.commit(request(7, 7, &[A]), 3);
    let mut wrong_version = request(5, 8, &[A]);
    wrong_version.blocks[0].1 = block(A, 9, b"x");
    h.commit(wrong_version, 4);
    let mut twice = request(5, 8, &[A]);
    twice.blocks.push(twice.blocks[0].clone());
    h.commit(twice, 5);
    let mut other_team = request(5, 8, &[A]);
    other_team.blocks[0].0 = B;
    h.commit(other_team, 6);
    assert_eq!(h.appended.len(), 1);
    assert!(matches!(
        h.done[0],
        (2, Err(CoreError::VersionConflict { .. }))
    ));
    assert!(matches!(h.done[1], (3, Err(CoreError::Malformed(_)))));
    assert!(matches!(
        h.done[2],
        (4, Err(CoreError::InvalidBlock { .. }))
    ));
    assert!(matches!(h.done[3], (5, Err(CoreError::Malformed(_)))));
    assert!(matches!(
        h.done[4],
        (6, Err(CoreError::InvalidBlock { .. }))
    ));
}

#[test]
fn lock_ends_the_epoch_after_what_was_accepted_is_durable() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    h.commit(request(9, 12, &[A]), 2);
    let actions = h.core.lock(100);
    h.run(actions);
    assert!(matches!(
        h.done.as_slice(),
        [(2, Err(CoreError::TLogStopped))]
    ));
    assert!(h.locks.is_empty(), "the lock answers only once durable");
    h.sync();
    assert_eq!(
        h.locks,
        vec![(
            100,
            Ok(LockOutcome {
                end_version: Version(5),
                known_committed_version: Version(0)
            })
        )]
    );
    h.commit(request(5, 6, &[A]), 3);
    assert!(matches!(
        h.done.last(),
        Some((3, Err(CoreError::TLogStopped)))
    ));
    let end = ready(h.peek(A, 6));
    assert!(end.end_of_stream && end.blocks.is_empty());
    let tail = ready(h.peek(A, 5));
    assert!(tail.end_of_stream && tail.blocks.len() == 1);
}

#[test]
fn memory_stays_within_budget_and_older_data_is_read_from_disk() {
    let mut h = Harness::with_teams(CoreConfig {
        memory_budget: 2_000,
        checkpoint_interval: 300,
        ..CoreConfig::default()
    });
    for v in 1..=100u64 {
        h.commit(request(v - 1, v, &[A, B]), v as u32);
        if v % 7 == 0 {
            h.sync();
        }
    }
    h.sync();
    assert!(h.core.memory_bytes() <= 2_000);
    let Ok(PeekPlan::Disk(disk)) = h.peek(A, 30) else {
        panic!("old data must come from disk");
    };
    let checkpoint = h
        .located_all
        .iter()
        .find(|(_, l)| l.offset == disk.from.offset);
    assert!(
        checkpoint.is_some_and(|(v, _)| *v <= Version(30)),
        "scan starts at or before 30"
    );
    let result = finish_disk_peek(&disk, &h.payloads).unwrap();
    assert_eq!(result.blocks.first(), Some(&block(A, 30, b"value")));
    assert_eq!(result.end, disk.memory_floor);
    let in_memory = ready(h.peek(A, disk.memory_floor.0));
    assert_eq!(in_memory.end, Version(101));
    let total = result.blocks.len() + in_memory.blocks.len();
    assert_eq!(total, 71, "versions 30..=100 once each");
}

#[test]
fn pops_discard_data_and_truncate_segments_once_every_server_passed() {
    let mut h = Harness::new(CoreConfig::default());
    let actions = h.core.register_team(A, vec![S1, S2], 0);
    h.run(actions);
    for v in 1..=4u64 {
        h.commit(request(v - 1, v, &[A]), v as u32);
        h.sync();
        h.segment += 1;
    }
    let actions = h.core.pop(A, S1, Version(4)).unwrap();
    h.run(actions);
    assert_eq!(ready(h.peek(A, 1)).popped, Version(0), "S2 has not popped");
    assert_eq!(h.core.truncation_blocker(), Some(A));
    let actions = h.core.pop(A, S2, Version(3)).unwrap();
    h.run(actions);
    assert_eq!(h.removed, vec![3], "segments holding versions 1 and 2 go");
    assert!(matches!(
        h.peek(A, 2),
        Err(CoreError::PeekBeforePopped {
            popped: Version(3),
            ..
        })
    ));
    assert_eq!(ready(h.peek(A, 3)).blocks.len(), 2);
    assert!(matches!(
        h.core.pop(B, S1, Version(1)),
        Err(CoreError::UnknownTeam(B))
    ));
    assert!(matches!(h.peek(B, 1), Err(CoreError::UnknownTeam(B))));
}

#[test]
fn poisoning_fails_every_waiting_commit_and_refuses_new_ones() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    h.commit(request(7, 9, &[A]), 2);
    let actions = h.core.on_poisoned();
    h.run(actions);
    let failed: Vec<u32> = h
        .done
        .iter()
        .filter(|(_, r)| *r == Err(CoreError::Poisoned))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(failed, vec![1, 2]);
    h.commit(request(5, 6, &[A]), 3);
    assert_eq!(h.done.last(), Some(&(3, Err(CoreError::Poisoned))));
}

#[test]
fn recovery_rebuilds_versions_pops_and_memory() {
    let mut h = Harness::new(CoreConfig::default());
    let actions = h.core.register_team(A, vec![S1], 0);
    h.run(actions);
    for v in 1..=3u64 {
        h.commit(request(v - 1, v, &[A]), v as u32);
    }
    let actions = h.core.pop(A, S1, Version(2)).unwrap();
    h.run(actions);
    h.sync();
    let mut recovered = TLogCore::<u32>::new(CoreConfig::default());
    let mut commit_locations = h.core.segments.keys().copied();
    let segment = commit_locations.next().unwrap();
    for (i, (_, record)) in h.appended.iter().enumerate() {
        let location = RecordLocation {
            segment,
            offset: 64 + i as u64 * 100,
            len: 100,
        };
        recovered.recover_record(location, record.clone());
    }
    recovered.finish_recovery();
    assert_eq!(recovered.durable_version(), Version(3));
    let result = match recovered.plan_peek(A, Version(2), 1 << 20) {
        Ok(PeekPlan::Ready(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(result.popped, Version(2));
    assert_eq!(result.blocks.len(), 2);
    assert_eq!(result.end, Version(4));
}

#[test]
fn a_registration_is_answered_only_once_durable() {
    let mut h = Harness::new(CoreConfig::default());
    let actions = h.core.register_team(A, vec![S1, S2], 7);
    h.run(actions);
    assert!(h.registered.is_empty());
    h.sync();
    assert_eq!(h.registered, vec![(7, Ok(()))]);
    let actions = h.core.on_poisoned();
    h.run(actions);
    let actions = h.core.register_team(B, vec![S1], 8);
    h.run(actions);
    assert_eq!(h.registered.last(), Some(&(8, Err(CoreError::Poisoned))));
}

#[test]
fn a_large_commit_keeps_its_blocks_and_its_record_reads_back_the_same() {
    for value_len in [100, prepared::KEEP_BLOCKS_FROM] {
        let blocks = vec![
            (A, block(A, 2, &vec![7; value_len])),
            (B, block(B, 2, b"v")),
        ];
        let prepared = PreparedCommit::new(CommitRequest {
            prev_version: Version(1),
            version: Version(2),
            known_committed_version: Version(1),
            blocks: blocks.clone(),
        })
        .unwrap();
        let kept = |(held, sent): (&(StorageTeamId, Bytes), &(StorageTeamId, Bytes))| {
            held.1.as_ptr() == sent.1.as_ptr()
        };
        let record = &prepared.record;
        if value_len >= prepared::KEEP_BLOCKS_FROM {
            assert!(record.blocks.iter().zip(&blocks).all(kept));
        } else {
            assert!(!record.blocks.iter().zip(&blocks).any(kept), "copied");
        }
        assert_eq!(record.blocks, blocks);
        assert_eq!(
            Record::decode(prepared.payload.to_bytes()).unwrap(),
            Record::Commit(record.clone())
        );
    }
}

#[test]
fn a_commit_naming_a_team_never_registered_is_refused_whole() {
    let mut h = Harness::new(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    assert_eq!(h.done, vec![(1, Err(CoreError::UnknownTeam(A)))]);
    assert!(h.appended.is_empty());
    assert!(matches!(h.peek(A, 1), Err(CoreError::UnknownTeam(A))));
    let actions = h.core.register_team(A, vec![S1], 2);
    h.run(actions);
    h.commit(request(0, 5, &[A, B]), 3);
    assert_eq!(h.done.last(), Some(&(3, Err(CoreError::UnknownTeam(B)))));
    h.commit(request(0, 5, &[A]), 4);
    h.sync();
    assert_eq!(h.done.last(), Some(&(4, Ok(Version(5)))));
}

/// A TLog back without a registration refuses the chain's next commit, and
/// no retry of it can succeed: the gap is reported at once, so that the
/// controller recovers instead of every commit after it being refused.
/// A refused commit the log is already past leaves no gap.
#[test]
fn a_refused_commit_for_an_unknown_team_leaves_a_gap_until_the_log_moves_on() {
    let mut h = Harness::with_teams(CoreConfig::default());
    h.commit(request(0, 5, &[A]), 1);
    h.sync();
    h.commit(request(0, 5, &[B, UNREGISTERED]), 2);
    assert_eq!(
        h.done.last(),
        Some(&(2, Err(CoreError::UnknownTeam(UNREGISTERED))))
    );
    assert_eq!(h.core.chain_gap(), None, "the log is past that version");

    h.commit(request(5, 9, &[A, UNREGISTERED]), 3);
    let gap = h.core.chain_gap().expect("the chain has a gap");
    assert!(
        gap.contains("5->9 refused") && gap.contains("unknown team"),
        "{gap}"
    );
    h.commit(request(5, 9, &[A]), 4);
    h.sync();
    assert_eq!(h.done.last(), Some(&(4, Ok(Version(9)))));
    assert_eq!(h.core.chain_gap(), None, "the version came after all");
}

#[test]
fn a_generation_begins_after_the_recovery_version_and_keeps_it_across_restarts() {
    let mut h = Harness::with_teams(CoreConfig::default());
    let actions = h.core.begin_at(Version(900), 1);
    h.run(actions);
    assert!(h.registered.is_empty(), "a begin answers only once durable");
    h.sync();
    assert_eq!(h.registered, vec![(1, Ok(()))]);
    // Asked again (a recruiter retrying), it answers at once.
    let actions = h.core.begin_at(Version(900), 2);
    h.run(actions);
    assert_eq!(h.registered.last(), Some(&(2, Ok(()))));
    let empty = ready(h.peek(A, 1));
    assert_eq!((empty.end, empty.blocks.len()), (Version(901), 0));
    assert_eq!(empty.known_committed_version, Version(900));
    // The first commit chains from the recovery version; one that does
    // not is refused.
    h.commit(request(0, 950, &[A]), 3);
    h.commit(request(900, 1000, &[A]), 4);
    h.sync();
    assert!(
        matches!(h.done.as_slice(), [(3, Err(_)), (4, Ok(Version(1000)))]),
        "{:?}",
        h.done
    );
    // Once the chain moved, another begin is refused.
    let actions = h.core.begin_at(Version(2000), 5);
    h.run(actions);
    assert_eq!(
        h.registered.last(),
        Some(&(
            5,
            Err(CoreError::AlreadyBegun {
                asked: Version(2000),
                last: Version(1000)
            })
        ))
    );
    // A restart replays the begin from the log.
    let mut recovered = TLogCore::<u32>::new(CoreConfig::default());
    for (i, (_, record)) in h.appended.iter().enumerate() {
        if matches!(record, Record::Commit(_)) {
            continue;
        }
        let location = RecordLocation {
            segment: 1,
            offset: 64 + i as u64 * 100,
            len: 100,
        };
        recovered.recover_record(location, record.clone());
    }
    recovered.finish_recovery();
    assert_eq!(recovered.durable_version(), Version(900));
}

#[test]
fn a_locked_tlog_never_begins_a_generation() {
    let mut h = Harness::with_teams(CoreConfig::default());
    let actions = h.core.lock(1);
    h.run(actions);
    h.sync();
    let actions = h.core.begin_at(Version(10), 2);
    h.run(actions);
    assert!(matches!(
        h.registered.last(),
        Some((2, Err(CoreError::AlreadyBegun { .. })))
    ));
}
