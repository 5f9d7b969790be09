//! The cluster's teams as the roles see them: storage teams and their
//! servers, each server's private team, the metadata team of a recruited
//! commit path, and which TLogs hold each team.

use std::collections::{BTreeMap, BTreeSet};

use proto::system_keys::METADATA_READER;
use proto::{StorageServerId, StorageTeamId};

use crate::placement::tlogs_for_team;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("replication {replication} needs between 1 and {tlogs} tlogs")]
    Replication { replication: usize, tlogs: usize },
    #[error("{server} is in a team but has no private team")]
    NoPrivateTeam { server: StorageServerId },
    #[error("{team} is used twice (as a storage team and a private team, or for two servers)")]
    TeamIdReused { team: StorageTeamId },
    #[error("{team} has no servers")]
    EmptyTeam { team: StorageTeamId },
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub tlog_count: usize,
    /// How many TLogs hold each team.
    pub replication: usize,
    /// Whether every TLog gets an empty version for each uninvolved team.
    pub broadcast: bool,
    pub teams: BTreeMap<StorageTeamId, Vec<StorageServerId>>,
    pub private_teams: BTreeMap<StorageServerId, StorageTeamId>,
    /// The team every system mutation also goes to, read by recoveries
    /// (`proto::system_keys::METADATA_TEAM`); set when the commit path is
    /// recruited.
    pub metadata_team: Option<StorageTeamId>,
}

impl Topology {
    pub fn check(&self) -> Result<(), TopologyError> {
        if self.replication == 0 || self.replication > self.tlog_count {
            return Err(TopologyError::Replication {
                replication: self.replication,
                tlogs: self.tlog_count,
            });
        }
        for (team, servers) in &self.teams {
            if servers.is_empty() {
                return Err(TopologyError::EmptyTeam { team: *team });
            }
            if let Some(server) = servers.iter().find(|s| !self.private_teams.contains_key(s)) {
                return Err(TopologyError::NoPrivateTeam { server: *server });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for team in self.all_teams() {
            if !seen.insert(team) {
                return Err(TopologyError::TeamIdReused { team });
            }
        }
        Ok(())
    }

    pub fn is_storage_team(&self, team: StorageTeamId) -> bool {
        self.teams.contains_key(&team)
    }

    /// Storage teams, then private teams, then the metadata team.
    pub fn all_teams(&self) -> impl Iterator<Item = StorageTeamId> + '_ {
        self.teams
            .keys()
            .chain(self.private_teams.values())
            .copied()
            .chain(self.metadata_team)
    }

    /// The servers that consume `team` (a private team has one; the
    /// metadata team the controller, as [`METADATA_READER`]).
    pub fn servers_of(&self, team: StorageTeamId) -> Vec<StorageServerId> {
        if self.metadata_team == Some(team) {
            return vec![METADATA_READER];
        }
        match self.teams.get(&team) {
            Some(servers) => servers.clone(),
            None => self
                .private_teams
                .iter()
                .filter(|(_, t)| **t == team)
                .map(|(s, _)| *s)
                .collect(),
        }
    }

    /// The topology with `excluded` out of their teams and without their
    /// private teams: nothing is kept for them on the TLogs. A team left
    /// with no server is no team of it (whoever leaves a team empty makes
    /// sure it holds nothing).
    pub fn without_servers(&self, excluded: &BTreeSet<u64>) -> Topology {
        let kept = |s: &StorageServerId| !excluded.contains(&s.0);
        let mut topology = self.clone();
        for servers in topology.teams.values_mut() {
            servers.retain(kept);
        }
        topology.teams.retain(|_, servers| !servers.is_empty());
        topology.private_teams.retain(|s, _| kept(s));
        topology
    }

    /// The teams `excluded` would leave with no server.
    pub fn emptied_by(&self, excluded: &BTreeSet<u64>) -> Vec<StorageTeamId> {
        self.teams
            .iter()
            .filter(|(_, servers)| servers.iter().all(|s| excluded.contains(&s.0)))
            .map(|(team, _)| *team)
            .collect()
    }

    /// Indexes of the TLogs holding `team`.
    pub fn tlogs_of(&self, team: StorageTeamId) -> Vec<usize> {
        tlogs_for_team(team, self.tlog_count, self.replication)
    }

    /// For each TLog, the teams it holds.
    pub fn teams_by_tlog(&self) -> Vec<Vec<StorageTeamId>> {
        let mut by_tlog = vec![Vec::new(); self.tlog_count];
        for team in self.all_teams() {
            for tlog in self.tlogs_of(team) {
                by_tlog[tlog].push(team);
            }
        }
        by_tlog
    }
}

#[cfg(test)]
mod tests {
    use proto::system_keys::METADATA_TEAM;

