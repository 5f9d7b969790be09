//! The simulated cluster's shape: which host runs which role, at which
//! address, and the cluster file every role and the workload read.
//!
//! ```text
//!  pinned (the cluster file places the commit path):
//!  10.0.0.1-3   tlog-0..2          (replication 2 of 3)
//!  10.0.1.1     sequencer (and resolver)
//!  10.0.2.1..   proxy-1..
//!  recruited (the controller places it on workers, anew at each recovery):
//!  10.0.5.1-4   worker-1..4        (3 TLogs at replication 2, the sequencer, the proxies)
//!  both:
//!  10.0.3.1-6   storage-101,102 (team 1), 201,202 (team 2), 301,302 (team 3)
//!  10.0.4.1-3   coordinator-1..3 (their registers; recruited: each stands for controller)
//!  workload     the clients, a host of its own
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cluster::cluster_file::{
    CoordinatorEntry, Endpoint, GenerationShape, ProxyEntry, ShardEntry, StorageEntry, TeamEntry,
};
use cluster::ClusterFile;

/// Every role listens on this port of its host (the roles a worker hosts
/// listen on free ones).
pub const PORT: u16 = 4500;

pub const TLOGS: usize = 3;
pub const REPLICATION: usize = 2;
pub const TEAMS: u64 = 3;
pub const SERVERS_PER_TEAM: u64 = 2;
/// The keys the workload writes, spread over the teams by the shards.
pub const KEYS: usize = 12;
pub const COORDINATORS: u64 = 3;
/// Workers of a recruited cluster: one more than its TLogs, so a
/// recovery finds a worker for each TLog while one is down.
pub const WORKERS: u64 = 4;
/// The coordinated register the register workload writes.
pub const REGISTER: &str = "sim";

/// Who places the commit path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The cluster file: the same TLogs, sequencer and proxies for ever.
    Pinned,
    /// The controller, on workers, anew at each recovery.
    Recruited,
}

impl Shape {
    pub fn parse(name: &str) -> Result<Shape, String> {
        match name {
            "pinned" => Ok(Shape::Pinned),
            "recruited" => Ok(Shape::Recruited),
            other => Err(format!(
                "unknown cluster shape {other:?} (pinned, recruited)"
            )),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shape::Pinned => "pinned",
            Shape::Recruited => "recruited",
        })
    }
}

/// What a host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    TLog(usize),
    Sequencer,
    Proxy(u64),
    Storage(u64),
    Coordinator(u64),
    Worker(u64),
}

impl Role {
    pub fn ip(self) -> IpAddr {
        let (net, host) = match self {
            Role::TLog(i) => (0, i as u8 + 1),
            Role::Sequencer => (1, 1),
            Role::Proxy(id) => (2, id as u8),
            Role::Storage(id) => (3, storage_index(id) + 1),
            Role::Coordinator(id) => (4, id as u8),
            Role::Worker(id) => (5, id as u8),
        };
        IpAddr::V4(Ipv4Addr::new(10, 0, net, host))
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip(), PORT)
    }

    /// The host's name in turmoil (its address) for faults.
    pub fn host(self) -> String {
        self.ip().to_string()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::TLog(i) => write!(f, "tlog-{i}"),
            Role::Sequencer => f.write_str("sequencer"),
            Role::Proxy(id) => write!(f, "proxy-{id}"),
            Role::Storage(id) => write!(f, "storage-{id}"),
            Role::Coordinator(id) => write!(f, "coordinator-{id}"),
            Role::Worker(id) => write!(f, "worker-{id}"),
        }
    }
}

/// Server `id` is member `id % 100` of team `id / 100`.
fn storage_index(id: u64) -> u8 {
    ((id / 100 - 1) * SERVERS_PER_TEAM + id % 100 - 1) as u8
}

pub fn storage_ids() -> Vec<u64> {
    (1..=TEAMS)
        .flat_map(|team| (1..=SERVERS_PER_TEAM).map(move |member| team * 100 + member))
        .collect()
}

pub fn coordinator_ids() -> Vec<u64> {
    (1..=COORDINATORS).collect()
}

