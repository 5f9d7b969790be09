//! The messages between workers, the cluster controller and the roles it
//! recruits, and the cluster information any peer may ask a coordinator.
//!
//! ```text
//!  worker ─RegisterWorker(address, hosted roles)─▶ controller      (again and again)
//!  controller ─Recruit(epoch, role)─▶ worker ─▶ RecruitReply(address of the new role)
//!  controller ─OpenCommits(epoch)─▶ recruited sequencer
//!  client ─GetClusterInfo─▶ coordinator ─▶ ClusterInfo(epoch, sequencer, proxies)
//! ```

use std::fmt;
use std::net::SocketAddr;

use crate::types::{ProxyId, Version};

/// The roles a worker hosts for a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum RoleKind {
    TLog,
    Sequencer,
    Proxy,
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleKind::TLog => "tlog",
            RoleKind::Sequencer => "sequencer",
            RoleKind::Proxy => "proxy",
        })
    }
}

/// A role a worker hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HostedRole {
    pub kind: RoleKind,
    pub epoch: u64,
    /// A TLog's index in its generation, a proxy's id, 0 for a sequencer.
    pub id: u64,
    pub address: SocketAddr,
    /// Why it cannot serve, if it cannot.
    pub problem: Option<String>,
}

/// A worker offers itself to the cluster controller and says what it
/// hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterWorkerRequest {
    pub address: SocketAddr,
    pub roles: Vec<HostedRole>,
}

/// What the controller asks a worker to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recruit {
    /// The TLog at `index` of the generation, its chain begun at `begin`.
    TLog { index: u64, begin: Version },
    /// A sequencer (and resolver) chaining on from `start_after` with
    /// versions above `floor`, handed to `proxies` once opened.
    Sequencer {
        start_after: Version,
        floor: Version,
        proxies: Vec<ProxyId>,
    },
    Proxy {
        id: ProxyId,
        sequencer: SocketAddr,
        tlogs: Vec<SocketAddr>,
    },
}

impl Recruit {
    pub fn kind(&self) -> RoleKind {
        match self {
            Recruit::TLog { .. } => RoleKind::TLog,
            Recruit::Sequencer { .. } => RoleKind::Sequencer,
            Recruit::Proxy { .. } => RoleKind::Proxy,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecruitRequest {
    pub epoch: u64,
    pub role: Recruit,
}

/// Where the current generation's commit path is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClusterInfoReply {
    pub epoch: u64,
    /// `None` while no generation has a recorded commit path.
    pub sequencer: Option<SocketAddr>,
    pub proxies: Vec<SocketAddr>,
    /// The current generation's TLogs.
    pub tlogs: Vec<SocketAddr>,
    /// The storage servers the current generation leaves out of their
    /// teams (`teamlog exclude`).
    pub excluded_servers: Vec<u64>,
}

/// A worker's answer to a status request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WorkerStatusReply {
    pub address: SocketAddr,
    pub roles: Vec<HostedRole>,
    /// The controller it registers with, if it knows one.
    pub controller: Option<SocketAddr>,
}
