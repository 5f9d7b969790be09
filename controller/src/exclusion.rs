//! Which storage servers a generation leaves out of its teams: those the
//! configuration excludes (`teamlog exclude`) or found failed
//! (`failures.rs`), as long as every team keeps
//! a server, and a server is newly left out only while each of its teams
//! keeps another that holds the team's data (it answers, is not copying
//! it from a teammate, and has copied every range it is adding): a server left out counts for nothing when
//! it is taken back, so leaving out the last one that holds a team's data
//! would lose it. A server some live generation left out holds nothing
//! for certain either, even once taken back and serving: the TLogs of
//! that generation kept its teams' data for the others only, and what it
//! applied of them from memory may not be durable. It holds its teams
//! again once that generation retires, which waits for its durable
//! version to pass the generation's end. The controller reads the configuration before each
//! recovery and, while a generation runs, whenever it changes and every
//! second regardless: when the servers
//! to leave out differ from the generation's, it recovers into one that
//! matches.
//!
//! ```text
//!  "configuration" register ─excluded ∪ failed─▶ wanted(topology) ─┬─ Err(why): kept as is, status says why
//!                                                                 ▼
//!  generation's set, servers that serve ─▶ to_follow ─▶ set ≠ generation's ─▶ recovery
//!                                             └─ the servers deferred, and why, in status
//! ```

use std::collections::{BTreeMap, BTreeSet};

use cluster::configuration::Configuration;
use cluster::core_state::CoreState;
use cluster::shard_snapshot::ShardMapSnapshot;
use cluster::topology::Topology;
use proto::rpc::StorageStatusReply;
use proto::shard_map::ShardMap;
use proto::StorageTeamId;

/// The storage servers a generation is to leave out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusion {
    pub servers: BTreeSet<u64>,
    /// Teams left with no server, each with its servers: teams that left
    /// (`teamlog scale --remove-servers`) and hold no shard, which a
    /// generation drops whole. Should the shard map it starts from name
    /// one after all, it keeps that team and its servers.
    pub vacated: BTreeMap<StorageTeamId, BTreeSet<u64>>,
}

impl Exclusion {
    /// The servers to leave out of a generation that starts from `map`:
    /// all of them, but those of a vacated team the map names after all
    /// (a move onto it that came after the map it was judged by).
    pub fn servers_for(&self, map: &ShardMapSnapshot) -> BTreeSet<u64> {
        let named = |team: &StorageTeamId| {
            map.shards
                .iter()
                .any(|s| s.src.contains(&team.0) || s.dest.contains(&team.0))
        };
        let kept: BTreeSet<u64> = self
            .vacated
            .iter()
            .filter(|(team, _)| named(team))
            .flat_map(|(_, servers)| servers.iter().copied())
            .collect();
        self.servers.difference(&kept).copied().collect()
    }
}

/// The servers to leave out by `configuration`, or why it cannot be done:
/// a team would be left with no server while it holds data (it is not
/// leaving, or `map`, the shard map as last recorded, still names it).
/// Servers the cluster does not have are ignored.
pub fn wanted(
    topology: &Topology,
    configuration: &Configuration,
    map: &ShardMap,
) -> Result<Exclusion, String> {
    let known: BTreeSet<u64> = topology.private_teams.keys().map(|s| s.0).collect();
    let excluded: BTreeSet<u64> = configuration
        .left_out()
        .intersection(&known)
        .copied()
        .collect();
    let named: BTreeSet<StorageTeamId> = map.entries().flat_map(|(_, a)| a.teams()).collect();
    let mut vacated = BTreeMap::new();
    let mut holding = Vec::new();
    for team in topology.emptied_by(&excluded) {
        if configuration.leaving_teams.contains(&team.0) && !named.contains(&team) {
            let servers = topology.servers_of(team).iter().map(|s| s.0).collect();
            vacated.insert(team, servers);
        } else {
            holding.push(team.to_string());
        }
    }
    if !holding.is_empty() {
        return Err(format!(
            "the configuration leaves out servers {excluded:?}, which leaves {} with no server \
             while it holds data; the generation keeps them",
            holding.join(", ")
        ));
    }
    Ok(Exclusion {
        servers: excluded,
        vacated,
    })
}

