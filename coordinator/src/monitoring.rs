//! Runs the failure detector while this process is the controller: a
//! heartbeat (a status request) to every watched process every 100 ms,
//! each answer fed to the `FailureMonitor` with the time from the `Clock`
//! handle, and a log line when a process is found failed or back.
//!
//! ```text
//!  per process: every 100 ms, if leading ─Status (250 ms)─▶ process ─any answer─▶ monitor.answered
//!  watcher:     every 100 ms: leadership won ─▶ monitor.restart; verdict changes ─▶ log
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::clock::Clock;
use proto::rpc::Message;
use proto::transport::{ClientConfig, Peer, RpcError};
use tokio::task::JoinHandle;

use crate::candidacy::Candidacy;
use crate::monitor::{FailureMonitor, Verdict, Watched};

/// How often each process gets a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// How long a heartbeat waits for its answer.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a process may stay silent before it counts as failed.
pub const FAILURE_TIMEOUT_MS: u64 = 500;

pub struct Monitoring {
    monitor: Arc<Mutex<FailureMonitor>>,
    candidacy: Arc<Candidacy>,
    clock: Arc<dyn Clock>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock(monitor: &Mutex<FailureMonitor>) -> MutexGuard<'_, FailureMonitor> {
    monitor.lock().unwrap_or_else(|e| e.into_inner())
}

impl Monitoring {
    /// Watches `processes` whenever `candidacy` leads.
    pub fn start(
        processes: Vec<(Watched, SocketAddr)>,
        transport: ClientConfig,
        candidacy: Arc<Candidacy>,
        clock: Arc<dyn Clock>,
    ) -> Monitoring {
        let monitor = Arc::new(Mutex::new(FailureMonitor::new(
            processes.iter().map(|(process, _)| process.clone()),
            FAILURE_TIMEOUT_MS,
            clock.now_ms(),
        )));
        let mut tasks: Vec<JoinHandle<()>> = processes
            .into_iter()
            .map(|(process, addr)| {
                let peer = Peer::new(addr, transport.clone());
                tokio::spawn(heartbeat(
                    process,
                    peer,
                    monitor.clone(),
                    candidacy.clone(),
                    clock.clone(),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(watch(
            monitor.clone(),
            candidacy.clone(),
            clock.clone(),
        )));
        Monitoring {
            monitor,
            candidacy,
            clock,
            tasks,
        }
    }

    /// What the detector thinks of each process, while this process is the
    /// controller.
    pub fn verdicts(&self) -> Option<Vec<Verdict>> {
        self.candidacy
            .leads()
            .then(|| lock(&self.monitor).verdicts(self.clock.now_ms()))
    }
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn heartbeat(
    process: Watched,
    peer: Peer,
    monitor: Arc<Mutex<FailureMonitor>>,
    candidacy: Arc<Candidacy>,
    clock: Arc<dyn Clock>,
) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        if !candidacy.leads() {
            continue;
        }
        let answered = match peer.client().await {
            Ok(client) => match client
                .call_with_timeout(Message::Status, HEARTBEAT_TIMEOUT)
                .await
            {
                // An error reply is an answer: the process is up.
                Ok(_) | Err(RpcError::Remote { .. }) => true,
                Err(RpcError::Connect(_) | RpcError::ConnectionClosed | RpcError::Io(_)) => {
                    peer.reset().await;
                    false
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if answered {
            lock(&monitor).answered(&process, clock.now_ms());
        }
    }
}

/// Restarts the detector when this process becomes the controller, and
/// logs each process found failed or back.
async fn watch(
    monitor: Arc<Mutex<FailureMonitor>>,
    candidacy: Arc<Candidacy>,
    clock: Arc<dyn Clock>,
) {
    let mut leading = false;
    let mut failed: BTreeMap<Watched, bool> = BTreeMap::new();
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let now = clock.now_ms();
        match (leading, candidacy.leads()) {
            (false, true) => {
                lock(&monitor).restart(now);
                failed.clear();
                leading = true;
            }
            (true, false) => leading = false,
            _ => {}
        }
        if !leading {
            continue;
        }
        for verdict in lock(&monitor).verdicts(now) {
            let down = verdict.failed_for_ms.is_some();
            if failed
                .insert(verdict.process.clone(), down)
                .unwrap_or(false)
                != down
            {
                let p = &verdict.process;
                if down {
                    tracing::warn!(role = %p.role, id = p.id, address = %p.address, "process failed: no heartbeat answered for {FAILURE_TIMEOUT_MS} ms");
                } else {
                    tracing::info!(role = %p.role, id = p.id, address = %p.address, "process answers again");
                }
            }
        }
    }
}
