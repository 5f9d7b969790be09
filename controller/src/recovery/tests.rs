//! Recoveries against a model of the cluster: TLogs that die, answer
//! late or never, commits that reach only some TLogs, and controllers
//! that die at any step (after a write that took, too). Whatever happens,
//! every acknowledged commit stays readable from the core state, and the
//! shard map it records holds exactly the changes of committed versions.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::system_keys::{key_servers_key, ShardAssignment};
use proto::StorageTeamId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// The cluster file's map: every key on team 1.
fn initial() -> ShardMap {
    ShardMap::new([(Bytes::new(), ShardAssignment::to(StorageTeamId(1)))]).unwrap()
}

/// The shard a change at `version` starts: one per version, so the map
/// says which changes it took.
fn shard_begin(version: Version) -> String {
    format!("k{}", version.0)
}

fn shard_change(version: Version) -> Mutation {
    Mutation::SetValue {
        key: key_servers_key(shard_begin(version).as_bytes()),
        value: ShardAssignment::to(StorageTeamId(2)).encode(),
    }
}

const CONFIG: RecoveryConfig = RecoveryConfig {
    tlogs: 3,
    replication: 2,
    proxies: 2,
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Debug)]
struct ModelTLog {
    epoch: u64,
    alive: bool,
    locked: bool,
    /// The generation's versions this TLog made durable.
    versions: BTreeSet<Version>,
    last: Version,
    known_committed: Version,
}

