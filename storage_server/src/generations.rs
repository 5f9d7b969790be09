//! Where a storage server's teams are: the TLogs of every generation that
//! may still hold its data, and the sequencer to ask for the committed
//! version. Pinned by the cluster file, or read from the coordinators'
//! core state: again whenever the cursor stalls, once a second, and as
//! soon as a watch on the core state brings other generations.
//!
//! ```text
//!  watch ─new generations─▶ interrupt the cursor's peeks ─▶ apply loop refreshes
//!  core state ─refresh─▶ View { generations (begin, end, readable TLogs), sequencer }
//!                          ├─▶ GenerationSource<TLogSource>: the cursor's peeks, and the
//!                          │   rollback point once a generation it read while open ended
//!                          └─▶ pops: every generation holding versions up to the durable one
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cluster::core_state::CoreState;
use cluster::placement::tlogs_for_team;
use coordinator::client::CoordinatorClient;
use cursor::{GenerationRoute, GenerationSource, TLogSource, TLogSourceConfig};
use proto::rpc::PopRequest;
use proto::transport::{ClientConfig, Peer, PeerPool};
use proto::{StorageServerId, StorageTeamId, Version};

/// Where the TLogs and the sequencer are.
#[derive(Clone)]
pub enum LogDiscovery {
    /// The cluster file pins them: one generation for ever.
    Pinned {
        tlogs: Vec<SocketAddr>,
        sequencer: SocketAddr,
    },
    /// The controller recruits them anew at each recovery; the
    /// coordinators' core state says where.
    Coordinated(Arc<CoordinatorClient>),
}

impl std::fmt::Debug for LogDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDiscovery::Pinned { tlogs, sequencer } => f
                .debug_struct("Pinned")
                .field("tlogs", tlogs)
                .field("sequencer", sequencer)
                .finish(),
            LogDiscovery::Coordinated(_) => f.write_str("Coordinated"),
        }
    }
}

/// One generation as this server reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GenerationView {
    epoch: u64,
    begin: Version,
    end: Option<Version>,
    tlogs: Vec<SocketAddr>,
    /// Indexes of `tlogs` a reader may use.
    readable: Vec<usize>,
    replication: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct View {
    generations: Vec<GenerationView>,
    sequencer: Option<SocketAddr>,
    /// The current generation, when it leaves this server out of its teams.
    excluded_by: Option<u64>,
    /// The newest live generation that leaves this server out, if any: its
    /// TLogs keep nothing of the server's teams for it.
    left_out_by: Option<u64>,
}

pub struct Generations {
    discovery: LogDiscovery,
    server: StorageServerId,
    transport: ClientConfig,
    private_team: StorageTeamId,
    /// The teams this server reads besides its private team.
    teams: Mutex<BTreeSet<StorageTeamId>>,
    view: Mutex<View>,
    /// The core state's revision the view is from. Installs take turns
    /// under it, and an older state read late never replaces a newer one.
    installed: Mutex<u64>,
    sources: Mutex<BTreeMap<u64, Arc<TLogSource>>>,
    source: Arc<GenerationSource<TLogSource>>,
    peers: PeerPool,
}

fn view_of(state: &CoreState, server: StorageServerId) -> View {
    View {
        generations: state
            .generations
            .iter()
            .map(|g| GenerationView {
                epoch: g.epoch,
                begin: g.begin_version,
                end: g.end.as_ref().map(|e| e.version),
                tlogs: g.tlogs.clone(),
                readable: g.readable_tlogs().into_iter().map(|(i, _)| i).collect(),
                replication: g.replication,
            })
            .collect(),
        sequencer: state
            .current()
            .and_then(|g| g.commit_path.as_ref())
            .map(|p| p.sequencer),
        excluded_by: state
            .current()
            .filter(|g| g.excluded_servers.contains(&server.0))
            .map(|g| g.epoch),
        left_out_by: state
            .generations
            .iter()
            .rfind(|g| g.excluded_servers.contains(&server.0))
            .map(|g| g.epoch),
    }
}

