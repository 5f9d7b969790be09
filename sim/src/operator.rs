//! The operator: leaves a storage server out of its team and takes it back
//! (`teamlog exclude`, `teamlog include`, by the configuration register),
//! while the clients write, the mover moves and the faults run. Each
//! change makes the controller recover into a generation that follows it;
//! a server taken back copies its team from its teammate. One server is
//! left out at a time, so every team keeps one.
//!
//! ```text
//!  0 ── faults ──▶ fault_end
//!  operator: exclude storage-s ─(0.2–3 s)─▶ include storage-s ─(0.5–3 s)─▶ …
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
use crate::layout::storage_ids;
use crate::net;
use crate::trace::Trace;
use crate::workload::LIVENESS;

/// Keeps the operator's draws apart from the others'.
const OPERATOR_STREAM: u64 = 0x6f70_6572;

/// How long one write of the configuration may take before it is tried
/// again.
const WRITE_PATIENCE: Duration = Duration::from_secs(2);

pub struct Operator {
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
            let server = servers[rng.random_range(0..servers.len())];
            let excluded = self.change(&coordinators, server, true).await;
            if excluded {
                let away = Duration::from_millis(rng.random_range(200..3_000));
                tokio::time::sleep(away).await;
            }
            // Also after an exclusion given up: a write whose answer was
            // lost may have taken.
            self.change(&coordinators, server, false).await;
            if !excluded {
                break;
            }
        }
    }

    /// Writes the configuration with `server` left out or taken back,
    /// again until it is written; a server is taken back within `LIVENESS`
    /// after the faults (else the run has a violation), but one not yet
    /// left out once the faults stop stays in (`false`).
    async fn change(&self, coordinators: &CoordinatorClient, server: u64, exclude: bool) -> bool {
        let verb = if exclude { "exclude" } else { "include" };
        loop {
            if exclude && now() >= self.fault_end {
                return false;
            }
            if now() >= self.fault_end + LIVENESS {
                self.trace.violation(format!(
                    "storage-{server} could not be taken back within {LIVENESS:?} after the faults"
                ));
                return false;
            }
            let write = coordinators.update_configuration(|c| {
                if exclude {
                    c.excluded_servers.insert(server);
                } else {
                    c.excluded_servers.remove(&server);
                }
            });
            match tokio::time::timeout(WRITE_PATIENCE, write).await {
                Ok(Ok(_)) => {
                    self.trace
                        .note("operator", format!("{verb} storage-{server}"));
                    return true;
                }
                Ok(Err(e)) => self
                    .trace
                    .note("operator", format!("{verb} storage-{server} failed: {e}")),
                Err(_) => self.trace.note(
                    "operator",
                    format!("{verb} storage-{server}: no answer in {WRITE_PATIENCE:?}"),
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