/// Of the servers `wanted` leaves out, those a generation may leave out
/// now, given the generation's own set `current` and the servers known to
/// hold their teams' data (`serving`), with why each other one waits.
/// Servers taken back in are followed at once; a team that goes whole
/// holds no data to keep.
pub fn to_follow(
    topology: &Topology,
    current: &BTreeSet<u64>,
    wanted: &Exclusion,
    serving: &BTreeSet<u64>,
) -> (Exclusion, Vec<String>) {
    let mut follow: BTreeSet<u64> = current.intersection(&wanted.servers).copied().collect();
    let mut waiting = Vec::new();
    for server in wanted.servers.difference(current) {
        let unheld: Vec<String> = topology
            .teams
            .iter()
            .filter(|(team, _)| !wanted.vacated.contains_key(team))
            .filter(|(_, servers)| servers.iter().any(|s| s.0 == *server))
            .filter(|(_, servers)| {
                !servers
                    .iter()
                    .any(|s| s.0 != *server && !follow.contains(&s.0) && serving.contains(&s.0))
            })
            .map(|(team, _)| team.to_string())
            .collect();
        if unheld.is_empty() {
            follow.insert(*server);
        } else {
            waiting.push(format!(
                "storage server {server} stays in until another server of {} holds its data",
                unheld.join(", ")
            ));
        }
    }
    let vacated = wanted
        .vacated
        .iter()
        .filter(|(_, servers)| servers.is_subset(&follow))
        .map(|(team, servers)| (*team, servers.clone()))
        .collect();
    (
        Exclusion {
            servers: follow,
            vacated,
        },
        waiting,
    )
}

/// The servers whose state decides whether `wanted` may be followed from
/// `current`: the teammates of the servers newly left out.
pub fn teammates_to_ask(
    topology: &Topology,
    current: &BTreeSet<u64>,
    wanted: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let newly: BTreeSet<u64> = wanted.difference(current).copied().collect();
    topology
        .teams
        .values()
        .filter(|servers| servers.iter().any(|s| newly.contains(&s.0)))
        .flatten()
        .map(|s| s.0)
        .filter(|s| !wanted.contains(s))
        .collect()
}

/// Whether a storage server's status says it holds its teams' data: it
/// has not stopped, copies nothing from a teammate (a rebuild), and has
/// copied every range it is adding. A move may flip a range to its team
/// before this server copied it (the mover waits only for the servers the
/// generation keeps), and until it has, its teammates alone hold that
/// range.
pub fn holds_its_teams(status: &StorageStatusReply) -> bool {
    status.stopped.is_none()
        && status.rebuilding.is_none()
        && status.adding.iter().all(|range| range.ready)
}

