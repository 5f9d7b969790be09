//! Which storage servers a generation leaves out of its teams: those the
//! configuration excludes (`teamlog exclude`), as long as every team keeps
//! a server, and a server is newly left out only while each of its teams
//! keeps another that holds the team's data (it answers, and is not
//! copying it from a teammate): a server left out counts for nothing when
//! it is taken back, so leaving out the last one that holds a team's data
//! would lose it. The controller reads the configuration before each
//! recovery and, while a generation runs, every second: when the servers
//! to leave out differ from the generation's, it recovers into one that
//! matches.
//!
//! ```text
//!  "configuration" register ─excluded_servers─▶ wanted(topology) ─┬─ Err(why): kept as is, status says why
//!                                                                 ▼
//!  generation's set, servers that serve ─▶ to_follow ─▶ set ≠ generation's ─▶ recovery
//!                                             └─ the servers deferred, and why, in status
//! ```

use std::collections::BTreeSet;

use cluster::configuration::Configuration;
use cluster::topology::Topology;

/// The servers to leave out by `configuration`, or why it cannot be done:
/// a team would be left with no server to hold its data. Servers the
/// cluster does not have are ignored.
pub fn wanted(topology: &Topology, configuration: &Configuration) -> Result<BTreeSet<u64>, String> {
    let known: BTreeSet<u64> = topology.private_teams.keys().map(|s| s.0).collect();
    let excluded: BTreeSet<u64> = configuration
        .excluded_servers
        .intersection(&known)
        .copied()
        .collect();
    let emptied = topology.emptied_by(&excluded);
    if !emptied.is_empty() {
        let teams: Vec<String> = emptied.iter().map(|t| t.to_string()).collect();
        return Err(format!(
            "the configuration excludes servers {excluded:?}, which leaves {} with no server; \
             the generation keeps them",
            teams.join(", ")
        ));
    }
    Ok(excluded)
}

/// Of the servers `wanted` leaves out, those a generation may leave out
/// now, given the generation's own set `current` and the servers known to
/// hold their teams' data (`serving`), with why each other one waits.
/// Servers taken back in are followed at once.
pub fn to_follow(
    topology: &Topology,
    current: &BTreeSet<u64>,
    wanted: &BTreeSet<u64>,
    serving: &BTreeSet<u64>,
) -> (BTreeSet<u64>, Vec<String>) {
    let mut follow: BTreeSet<u64> = current.intersection(wanted).copied().collect();
    let mut waiting = Vec::new();
    for server in wanted.difference(current) {
        let unheld: Vec<String> = topology
            .teams
            .iter()
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
    (follow, waiting)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::{StorageServerId, StorageTeamId};

    use super::*;

    fn two_teams_of_two() -> Topology {
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

    fn excluding(servers: &[u64]) -> Configuration {
        let mut configuration = Configuration::default();
        configuration.excluded_servers = servers.iter().copied().collect();
        configuration
    }

    #[test]
    fn servers_are_left_out_while_each_team_keeps_one() {
        let topology = two_teams_of_two();
        assert_eq!(wanted(&topology, &excluding(&[])), Ok(BTreeSet::new()));
        assert_eq!(
            wanted(&topology, &excluding(&[101, 200, 999])),
            Ok(BTreeSet::from([101, 200])),
            "a server the cluster does not have is ignored"
        );
        let refused = wanted(&topology, &excluding(&[100, 101, 200])).unwrap_err();
        assert!(refused.contains("team-1"), "{refused}");
        assert!(!refused.contains("team-2"), "{refused}");
    }

    #[test]
    fn a_server_is_left_out_only_while_a_teammate_holds_the_data() {
        let topology = two_teams_of_two();
        let none = BTreeSet::new();
        // 101's teammate 100 serves: 101 may go.
        let (follow, waiting) = to_follow(
            &topology,
            &none,
            &BTreeSet::from([101]),
            &BTreeSet::from([100]),
        );
        assert_eq!(follow, BTreeSet::from([101]));
        assert!(waiting.is_empty());
        assert_eq!(
            teammates_to_ask(&topology, &none, &BTreeSet::from([101])),
            BTreeSet::from([100])
        );
        // 100 copies from 101 (it does not serve): 101 waits, 200 goes.
        let (follow, waiting) = to_follow(
            &topology,
            &none,
            &BTreeSet::from([101, 200]),
            &BTreeSet::from([201]),
        );
        assert_eq!(follow, BTreeSet::from([200]));
        assert_eq!(waiting.len(), 1);
        assert!(
            waiting[0].contains("101") && waiting[0].contains("team-1"),
            "{waiting:?}"
        );
        // Already left out, it stays out whatever its teammates do; taken
        // back, it is back at once.
        let current = BTreeSet::from([101]);
        let (follow, _) = to_follow(&topology, &current, &current, &BTreeSet::new());
        assert_eq!(follow, current);
        let (follow, _) = to_follow(&topology, &current, &BTreeSet::new(), &BTreeSet::new());
        assert!(follow.is_empty());
        // Two of a team asked at once: the second would leave none serving.
        let both = BTreeSet::from([100, 101]);
        let (follow, waiting) = to_follow(&topology, &none, &both, &both);
        assert_eq!(follow, BTreeSet::from([100]));
        assert_eq!(waiting.len(), 1);
    }
}