/// The cluster around the recovery: coordinators (one register), TLogs by
/// address, the generation that accepts commits, acknowledged versions.
struct World {
    rng: StdRng,
    revision: u64,
    core: CoreState,
    tlogs: BTreeMap<SocketAddr, ModelTLog>,
    next_port: u16,
    open: Option<u64>,
    /// A generation whose chain stopped at a version not every TLog has.
    stuck: Option<u64>,
    last_version: Version,
    acked: Vec<Version>,
    /// The versions that carry a shard-map change, wherever they reached.
    changed: BTreeSet<Version>,
    /// What the configuration excludes, as the next recovery reads it.
    excluded: Option<Exclusion>,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: StdRng::seed_from_u64(seed),
            revision: 0,
            core: CoreState::initial(),
            tlogs: BTreeMap::new(),
            next_port: 1000,
            open: None,
            stuck: None,
            last_version: Version::ZERO,
            acked: Vec::new(),
            changed: BTreeSet::new(),
            excluded: None,
        }
    }

    fn current_tlogs(&self) -> Vec<SocketAddr> {
        match (self.open, self.core.current()) {
            (Some(open), Some(g)) if g.epoch == open => g.tlogs.clone(),
            _ => Vec::new(),
        }
    }

    /// Commits into the open generation: each reaches a random prefix of
    /// its TLogs (a proxy dying mid-push) and is acknowledged only when
    /// every TLog made it durable.
    fn commit_some(&mut self) {
        let tlogs = self.current_tlogs();
        if tlogs.is_empty() || self.stuck == self.open {
            return;
        }
        for _ in 0..self.rng.random_range(0..6) {
            let version = Version(self.last_version.0 + self.rng.random_range(1..5));
            let reach = if self.rng.random_bool(0.8) {
                tlogs.len()
            } else {
                self.rng.random_range(0..tlogs.len())
            };
            let acked_so_far = self.acked.last().copied().unwrap_or_default();
            let mut durable_on = 0;
            for addr in &tlogs[..reach] {
                let tlog = self.tlogs.get_mut(addr).expect("recruited");
                if tlog.alive && !tlog.locked {
                    tlog.versions.insert(version);
                    tlog.last = version;
                    tlog.known_committed = tlog.known_committed.max(acked_so_far);
                    durable_on += 1;
                }
            }
            if durable_on == 0 {
                continue;
            }
            if self.rng.random_bool(0.3) {
                self.changed.insert(version);
            }
            self.last_version = version;
            if durable_on == tlogs.len() {
                self.acked.push(version);
            } else {
                self.stuck = self.open;
                return;
            }
        }
    }

    fn kill_some(&mut self) {
        let alive: Vec<SocketAddr> = self
            .tlogs
            .iter()
            .filter(|(_, t)| t.alive)
            .map(|(a, _)| *a)
            .collect();
        if !alive.is_empty() && self.rng.random_bool(0.5) {
            let victim = alive[self.rng.random_range(0..alive.len())];
            self.tlogs.get_mut(&victim).unwrap().alive = false;
        }
    }

    /// Runs one recovery until it ends or its controller dies; returns
    /// whether it finished.
    fn recover(&mut self, death_chance: f64) -> bool {
        let (mut recovery, mut commands) =
            Recovery::start(CONFIG, initial(), self.excluded.clone(), 0);
        let mut now = 0;
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(
                guard < 1000,
                "recovery makes no progress: {:?}",
                recovery.phase()
            );
            now += 1;
            let Some(command) = commands.pop() else {
                // Waiting for locks that will never come: the runtime gives up.
                return recovery.phase() == Phase::Recovered;
            };
            let dies = self.rng.random_bool(death_chance);
            let events = self.carry_out(command, dies);
            if dies {
                return false;
            }
            for event in events {
                match recovery.handle(event, now) {
                    Ok(more) => commands.extend(more),
                    Err(e) => panic!("recovery refused a model event: {e}"),
                }
            }
        }
    }

    /// Does what a command says; a dying controller may still have made a
    /// write take (its outcome unknown to it).
    fn carry_out(&mut self, command: Command, dies: bool) -> Vec<Event> {
        match command {
            Command::ReadCoreState => vec![Event::CoreStateRead {
                revision: self.revision,
                state: self.core.clone(),
            }],
            Command::LockTLogs { epoch, mut tlogs } => {
                // Answers come in any order; some never.
                let mut events = Vec::new();
                while !tlogs.is_empty() {
                    let (index, addr) = tlogs.remove(self.rng.random_range(0..tlogs.len()));
                    let tlog = self.tlogs.get_mut(&addr).expect("recorded TLogs exist");
                    assert_eq!(tlog.epoch, epoch);
                    if !tlog.alive {
                        continue;
                    }
                    tlog.locked = true;
                    events.push(Event::TLogLocked {
                        epoch,
                        index,
                        reply: LockReply {
                            end_version: tlog.last,
                            known_committed_version: tlog.known_committed,
                        },
                    });
                }
                events
            }
            Command::ReadShardChanges {
                epoch,
                tlogs,
                after,
                through,
            } => {
                // From the first that is alive; with none, the runtime gives up.
                let Some(tlog) = tlogs.iter().map(|a| &self.tlogs[a]).find(|t| t.alive) else {
                    return Vec::new();
                };
                assert!(tlog.epoch == epoch && tlog.locked);
                assert!(tlog.last >= through, "{through} read beyond the TLog's end");
                let changes = tlog
                    .versions
                    .range(after.next()..=through)
                    .filter(|v| self.changed.contains(v))
                    .map(|v| (*v, vec![shard_change(*v)]))
                    .collect();
                vec![Event::ShardChangesRead { epoch, changes }]
            }
            Command::RecruitTLogs {
                epoch,
                begin,
                count,
            } => {
                let tlogs: Vec<SocketAddr> = (0..count)
                    .map(|_| {
                        self.next_port += 1;
                        let addr = addr(self.next_port);
                        self.tlogs.insert(
                            addr,
                            ModelTLog {
                                epoch,
                                alive: true,
                                locked: false,
                                versions: BTreeSet::new(),
                                last: begin,
                                known_committed: begin,
                            },
                        );
                        addr
                    })
                    .collect();
                vec![Event::TLogsRecruited { epoch, tlogs }]
            }
            Command::WriteCoreState {
                expected_revision,
                state,
            } => {
                let takes =
                    expected_revision == self.revision && (!dies || self.rng.random_bool(0.5));
                if !takes {
                    // A conflict: the runtime abandons this recovery.
                    return Vec::new();
                }
                assert_eq!(CoreState::decode(&state.encode()).as_ref(), Ok(&state));
                self.core = state;
                self.revision += 1;
                vec![Event::CoreStateWritten {
                    revision: self.revision,
                }]
            }
            Command::RecruitCommitPath { epoch, .. } => {
                self.next_port += 3;
                vec![Event::CommitPathRecruited {
                    epoch,
                    path: CommitPath {
                        sequencer: addr(self.next_port),
                        proxies: vec![addr(self.next_port - 1), addr(self.next_port - 2)],
                    },
                }]
            }
            Command::OpenCommitPath { epoch, .. } => {
                let recorded = self
                    .core
                    .current()
                    .is_some_and(|g| g.epoch == epoch && g.commit_path.is_some());
                assert!(recorded, "a commit path is opened only once recorded");
                self.open = Some(epoch);
                vec![Event::CommitPathOpened { epoch }]
            }
        }
    }

    /// Every acknowledged version lies in a generation of the core state
    /// that had a commit path, and every TLog a reader would use for it
    /// holds it; the TLogs a reader may use for an ended generation hold
    /// the same versions up to its end, so every reader sees the same.
    fn check_acknowledged_are_readable(&self, seed: u64) {
        for generation in &self.core.generations {
            let Some(end) = &generation.end else { continue };
            let held: BTreeSet<Vec<Version>> = generation
                .readable_tlogs()
                .iter()
                .map(|(_, addr)| {
                    self.tlogs[addr]
                        .versions
                        .range(..=end.version)
                        .copied()
                        .collect()
                })
                .collect();
            assert_eq!(
                held.len(),
                1,
                "seed {seed}: generation {} ended at {} reads differently by TLog: {held:?}",
                generation.epoch,
                end.version
            );
        }
        for version in &self.acked {
            let generation = self.core.generation_for(*version).unwrap_or_else(|| {
                panic!(
                    "seed {seed}: acknowledged {version} is in no generation: {:#?}",
                    self.core
                )
            });
            assert!(
                generation.commit_path.is_some(),
                "seed {seed}: {version} in generation {} that never opened",
                generation.epoch
            );
            for (_, addr) in generation.readable_tlogs() {
                let tlog = &self.tlogs[&addr];
                assert!(
                    tlog.versions.contains(version),
                    "seed {seed}: readable TLog {addr} of generation {} lacks acknowledged {version}",
                    generation.epoch
                );
            }
        }
    }

    /// The recorded shard map holds the change of every committed version
    /// at or below its own (those every reader of their generation sees),
    /// and no other; and it is as of the current generation's begin.
    fn check_shard_map(&self, seed: u64) {
        let Some(snapshot) = &self.core.shard_map else {
            assert!(self.core.generations.is_empty(), "seed {seed}");
            return;
        };
        if let Some(current) = self.core.current() {
            assert_eq!(snapshot.version, current.begin_version, "seed {seed}");
        }
        let committed = |v: &Version| {
            self.core.generation_for(*v).is_some_and(|g| {
                g.end.is_some()
                    && g.readable_tlogs()
                        .iter()
                        .all(|(_, a)| self.tlogs[a].versions.contains(v))
            })
        };
        let mut expected: BTreeSet<String> = self
            .changed
            .range(..=snapshot.version)
            .filter(|v| committed(v))
            .map(|v| shard_begin(*v))
            .collect();
        expected.insert(String::new());
        let recorded: BTreeSet<String> = snapshot.shards.iter().map(|s| s.begin.clone()).collect();
        assert_eq!(recorded, expected, "seed {seed}");
        for version in self.acked.iter().filter(|v| self.changed.contains(v)) {
            if *version <= snapshot.version {
                assert!(recorded.contains(&shard_begin(*version)), "seed {seed}");
            }
        }
    }
}