/// Of the servers that answer and copy nothing (`serving`), those that
/// hold their teams' data for certain: no generation still in the core
/// state left them out.
pub fn holders(serving: &BTreeSet<u64>, state: &CoreState) -> BTreeSet<u64> {
    let left_out: BTreeSet<u64> = state
        .generations
        .iter()
        .flat_map(|g| g.excluded_servers.iter().copied())
        .collect();
    serving.difference(&left_out).copied().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use proto::system_keys::ShardAssignment;
    use proto::StorageServerId;

    use super::*;

    pub(crate) fn two_teams_of_two() -> Topology {
        let mut teams = BTreeMap::new();
        let mut private_teams = BTreeMap::new();
        for team in [1u64, 2] {
            let servers = vec![StorageServerId(team * 100), StorageServerId(team * 100 + 1)];
            for s in &servers {
                private_teams.insert(*s, StorageTeamId(1000 + s.0));
            }
            teams.insert(StorageTeamId(team), servers);
        }
        Topology {
            tlog_count: 3,
            replication: 2,
            broadcast: false,
            teams,
            private_teams,
            metadata_team: None,
        }
    }

    /// Keys before "m" on team 1, the rest on `second`.
    pub(crate) fn map(second: u64) -> ShardMap {
        ShardMap::new([
            (Bytes::new(), ShardAssignment::to(StorageTeamId(1))),
            (
                Bytes::from_static(b"m"),
                ShardAssignment::to(StorageTeamId(second)),
            ),
        ])
        .unwrap()
    }

    fn excluding(servers: &[u64]) -> Configuration {
        let mut configuration = Configuration::default();
        configuration.excluded_servers = servers.iter().copied().collect();
        configuration
    }

    fn servers(exclusion: Result<Exclusion, String>) -> BTreeSet<u64> {
        exclusion.unwrap().servers
    }

    #[test]
    fn servers_are_left_out_while_each_team_keeps_one() {
        let topology = two_teams_of_two();
        assert_eq!(
            servers(wanted(&topology, &excluding(&[]), &map(2))),
            BTreeSet::new()
        );
        assert_eq!(
            servers(wanted(&topology, &excluding(&[101, 200, 999]), &map(2))),
            BTreeSet::from([101, 200]),
            "a server the cluster does not have is ignored"
        );
        let refused = wanted(&topology, &excluding(&[100, 101, 200]), &map(2)).unwrap_err();
        assert!(refused.contains("team-1"), "{refused}");
        assert!(!refused.contains("team-2"), "{refused}");
    }

    #[test]
    fn a_team_that_left_and_holds_nothing_goes_whole() {
        let topology = two_teams_of_two();
        let mut configuration = excluding(&[200, 201]);
        // Not leaving: it would lose what it holds.
        assert!(wanted(&topology, &configuration, &map(1)).is_err());
        configuration.leaving_teams.insert(2);
        // Leaving, but the map still names it.
        assert!(wanted(&topology, &configuration, &map(2)).is_err());
        let whole = wanted(&topology, &configuration, &map(1)).unwrap();
        assert_eq!(whole.servers, BTreeSet::from([200, 201]));
        assert_eq!(
            whole.vacated,
            BTreeMap::from([(StorageTeamId(2), BTreeSet::from([200, 201]))])
        );
        // It needs no teammate that serves.
        let none = BTreeSet::new();
        let (follow, waiting) = to_follow(&topology, &none, &whole, &none);
        assert_eq!(follow, whole);
        assert!(waiting.is_empty(), "{waiting:?}");
        assert!(teammates_to_ask(&topology, &none, &whole.servers).is_empty());
        // Should a move onto it come after the map it was judged by, the
        // generation that starts from the newer map keeps the team.
        let version = proto::Version(10);
        let later = ShardMapSnapshot::new(version, &map(2));
        assert!(whole.servers_for(&later).is_empty());
        let judged = ShardMapSnapshot::new(version, &map(1));
        assert_eq!(whole.servers_for(&judged), BTreeSet::from([200, 201]));
    }

    /// A server that stopped, rebuilds, or is still copying a range it
    /// is adding does not hold its teams' data; one whose every range
    /// being added is copied does.
    #[test]
    fn a_server_holds_its_teams_data_only_with_every_range_it_adds_copied() {
        let adding = |ready: bool| proto::rpc::AddingRangeStatus {
            begin: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"b"),
            installed_to: Bytes::from_static(b"a"),
            pairs_copied: 0,
            bytes_copied: 0,
            ready,
            problem: None,
            idle_ms: 0,
            size_left: None,
            size_per_sec: 0,
        };
        let serving = StorageStatusReply {
            server: StorageServerId(100),
            applied_version: proto::Version(10),
            durable_version: proto::Version(5),
            oldest_readable_version: proto::Version(5),
            committed_version: proto::Version(10),
            window_bytes: 0,
            teams: vec![StorageTeamId(1)],
            stopped: None,
            stalled: None,
            rebuilding: None,
            adding: vec![adding(true)],
            following_epoch: 1,
        };
        assert!(holds_its_teams(&serving));
        let copying = StorageStatusReply {
            adding: vec![adding(true), adding(false)],
            ..serving.clone()
        };
        assert!(!holds_its_teams(&copying));
        let rebuilding = StorageStatusReply {
            rebuilding: Some("copying".into()),
            ..serving.clone()
        };
        assert!(!holds_its_teams(&rebuilding));
        let stopped = StorageStatusReply {
            stopped: Some("failed".into()),
            ..serving
        };
        assert!(!holds_its_teams(&stopped));
    }

    #[test]
    fn a_server_is_left_out_only_while_a_teammate_holds_the_data() {
        let topology = two_teams_of_two();
        let none = BTreeSet::new();
        let out = |servers: &[u64]| Exclusion {
            servers: servers.iter().copied().collect(),
            vacated: BTreeMap::new(),
        };
        // 101's teammate 100 serves: 101 may go.
        let (follow, waiting) = to_follow(&topology, &none, &out(&[101]), &BTreeSet::from([100]));
        assert_eq!(follow, out(&[101]));
        assert!(waiting.is_empty());
        assert_eq!(
            teammates_to_ask(&topology, &none, &BTreeSet::from([101])),
            BTreeSet::from([100])
        );
        // 100 copies from 101 (it does not serve): 101 waits, 200 goes.
        let (follow, waiting) =
            to_follow(&topology, &none, &out(&[101, 200]), &BTreeSet::from([201]));
        assert_eq!(follow, out(&[200]));
        assert_eq!(waiting.len(), 1);
        assert!(
            waiting[0].contains("101") && waiting[0].contains("team-1"),
            "{waiting:?}"
        );
        // Already left out, it stays out whatever its teammates do; taken
        // back, it is back at once.
        let current = BTreeSet::from([101]);
        let (follow, _) = to_follow(&topology, &current, &out(&[101]), &none);
        assert_eq!(follow, out(&[101]));
        let (follow, _) = to_follow(&topology, &current, &out(&[]), &none);
        assert_eq!(follow, out(&[]));
        // Two of a team asked at once: the second would leave none serving.
        let both = BTreeSet::from([100, 101]);
        let (follow, waiting) = to_follow(&topology, &none, &out(&[100, 101]), &both);
        assert_eq!(follow, out(&[100]));
        assert_eq!(waiting.len(), 1);
    }

    #[test]
    fn a_server_a_live_generation_left_out_holds_nothing_until_it_retires() {
        let generation = |epoch: u64, excluded: &[u64]| cluster::core_state::Generation {
            epoch,
            tlogs: Vec::new(),
            replication: 2,
            begin_version: proto::Version(epoch * 100),
            floor: proto::Version(epoch * 100),
            commit_path: None,
            end: None,
            excluded_servers: excluded.iter().copied().collect(),
        };
        let serving = BTreeSet::from([100, 101]);
        let mut state = CoreState::initial();
        state.generations = vec![
            generation(1, &[]),
            generation(2, &[101]),
            generation(3, &[]),
        ];
        // Taken back in generation 3, 101 serves, but generation 2 kept
        // team 1 for 100 alone: 101 holds nothing for certain.
        assert_eq!(holders(&serving, &state), BTreeSet::from([100]));
        // So 100 may not go now, though 101 answers.
        let topology = two_teams_of_two();
        let out = Exclusion {
            servers: BTreeSet::from([100]),
            vacated: BTreeMap::new(),
        };
        let (follow, waiting) = to_follow(
            &topology,
            &BTreeSet::new(),
            &out,
            &holders(&serving, &state),
        );
        assert!(follow.servers.is_empty());
        assert_eq!(waiting.len(), 1);
        // Generation 2 retired: 101 made durable everything it held.
        state.generations.remove(1);
        assert_eq!(holders(&serving, &state), serving);
    }
}