impl Generations {
    pub fn new(
        discovery: LogDiscovery,
        replication: usize,
        transport: ClientConfig,
        (server, private_team): (StorageServerId, StorageTeamId),
    ) -> Generations {
        let view = match &discovery {
            LogDiscovery::Pinned { tlogs, sequencer } => View {
                generations: vec![GenerationView {
                    epoch: 0,
                    begin: Version::ZERO,
                    end: None,
                    tlogs: tlogs.clone(),
                    readable: (0..tlogs.len()).collect(),
                    replication,
                }],
                sequencer: Some(*sequencer),
                excluded_by: None,
                left_out_by: None,
            },
            LogDiscovery::Coordinated(_) => View::default(),
        };
        let generations = Generations {
            discovery,
            server,
            private_team,
            teams: Mutex::new(BTreeSet::new()),
            view: Mutex::new(View::default()),
            installed: Mutex::new(0),
            sources: Mutex::new(BTreeMap::new()),
            source: Arc::new(GenerationSource::new(Vec::new())),
            peers: PeerPool::new(transport.clone()),
            transport,
        };
        generations.install(view, 0);
        generations
    }

    pub fn is_coordinated(&self) -> bool {
        matches!(self.discovery, LogDiscovery::Coordinated(_))
    }

    pub fn source(&self) -> Arc<GenerationSource<TLogSource>> {
        self.source.clone()
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        self.peers.get(addr)
    }

    /// The sequencer of the current generation, if one is known.
    pub fn sequencer(&self) -> Option<Arc<Peer>> {
        let sequencer = self.view().sequencer?;
        Some(self.peer(sequencer))
    }

    /// The current generation, when it leaves this server out of its teams
    /// (`teamlog exclude`).
    pub fn excluded_by(&self) -> Option<u64> {
        self.view().excluded_by
    }

    /// The newest live generation that leaves this server out of its
    /// teams, current or not.
    pub fn left_out_by(&self) -> Option<u64> {
        self.view().left_out_by
    }

    /// The coordinators, when they say where the generations are.
    pub fn coordinators(&self) -> Option<Arc<CoordinatorClient>> {
        match &self.discovery {
            LogDiscovery::Coordinated(coordinators) => Some(coordinators.clone()),
            LogDiscovery::Pinned { .. } => None,
        }
    }

    /// Reads the core state again and routes peeks by it; says whether the
    /// generations changed. When the generation the cursor read while open
    /// has ended, the source says so (`GenerationSource::take_rollback`).
    pub async fn refresh(&self) -> Result<bool, String> {
        let LogDiscovery::Coordinated(coordinators) = &self.discovery else {
            return Ok(false);
        };
        let interrupts = self.source.interrupts();
        let (state, revision) = coordinators
            .read_core_state()
            .await
            .map_err(|e| format!("reading the core state: {e}"))?;
        let changed = self.install(view_of(&state, self.server), revision);
        self.source.acknowledge(interrupts);
        Ok(changed)
    }

    /// A core state a watch brought: when its generations differ from the
    /// ones peeks follow, the cursor's peeks stop waiting where they are,
    /// and the apply loop reads the core state again.
    pub fn watched(&self, state: &CoreState) {
        if view_of(state, self.server) != *self.view() {
            self.source.interrupt();
        }
    }

    /// Installs `next`, read from the core state at `revision`, unless a
    /// newer one is installed; says whether the view changed.
    fn install(&self, next: View, revision: u64) -> bool {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        if revision < *installed {
            return false;
        }
        *installed = revision;
        let seen = self.view().clone();
        if seen == next {
            return false;
        }
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = Vec::new();
        for g in &next.generations {
            // A generation new to this server, or one that ended since (it
            // is read from its locked TLogs only), gets a fresh source.
            let unchanged = seen.generations.contains(g);
            let source = match sources.get(&g.epoch) {
                Some(source) if unchanged => source.clone(),
                _ => {
                    let source = Arc::new(self.tlog_source(g));
                    sources.insert(g.epoch, source.clone());
                    source
                }
            };
            routes.push(GenerationRoute {
                epoch: g.epoch,
                begin: g.begin,
                end: g.end,
                source,
            });
        }
        sources.retain(|epoch, _| next.generations.iter().any(|g| g.epoch == *epoch));
        // Each recovery recruits TLogs and a sequencer at new addresses:
        // the connections to retired ones go.
        self.peers.retain(|addr| {
            next.sequencer == Some(*addr) || next.generations.iter().any(|g| g.tlogs.contains(addr))
        });
        self.source.set_generations(routes);
        *self.view() = next;
        true
    }

