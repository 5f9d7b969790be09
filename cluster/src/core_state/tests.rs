use bytes::Bytes;
use proptest::prelude::*;
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::StorageTeamId;

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn lock(end: u64, known_committed: u64) -> LockReply {
    LockReply {
        end_version: Version(end),
        known_committed_version: Version(known_committed),
    }
}

fn path() -> CommitPath {
    CommitPath {
        sequencer: addr(1),
        proxies: vec![addr(2), addr(3)],
    }
}

/// Two recoveries: generation 1 ended at 900, generation 2 current.
fn two_generations() -> CoreState {
    let first = CoreState::initial()
        .recovered(
            GenerationEnd {
                version: Version::ZERO,
                locked: vec![],
            },
            vec![addr(10), addr(11), addr(12)],
            2,
            BTreeSet::new(),
        )
        .with_commit_path(path());
    first
        .recovered(
            recovery_version(3, 2, &[(0, lock(900, 850)), (2, lock(950, 850))]).unwrap(),
            vec![addr(20), addr(21), addr(22)],
            2,
            BTreeSet::new(),
        )
        .with_commit_path(path())
}

#[test]
fn the_lowest_end_of_a_covering_set_is_the_recovery_version() {
    let end = recovery_version(3, 2, &[(2, lock(950, 800)), (0, lock(900, 850))]).unwrap();
    assert_eq!(end.version, Version(900));
    assert_eq!(end.locked, vec![0, 2]);
}

#[test]
fn a_set_that_misses_a_team_placement_is_refused() {
    // Teams placed on TLogs 1 and 2 have no copy among the answers.
    assert_eq!(
        recovery_version(3, 2, &[(0, lock(900, 0))]),
        Err(RecoveryVersionError::Uncovered { uncovered: vec![1] })
    );
    // Without replication every TLog must answer.
    assert_eq!(
        recovery_version(2, 1, &[(1, lock(9, 0))]),
        Err(RecoveryVersionError::Uncovered { uncovered: vec![0] })
    );
    assert!(recovery_version(2, 1, &[(1, lock(9, 0)), (0, lock(7, 0))]).is_ok());
}

#[test]
fn a_committed_version_above_the_recovery_version_is_refused() {
    assert_eq!(
        recovery_version(2, 1, &[(0, lock(100, 0)), (1, lock(200, 150))]),
        Err(RecoveryVersionError::CommittedAboveRecovery {
            index: 1,
            known_committed: Version(150),
            recovery_version: Version(100),
        })
    );
}

#[test]
fn an_index_outside_the_generation_is_refused() {
    assert_eq!(
        recovery_version(2, 1, &[(0, lock(1, 0)), (2, lock(1, 0))]),
        Err(RecoveryVersionError::NoSuchTLog { index: 2, count: 2 })
    );
}

#[test]
fn generations_chain_at_their_recovery_versions() {
    let state = two_generations();
    assert_eq!(state.epoch, 2);
    let [first, second] = &state.generations[..] else {
        panic!("two generations: {state:?}")
    };
    assert_eq!((first.epoch, first.begin_version), (1, Version::ZERO));
    assert_eq!(second.begin_version, Version(900));
    assert!(first.holds(Version(900)) && !first.holds(Version(901)));
    assert!(second.holds(Version(901)) && !second.holds(Version(900)));
    assert_eq!(state.generation_for(Version(5)).map(|g| g.epoch), Some(1));
    assert_eq!(
        state.generation_for(Version(5000)).map(|g| g.epoch),
        Some(2)
    );
    assert_eq!(state.current().map(|g| g.epoch), Some(2));
    // Only the locked TLogs of an ended generation are read.
    assert_eq!(first.readable_tlogs(), vec![(0, addr(10)), (2, addr(12))]);
    assert_eq!(second.readable_tlogs().len(), 3);
    assert_eq!(
        first.summary(),
        "generation 1: versions (0, 900], 3 TLogs, ended, read from TLogs [0, 2]"
    );
    assert_eq!(
        second.summary(),
        "generation 2: versions (900, …], 3 TLogs, current"
    );
}

#[test]
fn a_generation_that_never_had_a_commit_path_is_dropped_at_the_next_recovery() {
    let state = two_generations();
    let uncommitted = state.recovered(
        recovery_version(3, 2, &[(0, lock(900, 0)), (1, lock(900, 0))]).unwrap(),
        vec![addr(30)],
        1,
        BTreeSet::new(),
    );
    // Generation 3 never got a commit path; a recovery replacing it keeps
    // its begin and forgets it.
    let again = uncommitted.recovered(
        GenerationEnd {
            version: Version(900),
            locked: vec![],
        },
        vec![addr(40)],
        1,
        BTreeSet::new(),
    );
    let epochs: Vec<u64> = again.generations.iter().map(|g| g.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 4]);
    assert_eq!(again.generations[2].begin_version, Version(900));
    assert_eq!(CoreState::decode(&again.encode()), Ok(again));
}

