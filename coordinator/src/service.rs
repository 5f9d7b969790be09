//! One coordinator: its raft node, and the RPC service that reads and
//! writes registers through it and carries the raft messages of its
//! peers.
//!
//! ```text
//!  peers ─Message::Raft──────────────▶ network::deliver ─▶ Raft
//!  members ─CoordinatedRead───────────▶ leader? ensure_linearizable, then the applied registers
//!          ─CoordinatedWatch──────────▶ leader? ensure_linearizable, then wait for the revision to pass the one seen
//!          ─CoordinatedWrite──────────▶ leader? client_write(Command::Write) ─▶ its outcome
//!  status ─Status──────────────────────▶ leader, term, last applied, problem
//!  anyone ─GetClusterInfo──────────────▶ leader? the core state's current commit path
//!  workers ─RegisterWorker─────────────▶ the controller this process hosts, if any
//! ```
//!
//! A coordinator that does not lead answers reads and writes with
//! `unavailable`, naming the leader it knows; the client tries the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::core_state::{CoreState, CORE_STATE_REGISTER};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, SnapshotPolicy};
use proto::rpc::{
    ClusterInfoReply, CoordinatedRegister, CoordinatedReply, CoordinatedWatchRequest,
    CoordinatedWriteRequest, CoordinatorStatusReply, ErrorCode, ErrorReply, Message,
    RecoveryReport, WatchedProcess,
};
use proto::signal::Signal;
use proto::transport::{ClientConfig, Responder, Service};

use crate::candidacy::Candidacy;
use crate::disk::CoordinatorDisk;
use crate::monitoring::Monitoring;
use crate::network::{deliver, Network};
use crate::raft_types::Raft;
use crate::registers::{Command, Register, MAX_NAME_LEN, MAX_VALUE_LEN};
use crate::store::{read_shared, LogStore, SharedState, StateMachine};

type NodeId = u64;

/// The longest a watch waits for a register to change before it answers
/// with the register as it stands; the watcher then asks again.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub id: NodeId,
    /// Every coordinator of the cluster, this one included.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// How this coordinator calls the others.
    pub transport: ClientConfig,
    /// How often a leader tells the others it leads; also how long it
    /// waits for each append to be answered (openraft's rule), so it must
    /// cover a follower's disk sync on a busy machine.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing from a leader for a random time
    /// between this and twice this stands for election.
    pub election_timeout: Duration,
}

