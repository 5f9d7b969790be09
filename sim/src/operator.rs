//! The operator: leaves a storage server out of its team and takes it back
//! (`teamlog exclude`, `teamlog include`; the fault kind `exclude`), or
//! takes a whole team out of the cluster and lets it back in (`teamlog
//! scale`; the fault kind `scale`), by the
//! configuration register, while the clients write, the mover moves and
//! the faults run. Each change makes the controller recover into a
//! generation that follows it; a server taken back copies its team from
//! its teammate. One server or one team is out at a time, so every team
//! keeps one server, and some team stays to hold the shards.
//!
//! ```text
//!  0 ── faults ──▶ fault_end
//!  operator: exclude storage-s ─(0.2–3 s)─▶ include storage-s ─(0.5–3 s)─▶ …
//!         or team t leaving ─▶ (the recorded map names t nowhere, within 20 s)
//!            exclude its servers ─(0.2–3 s)─▶ t back in, its servers included
//!  after: every server taken back, in a generation (`every_server_back`, which also
//!         waits out the controller's own exclusions of servers the faults silenced);
//!         the final checks read them all
//! ```
//!
//! Only a recruited cluster: leaving a server out takes a new generation.

use std::time::Duration;

use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::now;
use crate::layout::{servers_of, storage_ids, TEAMS};
use crate::net;
use crate::trace::Trace;
use crate::workload::LIVENESS;

/// Keeps the operator's draws apart from the others'.
const OPERATOR_STREAM: u64 = 0x6f70_6572;

/// How long one write of the configuration may take before it is tried
/// again.
const WRITE_PATIENCE: Duration = Duration::from_secs(2);

/// How long a leaving team may take to hand over its shards before the
/// operator lets it back in without leaving its servers out.
const EMPTYING_PATIENCE: Duration = Duration::from_secs(20);

/// One change the operator makes to the configuration.
#[derive(Clone, Copy)]
enum Change {
    Exclude(u64),
    Include(u64),
    /// A team leaving (`teamlog scale --remove-servers`), its servers not
    /// left out yet.
    Leave(u64),
    /// A team that left: its servers left out too.
    ExcludeTeam(u64),
    /// A team back in, its servers included.
    Return(u64),
}

impl Change {
    fn apply(self, c: &mut cluster::configuration::Configuration) {
        match self {
            Change::Exclude(server) => {
                c.excluded_servers.insert(server);
            }
            Change::Include(server) => {
                c.excluded_servers.remove(&server);
            }
            // The last team never leaves: its shards would have nowhere
            // to go.
            Change::Leave(team) if (c.leaving_teams.len() as u64) + 1 < TEAMS => {
                c.leaving_teams.insert(team);
            }
            Change::Leave(_) => {}
            Change::ExcludeTeam(team) => c.excluded_servers.extend(servers_of(team)),
            Change::Return(team) => {
                c.leaving_teams.remove(&team);
                c.excluded_servers.retain(|s| !servers_of(team).contains(s));
            }
        }
    }

    /// Whether the change takes something out: those are not begun once
    /// the faults stop.
    fn takes_out(self) -> bool {
        matches!(
            self,
            Change::Exclude(_) | Change::Leave(_) | Change::ExcludeTeam(_)
        )
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Exclude(server) => write!(f, "exclude storage-{server}"),
            Change::Include(server) => write!(f, "include storage-{server}"),
            Change::Leave(team) => write!(f, "team-{team} leaving"),
            Change::ExcludeTeam(team) => write!(f, "team-{team}'s servers excluded"),
            Change::Return(team) => write!(f, "team-{team} back in"),
        }
    }
}

pub struct Operator {
    /// Single servers left out and taken back (the fault kind `exclude`).
    pub exclude: bool,
    /// Whole teams taken out and let back in (the fault kind `scale`).
    pub scale: bool,
    pub seed: u64,
    pub fault_end: Duration,
    pub cluster: ClusterFile,
    pub trace: Trace,
}

impl Operator {
    /// Leaves servers out and takes them back until the faults stop; when
    /// it returns, the last one is taken back in the configuration.
    pub async fn run(&self) {
        let coordinators = match CoordinatorClient::new(
            &self.cluster.coordinator_addresses(),
            net::client_config(),
        ) {
            Ok(coordinators) => coordinators.with_timeout(WRITE_PATIENCE),
            Err(e) => {
                self.trace
                    .violation(format!("the operator has no coordinators: {e}"));
                return;
            }
        };
        let mut rng = StdRng::seed_from_u64(self.seed ^ OPERATOR_STREAM);
        let servers = storage_ids();
        loop {
            let pause = Duration::from_millis(rng.random_range(500..3_000));
            tokio::time::sleep(pause).await;
            if now() >= self.fault_end {
                break;
            }
            // With both kinds, a quarter of the changes take a team out.
            let team_out = self.scale && (!self.exclude || rng.random_bool(0.25));
            let went_on = match team_out {
                true => {
                    let team = rng.random_range(1..=TEAMS);
                    self.team_out_and_back(&coordinators, &mut rng, team).await
                }
                false => {
                    let server = servers[rng.random_range(0..servers.len())];
                    let excluded = self.change(&coordinators, Change::Exclude(server)).await;
                    if excluded {
                        let away = Duration::from_millis(rng.random_range(200..3_000));
                        tokio::time::sleep(away).await;
                    }
                    // Also after an exclusion given up: a write whose
                    // answer was lost may have taken.
                    self.change(&coordinators, Change::Include(server)).await;
                    excluded
                }
            };
            if !went_on {
                break;
            }
        }
    }