    use super::*;

    /// Three teams of two servers on three TLogs, each server with a private team.
    fn sample() -> Topology {
        let mut teams = BTreeMap::new();
        let mut private_teams = BTreeMap::new();
        for t in 1..=3u64 {
            let servers = vec![StorageServerId(t * 10), StorageServerId(t * 10 + 1)];
            for s in &servers {
                private_teams.insert(*s, StorageTeamId(1000 + s.0));
            }
            teams.insert(StorageTeamId(t), servers);
        }
        Topology {
            tlog_count: 3,
            replication: 2,
            broadcast: true,
            teams,
            private_teams,
            metadata_team: None,
        }
    }

    #[test]
    fn a_sound_topology_passes_and_broken_ones_are_named() {
        let t = sample();
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.servers_of(StorageTeamId(1010)), vec![StorageServerId(10)]);
        assert!(t.teams_by_tlog().iter().all(|teams| !teams.is_empty()));
        let mut bad = sample();
        bad.replication = 4;
        assert!(matches!(
            bad.check(),
            Err(TopologyError::Replication { .. })
        ));
        let mut bad = sample();
        bad.private_teams.remove(&StorageServerId(10));
        assert_eq!(
            bad.check(),
            Err(TopologyError::NoPrivateTeam {
                server: StorageServerId(10)
            })
        );
        let mut bad = sample();
        bad.private_teams
            .insert(StorageServerId(10), StorageTeamId(2));
        assert_eq!(
            bad.check(),
            Err(TopologyError::TeamIdReused {
                team: StorageTeamId(2)
            })
        );
    }

    #[test]
    fn excluded_servers_leave_their_teams_and_their_private_teams() {
        let t = sample();
        let without = t.without_servers(&BTreeSet::from([10, 21]));
        assert_eq!(without.check(), Ok(()));
        assert_eq!(
            without.servers_of(StorageTeamId(1)),
            vec![StorageServerId(11)]
        );
        assert_eq!(
            without.servers_of(StorageTeamId(2)),
            vec![StorageServerId(20)]
        );
        assert!(without.servers_of(StorageTeamId(1010)).is_empty());
        assert!(!without.all_teams().any(|team| team == StorageTeamId(1010)));
        assert!(t.emptied_by(&BTreeSet::from([10, 21])).is_empty());
        let emptied = BTreeSet::from([10, 11, 30]);
        assert_eq!(t.emptied_by(&emptied), vec![StorageTeamId(1)]);
        let without = t.without_servers(&emptied);
        assert_eq!(without.check(), Ok(()));
        assert!(!without.is_storage_team(StorageTeamId(1)));
        assert!(!without.all_teams().any(|team| team == StorageTeamId(1011)));
    }

    #[test]
    fn the_metadata_team_is_read_by_the_controller_and_may_not_be_reused() {
        let mut t = sample();
        t.metadata_team = Some(METADATA_TEAM);
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.servers_of(METADATA_TEAM), vec![METADATA_READER]);
        assert_eq!(t.all_teams().last(), Some(METADATA_TEAM));
        let held = t.teams_by_tlog();
        assert_eq!(
            held.iter()
                .filter(|teams| teams.contains(&METADATA_TEAM))
                .count(),
            t.replication
        );
        t.teams.insert(METADATA_TEAM, vec![StorageServerId(10)]);
        assert_eq!(
            t.check(),
            Err(TopologyError::TeamIdReused {
                team: METADATA_TEAM
            })
        );
    }
}