impl CoordinatorConfig {
    pub fn new(id: NodeId, members: BTreeMap<NodeId, SocketAddr>) -> CoordinatorConfig {
        CoordinatorConfig {
            id,
            members,
            transport: ClientConfig::default(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("coordinator {0} is not among the cluster's coordinators")]
    NotAMember(NodeId),
    #[error("coordinator settings: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("coordinator store: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
    #[error("starting raft: {0}")]
    Raft(String),
}

/// A running coordinator; `Service` for its RPCs.
#[derive(Clone)]
pub struct CoordinatorService {
    id: NodeId,
    raft: Raft,
    /// Read for status: whether its writes wait for room.
    disk: Arc<dyn CoordinatorDisk>,
    state: SharedState,
    /// Counts the state's changes, for watches.
    changes: Arc<Signal<u64>>,
    /// This process's candidacy for cluster controller, when it stands.
    candidacy: Option<Arc<Candidacy>>,
    /// The failure detector it runs while it is the controller.
    monitoring: Option<Arc<Monitoring>>,
    /// The cluster controller this process hosts: it takes the workers'
    /// registrations.
    controller: Option<Arc<dyn HostedController>>,
}

/// A cluster controller hosted in a coordinator's process: it takes the
/// workers' registrations, and reports in the coordinator's status.
pub trait HostedController: Service {
    /// Its recoveries and the workers it hears from, while it leads.
    fn report(&self) -> Option<RecoveryReport>;
}

/// How long [`CoordinatorService::shutdown`] waits for the raft node.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

impl CoordinatorService {
    /// Starts the raft node over `disk`. A coordinator that has never voted
    /// nor logged anything proposes the cluster file's membership; every
    /// new coordinator does so alike, and openraft keeps the first that
    /// takes.
    pub async fn start(
        config: &CoordinatorConfig,
        disk: Arc<dyn CoordinatorDisk>,
    ) -> Result<CoordinatorService, StartError> {
        if !config.members.contains_key(&config.id) {
            return Err(StartError::NotAMember(config.id));
        }
        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = Config {
            cluster_name: "teamlog-coordinators".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Config::default()
        }
        .validate()?;
        let mut log = LogStore::new(disk.clone());
        let fresh =
            log.get_log_state().await?.last_log_id.is_none() && log.read_vote().await?.is_none();
        let machine = StateMachine::open(disk.clone())?;
        let state = machine.shared();
        let changes = machine.changes();
        let network = Network::new(config.transport.clone());
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let members: BTreeMap<NodeId, BasicNode> = config
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        if fresh {
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(id = config.id, "coordinators initialized"),
                // A peer's proposal reached this one first.
                Err(RaftError::APIError(_)) => {}
                Err(RaftError::Fatal(fatal)) => return Err(StartError::Raft(fatal.to_string())),
            }
        }
        Ok(CoordinatorService {
            id: config.id,
            raft,
            disk,
            state,
            changes,
            candidacy: None,
            monitoring: None,
            controller: None,
        })
    }

    /// Reports `candidacy` in this coordinator's status: who the controller
    /// is, and a problem when none is known.
    pub fn with_candidacy(mut self, candidacy: Arc<Candidacy>) -> CoordinatorService {
        self.candidacy = Some(candidacy);
        self
    }

    /// Reports, while this process is the controller, what its failure
    /// detector thinks of every process.
    pub fn with_monitoring(mut self, monitoring: Monitoring) -> CoordinatorService {
        self.monitoring = Some(Arc::new(monitoring));
        self
    }

    /// Hands the workers' registrations to `controller`, and reports it.
    pub fn with_controller(mut self, controller: Arc<dyn HostedController>) -> CoordinatorService {
        self.controller = Some(controller);
        self
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn status(&self) -> CoordinatorStatusReply {
        let metrics = self.raft.metrics().borrow().clone();
        let controller = self.candidacy.as_ref().and_then(|c| c.controller());
        let problem = match (
            &metrics.running_state,
            metrics.current_leader,
            self.disk.short_of_room(),
        ) {
            (Err(fatal), ..) => Some(format!("raft stopped: {fatal}")),
            (Ok(()), _, Some(why)) => Some(format!(
                "its disk has no room, so its raft writes wait: {why}"
            )),
            (Ok(()), None, None) => Some(
                "no coordinator leads: an election is under way or a majority is out of reach"
                    .into(),
            ),
            (Ok(()), Some(_), None) if self.candidacy.is_some() && controller.is_none() => {
                Some("no cluster controller: none has renewed its lease lately".into())
            }
            (Ok(()), Some(_), None) => None,
        };
        CoordinatorStatusReply {
            id: self.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map_or(0, |id| id.index),
            problem,
            controller: controller.map(|holder| holder.id),
            watched: self
                .monitoring
                .as_ref()
                .and_then(|m| m.verdicts())
                .unwrap_or_default()
                .into_iter()
                .map(|verdict| WatchedProcess {
                    role: verdict.process.role,
                    id: verdict.process.id,
                    address: verdict.process.address,
                    failed_for_ms: verdict.failed_for_ms,
                })
                .collect(),
            recovery: self.controller.as_ref().and_then(|c| c.report()),
        }
    }

    /// Stops the raft node; its tasks end.
    /// Stops the raft node. A node whose write waits for room on a full
    /// disk never gets to stop: it is left after `SHUTDOWN_WAIT`, which
    /// loses nothing, since that write was never made and nothing it
    /// would have allowed was answered.
    pub async fn shutdown(&self) {
        match tokio::time::timeout(SHUTDOWN_WAIT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "coordinator raft did not stop cleanly"),
            Err(_) => tracing::warn!(
                wait = ?SHUTDOWN_WAIT,
                "coordinator raft did not stop in time; left as it is"
            ),
        }
    }

    async fn handle(self, request: Message) -> Result<Message, ErrorReply> {
        match request {
            Message::Raft(payload) => deliver(&self.raft, &payload)
                .await
                .map(Message::RaftReply)
                .map_err(|e| error(ErrorCode::MalformedRequest, format!("raft message: {e}"))),
            Message::CoordinatedRead(name) => {
                check_name(&name)?;
                self.raft
                    .ensure_linearizable()
                    .await
                    .map_err(|e| self.not_serving(e))?;
                let register = read_shared(&self.state).registers.read(&name);
                Ok(read_reply(name, register))
            }
            Message::CoordinatedWatch(CoordinatedWatchRequest {
                name,
                seen_revision,
                wait_ms,
            }) => {
                check_name(&name)?;
                self.raft
                    .ensure_linearizable()
                    .await
                    .map_err(|e| self.not_serving(e))?;
                let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_WATCH_WAIT);
                let register = self.register_after(&name, seen_revision, wait).await;
                Ok(read_reply(name, register))
            }
            Message::CoordinatedWrite(CoordinatedWriteRequest {
                name,
                expected_revision,
                value,
            }) => {
                check_name(&name)?;
                if value.len() > MAX_VALUE_LEN {
                    return Err(error(
                        ErrorCode::ValueTooLarge,
                        format!(
                            "a register holds at most {MAX_VALUE_LEN} bytes, not {}",
                            value.len()
                        ),
                    ));
                }
                let command = Command::Write {
                    name: name.clone(),
                    expected_revision,
                    value: value.to_vec(),
                };
                let outcome = self
                    .raft
                    .client_write(command)
                    .await
                    .map_err(|e| self.not_serving(e))?
                    .data;
                Ok(Message::CoordinatedReply(CoordinatedReply {
                    register: CoordinatedRegister {
                        name,
                        revision: outcome.register.revision,
                        value: Bytes::from(outcome.register.value),
                    },
                    written: outcome.written,
                }))
            }
            Message::Status => Ok(Message::CoordinatorStatus(self.status())),
            Message::GetClusterInfo => {
                self.raft
                    .ensure_linearizable()
                    .await
                    .map_err(|e| self.not_serving(e))?;
                let register = read_shared(&self.state).registers.read(CORE_STATE_REGISTER);
                cluster_info(&register.value).map(Message::ClusterInfo)
            }
            other => Err(error(
                ErrorCode::UnknownMessage,
                format!("a coordinator does not take {}", other.name()),
            )),
        }
    }

