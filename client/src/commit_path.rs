//! Where a client sends commits and read-version requests: the proxies and
//! sequencer the cluster file pins, or, when the controller recruits them
//! anew at each recovery, the current generation's as the coordinators
//! record them.
//!
//! ```text
//!  pinned:     cluster file ─▶ Route (for ever)
//!  recruited:  route() ─▶ cached Route ──(a call through it failed: stale)──▶ GetClusterInfo ─▶ a coordinator
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use proto::rpc::Message;
use proto::transport::{ClientConfig, Peer};
use proto::StorageServerId;

use cluster::ClusterFile;

use crate::ClientError;

/// One generation's commit path, and the storage servers it leaves out
/// of their teams.
pub(crate) struct Route {
    pub proxies: Vec<Peer>,
    pub sequencer: Peer,
    pub excluded: BTreeSet<StorageServerId>,
}

pub(crate) struct CommitPath {
    source: Source,
    /// The route in use; `None` once a call through it failed.
    current: Mutex<Option<Arc<Route>>>,
}

enum Source {
    Pinned,
    Coordinators {
        coordinators: Vec<Peer>,
        transport: ClientConfig,
    },
}

impl CommitPath {
    pub fn new(cluster: &ClusterFile, transport: &ClientConfig) -> Result<Self, ClientError> {
        let peer = |addr| Peer::new(addr, transport.clone());
        if cluster.is_recruited() {
            return Ok(CommitPath {
                source: Source::Coordinators {
                    coordinators: cluster
                        .coordinator_addresses()
                        .into_iter()
                        .map(peer)
                        .collect(),
                    transport: transport.clone(),
                },
                current: Mutex::new(None),
            });
        }
        let route = Route {
            proxies: cluster.proxies.iter().map(|p| peer(p.address)).collect(),
            sequencer: peer(cluster.sequencer_address()?),
            excluded: BTreeSet::new(),
        };
        Ok(CommitPath {
            source: Source::Pinned,
            current: Mutex::new(Some(Arc::new(route))),
        })
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Route>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route to use now.
    pub async fn route(&self) -> Result<Arc<Route>, ClientError> {
        if let Some(route) = self.current().clone() {
            return Ok(route);
        }
        let Source::Coordinators {
            coordinators,
            transport,
        } = &self.source
        else {
            unreachable!("a pinned route is never dropped")
        };
        let route = Arc::new(ask_coordinators(coordinators, transport).await?);
        *self.current() = Some(route.clone());
        Ok(route)
    }

    /// A call through the route failed: it may belong to a generation a
    /// recovery ended, so the next call asks the coordinators again.
    pub fn failed(&self) {
        if matches!(self.source, Source::Coordinators { .. }) {
            *self.current() = None;
        }
    }
}

async fn ask_coordinators(
    coordinators: &[Peer],
    transport: &ClientConfig,
) -> Result<Route, ClientError> {
    let mut failures = Vec::new();
    for coordinator in coordinators {
        let call = coordinator.call(|c| async move { c.call(Message::GetClusterInfo).await });
        match call.await {
            Ok(Message::ClusterInfo(info)) => {
                let Some(sequencer) = info.sequencer else {
                    return Err(ClientError::Unavailable(format!(
                        "the cluster is recovering (epoch {}): no commit path recorded yet",
                        info.epoch
                    )));
                };
                let peer = |addr| Peer::new(addr, transport.clone());
                return Ok(Route {
                    proxies: info.proxies.into_iter().map(peer).collect(),
                    sequencer: peer(sequencer),
                    excluded: info
                        .excluded_servers
                        .into_iter()
                        .map(StorageServerId)
                        .collect(),
                });
            }
            Ok(other) => {
                failures.push(format!("{}: answered {}", coordinator.addr(), other.name()))
            }
            Err(e) => failures.push(format!("{}: {e}", coordinator.addr())),
        }
    }
    Err(ClientError::Unavailable(format!(
        "no coordinator told where the commit path is: {}",
        failures.join("; ")
    )))
}