pub fn worker_ids() -> Vec<u64> {
    (1..=WORKERS).collect()
}

pub fn coordinator_addrs() -> Vec<SocketAddr> {
    coordinator_ids()
        .into_iter()
        .map(|id| Role::Coordinator(id).addr())
        .collect()
}

pub fn key(index: usize) -> String {
    format!("k{index:02}")
}

/// The team server `id` is in.
pub fn team_of(server: u64) -> u64 {
    server / 100
}

/// The servers of `team`, in id order.
pub fn servers_of(team: u64) -> Vec<u64> {
    (1..=SERVERS_PER_TEAM).map(|m| team * 100 + m).collect()
}

/// The cluster file: three teams, each owning a third of the keys, and a
/// pinned commit path (no coordinators), or coordinators and the shape of
/// the generations the controller recruits.
pub fn cluster_file(shape: Shape, proxies: u64) -> ClusterFile {
    let storage_servers = storage_ids()
        .into_iter()
        .map(|id| StorageEntry {
            id,
            address: Role::Storage(id).addr(),
            private_team: 10_000 + id,
        })
        .collect();
    let teams = (1..=TEAMS)
        .map(|team| TeamEntry {
            id: team,
            servers: servers_of(team),
        })
        .collect();
    let shards = (0..TEAMS as usize)
        .map(|i| ShardEntry {
            begin: if i == 0 {
                String::new()
            } else {
                key(i * KEYS / TEAMS as usize)
            },
            team: 1 + i as u64,
        })
        .collect();
    let pinned = ClusterFile {
        replication: REPLICATION,
        broadcast: true,
        coordinators: Vec::new(),
        sequencer: Some(Endpoint {
            address: Role::Sequencer.addr(),
        }),
        proxies: (1..=proxies)
            .map(|id| ProxyEntry {
                id,
                address: Role::Proxy(id).addr(),
            })
            .collect(),
        tlogs: (0..TLOGS)
            .map(|i| Endpoint {
                address: Role::TLog(i).addr(),
            })
            .collect(),
        generation: None,
        storage_servers,
        teams,
        shards,
        tls: None,
        distribution: None,
    };
    match shape {
        Shape::Pinned => pinned,
        Shape::Recruited => ClusterFile {
            coordinators: coordinator_ids()
                .into_iter()
                .map(|id| CoordinatorEntry {
                    id,
                    address: Role::Coordinator(id).addr(),
                })
                .collect(),
            sequencer: None,
            proxies: Vec::new(),
            tlogs: Vec::new(),
            generation: Some(GenerationShape::new(TLOGS, proxies as usize)),
            ..pinned
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_files_are_valid_and_spread_the_keys_over_every_team() {
        for shape in [Shape::Pinned, Shape::Recruited] {
            let cluster = cluster_file(shape, 2);
            cluster.check().unwrap();
            assert_eq!(cluster.is_recruited(), shape == Shape::Recruited);
            let map = cluster.shard_map().unwrap();
            let owners: std::collections::BTreeSet<u64> = (0..KEYS)
                .flat_map(|index| map.assignment_of(key(index).as_bytes()).teams())
                .map(|team| team.0)
                .collect();
            assert_eq!(owners, (1..=TEAMS).collect());
            for team in &cluster.teams {
                assert_eq!(team.servers, servers_of(team.id));
                assert!(team.servers.iter().all(|s| team_of(*s) == team.id));
            }
        }
    }

    #[test]
    fn every_role_has_its_own_address() {
        let mut roles = vec![Role::Sequencer, Role::Proxy(1), Role::Proxy(2)];
        roles.extend((0..TLOGS).map(Role::TLog));
        roles.extend(storage_ids().into_iter().map(Role::Storage));
        roles.extend(coordinator_ids().into_iter().map(Role::Coordinator));
        roles.extend(worker_ids().into_iter().map(Role::Worker));
        let addrs: std::collections::BTreeSet<_> = roles.iter().map(|r| r.addr()).collect();
        assert_eq!(addrs.len(), roles.len());
    }
}