    /// The register `name` once its revision passes `seen`, or as it
    /// stands after `wait`. The state machine counts its changes after
    /// making them, so a count taken before a look wakes on any change
    /// after it.
    async fn register_after(&self, name: &str, seen: u64, wait: Duration) -> Register {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changes = self.changes.get();
            let register = read_shared(&self.state).registers.read(name);
            if register.revision > seen {
                return register;
            }
            let next = self.changes.wait_for(|count| *count != changes);
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                return register;
            }
        }
    }

    /// Why this coordinator cannot serve a read or write now; the client
    /// tries another.
    fn not_serving<E: NotLeader + std::fmt::Display>(&self, e: RaftError<NodeId, E>) -> ErrorReply {
        let message = match &e {
            RaftError::APIError(api) => match api.leader() {
                Some(leader) => format!(
                    "coordinator {} does not lead; coordinator {leader} does",
                    self.id
                ),
                None => format!("coordinator {} does not lead: {api}", self.id),
            },
            RaftError::Fatal(fatal) => format!("coordinator {} stopped: {fatal}", self.id),
        };
        error(ErrorCode::Unavailable, message)
    }
}

/// The errors of a leader-only call, which name the leader when known.
trait NotLeader {
    fn leader(&self) -> Option<NodeId>;
}

impl NotLeader for ClientWriteError<NodeId, BasicNode> {
    fn leader(&self) -> Option<NodeId> {
        match self {
            ClientWriteError::ForwardToLeader(f) => f.leader_id,
            ClientWriteError::ChangeMembershipError(_) => None,
        }
    }
}

impl NotLeader for CheckIsLeaderError<NodeId, BasicNode> {
    fn leader(&self) -> Option<NodeId> {
        match self {
            CheckIsLeaderError::ForwardToLeader(f) => f.leader_id,
            CheckIsLeaderError::QuorumNotEnough(_) => None,
        }
    }
}

fn error(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply {
        code,
        message,
        version: None,
    }
}

/// The answer to a read or a watch of the register `name`.
fn read_reply(name: String, register: Register) -> Message {
    Message::CoordinatedReply(CoordinatedReply {
        register: CoordinatedRegister {
            name,
            revision: register.revision,
            value: Bytes::from(register.value),
        },
        written: false,
    })
}

fn check_name(name: &str) -> Result<(), ErrorReply> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(error(
            ErrorCode::MalformedRequest,
            format!(
                "a register name has 1 to {MAX_NAME_LEN} bytes, not {}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Where the current generation's commit path is, by the core state.
fn cluster_info(core_state: &[u8]) -> Result<ClusterInfoReply, ErrorReply> {
    let state = CoreState::from_register(core_state)
        .map_err(|e| error(ErrorCode::Corrupt, format!("the core state register: {e}")))?;
    let current = state.current();
    let path = current.and_then(|g| g.commit_path.as_ref());
    Ok(ClusterInfoReply {
        epoch: state.epoch,
        sequencer: path.map(|p| p.sequencer),
        proxies: path.map(|p| p.proxies.clone()).unwrap_or_default(),
        tlogs: current.map(|g| g.tlogs.clone()).unwrap_or_default(),
        excluded_servers: current
            .map(|g| g.excluded_servers.iter().copied().collect())
            .unwrap_or_default(),
    })
}

impl Service for CoordinatorService {
    fn handle(&self, request: Message, responder: Responder) {
        if let (Message::RegisterWorker(_), Some(controller)) = (&request, &self.controller) {
            return controller.handle(request, responder);
        }
        let service = self.clone();
        responder.reply_with(service.handle(request));
    }
}