/// Each generation's versions start above anything the one before could
/// have left uncommitted: its versions ran at most MAX_VERSIONS_AHEAD past
/// its end or its own floor, whichever is higher.
#[test]
fn each_generation_hands_out_versions_above_the_tail_the_one_before_could_leave() {
    let state = two_generations();
    let [first, second] = &state.generations[..] else {
        panic!("two generations");
    };
    assert_eq!(first.floor, Version::ZERO, "nothing came before the first");
    // The first ended at 900, far above its floor.
    assert_eq!(second.floor, Version(900 + MAX_VERSIONS_AHEAD + 1));
    // The second ends where it began, nothing committed: its floor counts.
    let third = state.recovered(
        GenerationEnd {
            version: Version(900),
            locked: vec![0, 1],
        },
        vec![addr(30)],
        1,
        BTreeSet::new(),
    );
    let floor = third.current().unwrap().floor;
    assert_eq!(floor, Version(second.floor.0 + MAX_VERSIONS_AHEAD + 1));
    assert_eq!(third.current().unwrap().begin_version, Version(900));
    // Never given a commit path, the third handed out nothing: the one
    // replacing it keeps its floor.
    let fourth = third.recovered(
        GenerationEnd {
            version: Version(900),
            locked: vec![],
        },
        vec![addr(40)],
        1,
        BTreeSet::new(),
    );
    assert_eq!(fourth.current().unwrap().floor, floor);
    assert_eq!(CoreState::decode(&fourth.encode()), Ok(fourth));
}

/// The versions a generation skipped read as its begin; its own versions,
/// and those before it, as themselves.
#[test]
fn the_versions_a_generation_skipped_read_as_its_begin() {
    let state = two_generations();
    let second = state.current().unwrap();
    let (begin, floor) = (second.begin_version, second.floor);
    assert_eq!(second.unskipped(begin), begin);
    assert_eq!(second.unskipped(begin.next()), begin);
    assert_eq!(second.unskipped(floor), begin);
    assert_eq!(second.unskipped(floor.next()), floor.next());
    assert_eq!(second.unskipped(Version(begin.0 - 1)), Version(begin.0 - 1));
}

/// A core state written before generations had floors reads as floors
/// at zero: the next recovery counts from the end alone.
#[test]
fn a_core_state_without_floors_decodes() {
    let state = two_generations();
    let mut json: serde_json::Value = serde_json::from_slice(&state.encode()).unwrap();
    for generation in json["generations"].as_array_mut().unwrap() {
        generation.as_object_mut().unwrap().remove("floor");
    }
    let decoded = CoreState::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert!(decoded.generations.iter().all(|g| g.floor == Version::ZERO));
}

#[test]
fn retiring_drops_only_ended_generations_wholly_popped_that_every_server_left() {
    let state = two_generations();
    assert_eq!(state.retired_below(Version(899), 2).generations.len(), 2);
    // Popped, but a server still follows generation 1: it may have read
    // past its end and not know it yet.
    assert_eq!(state.retired_below(Version(900), 1).generations.len(), 2);
    let retired = state.retired_below(Version(900), 2);
    assert_eq!(retired.generations.len(), 1);
    assert_eq!(retired.current().map(|g| g.epoch), Some(2));
    assert_eq!(CoreState::decode(&retired.encode()), Ok(retired));
}

/// A one-shard map on team `team`.
fn snapshot(version: u64, team: u64) -> ShardMapSnapshot {
    let map = ShardMap::new([(Bytes::new(), ShardAssignment::to(StorageTeamId(team)))]).unwrap();
    ShardMapSnapshot::new(Version(version), &map)
}

#[test]
fn the_shard_map_is_kept_across_recoveries_and_never_before_the_newest_generation() {
    let state = two_generations().with_shard_map(snapshot(900, 3));
    assert_eq!(CoreState::decode(&state.encode()), Ok(state.clone()));
    // A checkpoint moves it on within the generation.
    let later = state.with_shard_map(snapshot(1200, 4));
    assert_eq!(CoreState::decode(&later.encode()), Ok(later.clone()));
    let next = later.recovered(
        recovery_version(3, 2, &[(0, lock(1500, 1400)), (1, lock(1600, 1400))]).unwrap(),
        vec![addr(30), addr(31), addr(32)],
        2,
        BTreeSet::new(),
    );
    assert_eq!(next.shard_map, later.shard_map);
    // Recorded before the recovery reads the changes up to 1500: refused.
    assert!(matches!(
        CoreState::decode(&next.encode()),
        Err(CoreStateError::Inconsistent(_))
    ));
    let read = next.with_shard_map(snapshot(1500, 4));
    assert_eq!(CoreState::decode(&read.encode()), Ok(read.clone()));
    let mut no_first_shard = read.clone();
    no_first_shard.shard_map.as_mut().unwrap().shards.clear();
    assert!(matches!(
        CoreState::decode(&no_first_shard.encode()),
        Err(CoreStateError::Inconsistent(_))
    ));
}

