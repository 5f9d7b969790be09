//! The topology the commit path's unit tests share.

use std::collections::BTreeMap;

use cluster::topology::Topology;
use proto::{StorageServerId, StorageTeamId};

/// Three teams of two servers (`10 × team` and `10 × team + 1`) on three
/// TLogs with replication 2, each server with a private team
/// `1000 + server`.
pub fn sample() -> Topology {
    let teams: BTreeMap<_, _> = (1..=3u64)
        .map(|t| {
            let servers = vec![StorageServerId(t * 10), StorageServerId(t * 10 + 1)];
            (StorageTeamId(t), servers)
        })
        .collect();
    let private_teams = teams
        .values()
        .flatten()
        .map(|s| (*s, StorageTeamId(1000 + s.0)))
        .collect();
    Topology {
        tlog_count: 3,
        replication: 2,
        broadcast: true,
        teams,
        private_teams,
        metadata_team: None,
    }
}