    /// Takes `team` out of the cluster as `teamlog scale --remove-servers`
    /// does (leaving; once the recorded shard map names it nowhere, its
    /// servers left out), then lets it back in. Whether the faults still
    /// ran when it began.
    async fn team_out_and_back(
        &self,
        coordinators: &CoordinatorClient,
        rng: &mut StdRng,
        team: u64,
    ) -> bool {
        let left = self.change(coordinators, Change::Leave(team)).await;
        if left && self.emptied(coordinators, team).await {
            let excluded = self.change(coordinators, Change::ExcludeTeam(team)).await;
            if excluded {
                let away = Duration::from_millis(rng.random_range(200..3_000));
                tokio::time::sleep(away).await;
            }
        }
        // Also after a change given up: a write whose answer was lost may
        // have taken.
        self.change(coordinators, Change::Return(team)).await;
        left
    }

    /// Waits until the shard map the controller recorded names `team`
    /// nowhere, for up to `EMPTYING_PATIENCE` and while the faults run.
    async fn emptied(&self, coordinators: &CoordinatorClient, team: u64) -> bool {
        let deadline = now() + EMPTYING_PATIENCE;
        let team = proto::StorageTeamId(team);
        while now() < deadline.min(self.fault_end) {
            let read = tokio::time::timeout(WRITE_PATIENCE, coordinators.read_core_state());
            if let Ok(Ok((state, _))) = read.await {
                let map = state.shard_map.map(|snapshot| snapshot.map());
                if let Some(Ok(map)) = map {
                    if !map.entries().any(|(_, a)| a.teams().any(|t| t == team)) {
                        self.trace
                            .note("operator", format!("{team} holds no shard"));
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.trace.note(
            "operator",
            format!("{team} still holds shards; it is let back in"),
        );
        false
    }

    /// Writes `change` into the configuration, again until it is written.
    /// What takes something back is written within `LIVENESS` after the
    /// faults (else the run has a violation); what takes something out is
    /// not begun once the faults stop (`false`).
    async fn change(&self, coordinators: &CoordinatorClient, change: Change) -> bool {
        loop {
            if change.takes_out() && now() >= self.fault_end {
                return false;
            }
            if now() >= self.fault_end + LIVENESS {
                self.trace.violation(format!(
                    "{change} could not be written within {LIVENESS:?} after the faults"
                ));
                return false;
            }
            let write = coordinators.update_configuration(|c| change.apply(c));
            match tokio::time::timeout(WRITE_PATIENCE, write).await {
                Ok(Ok(_)) => {
                    self.trace.note("operator", change.to_string());
                    return true;
                }
                Ok(Err(e)) => self.trace.note("operator", format!("{change} failed: {e}")),
                Err(_) => self.trace.note(
                    "operator",
                    format!("{change}: no answer in {WRITE_PATIENCE:?}"),
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until a generation with its commit path has every storage server
/// in: those the operator left out and those the controller found failed
/// (a server the faults kept silent past the storage failure timeout),
/// which it takes back once they answer. Past `LIVENESS` the run has a
/// violation; returns whether they all came back.
pub async fn every_server_back(cluster: &ClusterFile, trace: &Trace) -> bool {
    let coordinators =
        match CoordinatorClient::new(&cluster.coordinator_addresses(), net::client_config()) {
            Ok(coordinators) => coordinators.with_timeout(WRITE_PATIENCE),
            Err(e) => {
                trace.violation(format!("no coordinators to read the generation from: {e}"));
                return false;
            }
        };
    let deadline = now() + LIVENESS;
    loop {
        let read = tokio::time::timeout(WRITE_PATIENCE, coordinators.read_core_state());
        if let Ok(Ok((state, _))) = read.await {
            let current = state.current().filter(|g| g.commit_path.is_some());
            if current.is_some_and(|g| g.excluded_servers.is_empty()) {
                return true;
            }
        }
        if now() >= deadline {
            trace.violation(format!(
                "no generation took every storage server back within {LIVENESS:?}"
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