#[test]
fn encoding_round_trips() {
    let state = two_generations();
    assert_eq!(CoreState::decode(&state.encode()), Ok(state.clone()));
    assert_eq!(CoreState::from_register(&state.encode()), Ok(state));
    // A register never written holds the state of a cluster never recovered.
    assert_eq!(CoreState::from_register(b""), Ok(CoreState::initial()));
    assert!(CoreState::from_register(b"{").is_err());
    let initial = CoreState::initial();
    assert_eq!(CoreState::decode(&initial.encode()), Ok(initial));
}

#[test]
fn other_formats_and_garbage_are_refused() {
    assert!(matches!(
        CoreState::decode(b"{\"format\":\"teamlog-core-state 2\"}"),
        Err(CoreStateError::Format { .. })
    ));
    assert!(matches!(
        CoreState::decode(b"\x00\xffnot json"),
        Err(CoreStateError::Malformed(_))
    ));
    let text = String::from_utf8(two_generations().encode().to_vec()).unwrap();
    let extra = text.replacen("\"epoch\":2,", "\"epoch\":2,\"surprise\":1,", 1);
    assert!(matches!(
        CoreState::decode(extra.as_bytes()),
        Err(CoreStateError::Malformed(_))
    ));
}

#[test]
fn inconsistent_states_are_refused() {
    let good = two_generations();
    let mut broken_chain = good.clone();
    broken_chain.generations[1].begin_version = Version(901);
    let mut open_middle = good.clone();
    open_middle.generations[0].end = None;
    let mut wrong_epoch = good.clone();
    wrong_epoch.epoch = 7;
    let mut uncovered = good.clone();
    uncovered.generations[0].end.as_mut().unwrap().locked = vec![0];
    let mut no_tlogs = good.clone();
    no_tlogs.generations[1].tlogs.clear();
    for bad in [broken_chain, open_middle, wrong_epoch, uncovered, no_tlogs] {
        assert!(
            matches!(
                CoreState::decode(&bad.encode()),
                Err(CoreStateError::Inconsistent(_))
            ),
            "{bad:?}"
        );
    }
}

proptest! {
    /// Whatever the TLogs' ends (each at or above the highest acknowledged
    /// version, since acknowledgement needs them all), a recovery version
    /// from any covering set keeps every acknowledged commit and is held by
    /// every locked TLog.
    #[test]
    fn the_recovery_version_keeps_every_acknowledged_commit(
        acked in 0u64..1000,
        extra in proptest::collection::vec(0u64..50, 1..7),
        answered in proptest::collection::vec(any::<bool>(), 7),
        replication in 1usize..4,
    ) {
        let count = extra.len();
        let replication = replication.min(count);
        let locked: Vec<(usize, LockReply)> = (0..count)
            .filter(|i| answered[*i])
            .map(|i| (i, lock(acked + extra[i], acked)))
            .collect();
        match recovery_version(count, replication, &locked) {
            Ok(end) => {
                prop_assert!(end.version.0 >= acked);
                for (_, reply) in &locked {
                    prop_assert!(end.version <= reply.end_version);
                }
            }
            Err(RecoveryVersionError::Uncovered { uncovered }) => {
                prop_assert!(!uncovered.is_empty());
                for start in uncovered {
                    for k in 0..replication {
                        prop_assert!(!answered[(start + k) % count]);
                    }
                }
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

#[test]
fn a_generation_records_the_servers_it_leaves_out_and_decodes_them() {
    let state = two_generations();
    assert!(state.current().unwrap().excluded_servers.is_empty());
    assert!(
        !String::from_utf8(state.encode().to_vec())
            .unwrap()
            .contains("excluded_servers"),
        "a generation without exclusions encodes as before"
    );
    let next = state.recovered(
        GenerationEnd {
            version: Version(900),
            locked: vec![0, 1],
        },
        vec![addr(30), addr(31), addr(32)],
        2,
        BTreeSet::from([21]),
    );
    assert_eq!(
        next.current().unwrap().excluded_servers,
        BTreeSet::from([21])
    );
    assert_eq!(
        next.current().unwrap().summary(),
        "generation 3: versions (900, …], 3 TLogs, recovering, leaves out storage servers {21}"
    );
    assert_eq!(CoreState::decode(&next.encode()), Ok(next));
}