    fn tlog_source(&self, g: &GenerationView) -> TLogSource {
        let readable: Vec<SocketAddr> = g.readable.iter().map(|i| g.tlogs[*i]).collect();
        let route = |team: StorageTeamId| -> Vec<SocketAddr> {
            tlogs_for_team(team, g.tlogs.len(), g.replication)
                .into_iter()
                .filter(|i| g.readable.contains(i))
                .map(|i| g.tlogs[i])
                .collect()
        };
        let source = TLogSource::new(TLogSourceConfig {
            client: self.transport.clone(),
            ..TLogSourceConfig::default()
        })
        // Teams this server learns of later are found on every TLog in turn.
        .with_default_replicas(readable);
        source.set_replicas(self.private_team, route(self.private_team));
        for team in self.teams.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            source.set_replicas(*team, route(*team));
        }
        source
    }

    /// Routes `teams` to their own TLogs in every generation, from now on.
    pub fn route_teams(&self, teams: &BTreeSet<StorageTeamId>) {
        *self.teams.lock().unwrap_or_else(|e| e.into_inner()) = teams.clone();
        let view = self.view().clone();
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        for g in &view.generations {
            let Some(source) = sources.get(&g.epoch) else {
                continue;
            };
            for team in teams {
                let replicas: Vec<SocketAddr> = tlogs_for_team(*team, g.tlogs.len(), g.replication)
                    .into_iter()
                    .filter(|i| g.readable.contains(i))
                    .map(|i| g.tlogs[i])
                    .collect();
                source.set_replicas(*team, replicas);
            }
        }
    }

    /// Tells every TLog of every generation holding `teams` at or below
    /// `durable` that this server no longer needs those versions.
    pub async fn pop(
        &self,
        server: StorageServerId,
        teams: &BTreeSet<StorageTeamId>,
        durable: Version,
    ) {
        let view = self.view().clone();
        for g in view.generations.iter().filter(|g| g.begin < durable) {
            let through = g.end.map_or(durable, |end| end.min(durable));
            for team in teams {
                for index in tlogs_for_team(*team, g.tlogs.len(), g.replication) {
                    if !g.readable.contains(&index) {
                        continue;
                    }
                    let request = PopRequest {
                        team: *team,
                        server,
                        version: through.next(),
                    };
                    let peer = self.peer(g.tlogs[index]);
                    let popped = peer.call(|c| async move { c.pop(request).await }).await;
                    if let Err(e) = popped {
                        tracing::debug!(%team, epoch = g.epoch, error = %e, "pop failed; the next flush pops again");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epochs: &[u64]) -> View {
        let tlog: SocketAddr = "127.0.0.1:4500".parse().unwrap();
        View {
            generations: epochs
                .iter()
                .map(|&epoch| GenerationView {
                    epoch,
                    begin: Version(epoch * 100),
                    end: None,
                    tlogs: vec![tlog],
                    readable: vec![0],
                    replication: 1,
                })
                .collect(),
            sequencer: None,
            excluded_by: None,
            left_out_by: None,
        }
    }

    #[test]
    fn a_server_learns_which_live_generation_left_it_out_current_or_not() {
        let generation = |epoch: u64, excluded: &[u64]| cluster::core_state::Generation {
            epoch,
            tlogs: Vec::new(),
            replication: 2,
            begin_version: Version(epoch * 100),
            floor: Version(epoch * 100),
            commit_path: None,
            end: None,
            excluded_servers: excluded.iter().copied().collect(),
        };
        let mut state = CoreState::initial();
        state.generations = vec![
            generation(1, &[]),
            generation(2, &[100]),
            generation(3, &[]),
        ];
        let taken_back = view_of(&state, StorageServerId(100));
        assert_eq!(taken_back.excluded_by, None);
        assert_eq!(taken_back.left_out_by, Some(2));
        assert_eq!(view_of(&state, StorageServerId(101)).left_out_by, None);
        state.generations.push(generation(4, &[100]));
        let out = view_of(&state, StorageServerId(100));
        assert_eq!((out.excluded_by, out.left_out_by), (Some(4), Some(4)));
    }

    #[test]
    fn a_core_state_read_late_never_replaces_a_newer_one() {
        let generations = Generations::new(
            LogDiscovery::Pinned {
                tlogs: Vec::new(),
                sequencer: "127.0.0.1:4600".parse().unwrap(),
            },
            1,
            ClientConfig::default(),
            (StorageServerId(100), StorageTeamId(10_100)),
        );
        assert!(generations.install(view(&[2]), 7));
        // A refresh that read revision 5 before another installed 7.
        assert!(!generations.install(view(&[1]), 5));
        assert_eq!(*generations.view(), view(&[2]));
        assert_eq!(generations.source.newest_epoch(), Some(2));
        assert!(!generations.install(view(&[2]), 7));
        assert!(generations.install(view(&[2, 3]), 8));
        assert_eq!(generations.source.newest_epoch(), Some(3));
    }
}