#[test]
fn a_first_recovery_records_a_generation_from_version_zero() {
    let mut world = World::new(0);
    assert!(world.recover(0.0));
    let current = world.core.current().expect("a current generation");
    assert_eq!((current.epoch, current.begin_version), (1, Version::ZERO));
    assert!(current.commit_path.is_some());
    assert_eq!(world.open, Some(1));
}

#[test]
fn a_recovery_ends_the_generation_at_the_lowest_end_its_locks_saw_and_begins_the_next_there() {
    for seed in 0..20 {
        let mut world = World::new(seed);
        assert!(world.recover(0.0));
        for _ in 0..3 {
            world.commit_some();
        }
        assert!(world.recover(0.0));
        let ended = &world.core.generations[0];
        let end = ended.end.as_ref().expect("ended");
        let lowest = end
            .locked
            .iter()
            .map(|i| world.tlogs[&ended.tlogs[*i]].last)
            .min()
            .unwrap();
        assert_eq!(end.version, lowest, "seed {seed}");
        assert!(world.acked.iter().all(|v| *v <= end.version), "seed {seed}");
        assert_eq!(world.core.current().unwrap().begin_version, end.version);
        world.check_acknowledged_are_readable(seed);
    }
}

#[test]
fn a_recovery_waits_while_no_covering_set_of_tlogs_answers() {
    let (mut recovery, _) = Recovery::start(CONFIG, initial(), None, 0);
    let mut world = World::new(2);
    assert!(world.recover(0.0));
    let state = world.core.clone();
    let commands = recovery
        .handle(
            Event::CoreStateRead {
                revision: world.revision,
                state,
            },
            1,
        )
        .unwrap();
    assert!(matches!(
        commands.as_slice(),
        [Command::LockTLogs { epoch: 1, .. }]
    ));
    let lock = LockReply {
        end_version: Version(10),
        known_committed_version: Version(5),
    };
    // One of three TLogs at replication 2 leaves teams uncovered.
    let more = recovery
        .handle(
            Event::TLogLocked {
                epoch: 1,
                index: 0,
                reply: lock,
            },
            2,
        )
        .unwrap();
    assert!(more.is_empty());
    assert_eq!(recovery.phase(), Phase::LockingTLogs);
    assert!(
        recovery.waiting_for().contains("no locked copy"),
        "{}",
        recovery.waiting_for()
    );
    let more = recovery
        .handle(
            Event::TLogLocked {
                epoch: 1,
                index: 2,
                reply: lock,
            },
            3,
        )
        .unwrap();
    // The shard map moves to the recovery version by the changes a locked
    // TLog holding the metadata team has.
    let tlogs = &world.core.current().unwrap().tlogs;
    let holding: Vec<SocketAddr> = tlogs_for_team(METADATA_TEAM, 3, 2)
        .into_iter()
        .filter(|i| [0, 2].contains(i))
        .map(|i| tlogs[i])
        .collect();
    assert_eq!(
        more,
        vec![Command::ReadShardChanges {
            epoch: 1,
            tlogs: holding,
            after: Version::ZERO,
            through: Version(10),
        }]
    );
    let changes = vec![(Version(7), vec![shard_change(Version(7))])];
    let more = recovery
        .handle(Event::ShardChangesRead { epoch: 1, changes }, 4)
        .unwrap();
    assert!(matches!(
        more.as_slice(),
        [Command::RecruitTLogs {
            epoch: 2,
            begin: Version(10),
            count: 3
        }]
    ));
    let times = recovery.phase_times();
    assert_eq!(times[1].phase, Phase::LockingTLogs);
    assert_eq!((times[1].started_ms, times[1].ended_ms), (1, Some(3)));
    assert_eq!(times[2].phase, Phase::ReadingShardMap);
    let tlogs = vec![addr(1), addr(2), addr(3)];
    let commands = recovery
        .handle(
            Event::TLogsRecruited {
                epoch: 2,
                tlogs: tlogs.clone(),
            },
            5,
        )
        .unwrap();
    let [Command::WriteCoreState { state, .. }] = commands.as_slice() else {
        panic!("{commands:?}");
    };
    let map = state.shard_map.as_ref().unwrap();
    assert_eq!(map.version, Version(10));
    let assignment = map.map().unwrap().assignment_of(b"k7").clone();
    assert_eq!(assignment, ShardAssignment::to(StorageTeamId(2)));
}

