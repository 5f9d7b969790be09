//! Which storage servers a generation leaves out of its teams: those the
//! configuration excludes (`teamlog exclude`), as long as every team keeps
//! a server. The controller reads the configuration before each recovery
//! and, while a generation runs, every second: when the servers to leave
//! out differ from the generation's, it recovers into one that matches.
//!
//! ```text
//!  "configuration" register ─excluded_servers─▶ wanted(topology) ─┬─ Ok(set) ≠ generation's ─▶ recovery
//!                                                                 └─ Err(why): kept as is, status says why
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
}