#[test]
fn an_event_the_phase_does_not_expect_abandons_the_recovery() {
    let (mut recovery, _) = Recovery::start(CONFIG, initial(), None, 0);
    let error = recovery
        .handle(Event::CoreStateWritten { revision: 3 }, 1)
        .unwrap_err();
    assert!(matches!(error, RecoveryError::Unexpected { .. }));
}

/// Back-to-back recoveries with TLog deaths, partial commits and
/// controllers dying at every step. Prints the seed of a failure.
#[test]
fn acknowledged_commits_survive_any_sequence_of_recoveries() {
    let (mut finished, mut acked) = (0, 0);
    for seed in 0..300u64 {
        let mut world = World::new(seed);
        for _ in 0..12 {
            world.commit_some();
            world.kill_some();
            world.check_acknowledged_are_readable(seed);
            if world.recover(0.15) {
                finished += 1;
                // The generation each finished recovery opens is its own.
                assert_eq!(world.open, Some(world.core.epoch), "seed {seed}");
            }
            world.check_acknowledged_are_readable(seed);
            world.check_shard_map(seed);
            let epochs: Vec<u64> = world.core.generations.iter().map(|g| g.epoch).collect();
            assert!(
                epochs.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: {epochs:?}"
            );
        }
        acked += world.acked.len();
    }
    // The faults leave room for progress: the test checks something.
    assert!(
        finished > 300 && acked > 1000,
        "{finished} recoveries, {acked} commits"
    );
}

#[test]
fn the_new_generation_leaves_out_the_configured_servers_and_keeps_them_out_when_unread() {
    let mut world = World::new(5);
    assert!(world.recover(0.0));
    assert!(world.core.current().unwrap().excluded_servers.is_empty());
    world.excluded = Some(Exclusion {
        servers: BTreeSet::from([102]),
        vacated: BTreeMap::new(),
    });
    assert!(world.recover(0.0));
    let current = world.core.current().unwrap();
    assert_eq!(current.excluded_servers, BTreeSet::from([102]));
    assert!(
        world.core.generations[0].excluded_servers.is_empty(),
        "an ended generation keeps what it was recruited with"
    );
    // The configuration could not be read: the next one keeps the set.
    world.excluded = None;
    assert!(world.recover(0.0));
    assert_eq!(
        world.core.current().unwrap().excluded_servers,
        BTreeSet::from([102])
    );
    world.excluded = Some(Exclusion::default());
    assert!(world.recover(0.0));
    assert!(world.core.current().unwrap().excluded_servers.is_empty());
}
