//! Runs an election `Candidate` against the coordinators: asks what it
//! says, feeds it the answers with the time from the `Clock` handle, and
//! publishes whether it leads and who the controller is.
//!
//! ```text
//!  loop: Candidate::next_request(now) ─▶ CoordinatorClient read / write ─▶ Candidate::on_answer
//!        sleep half a renew interval between requests
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use proto::clock::Clock;
use tokio::task::JoinHandle;

use crate::client::CoordinatorClient;
use crate::election::{Answer, Candidate, ElectionConfig, Holder, Request, CONTROLLER_REGISTER};

/// A candidate running as a task; dropping it stops the task.
pub struct Candidacy {
    candidate: Arc<Mutex<Candidate>>,
    clock: Arc<dyn Clock>,
    task: JoinHandle<()>,
}

fn lock(candidate: &Mutex<Candidate>) -> MutexGuard<'_, Candidate> {
    candidate.lock().unwrap_or_else(|e| e.into_inner())
}

impl Candidacy {
    /// Stands `me` for controller through `client`, whose calls should give
    /// up well within a lease.
    pub fn start(
        client: CoordinatorClient,
        me: Holder,
        config: ElectionConfig,
        clock: Arc<dyn Clock>,
    ) -> Candidacy {
        let candidate = Arc::new(Mutex::new(Candidate::new(me, config)));
        let task = tokio::spawn(run(client, candidate.clone(), config, clock.clone()));
        Candidacy {
            candidate,
            clock,
            task,
        }
    }

    /// Whether this candidate is the controller now.
    pub fn leads(&self) -> bool {
        lock(&self.candidate).leads(self.clock.now_ms())
    }

    /// The controller as far as this candidate knows.
    pub fn controller(&self) -> Option<Holder> {
        lock(&self.candidate)
            .controller(self.clock.now_ms())
            .cloned()
    }
}

impl Drop for Candidacy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    client: CoordinatorClient,
    candidate: Arc<Mutex<Candidate>>,
    config: ElectionConfig,
    clock: Arc<dyn Clock>,
) {
    let pause = Duration::from_millis(config.renew_every_ms / 2);
    let mut was_leading = false;
    loop {
        let sent = clock.now_ms();
        let request = lock(&candidate).next_request(sent);
        let answer = match request {
            None => None,
            Some(Request::Read) => match client.read(CONTROLLER_REGISTER).await {
                Ok(register) => Some(Answer {
                    revision: register.revision,
                    value: register.value.to_vec(),
                    written: false,
                }),
                Err(error) => {
                    tracing::debug!(%error, "reading the controller register failed");
                    None
                }
            },
            Some(Request::Write {
                expected_revision,
                value,
            }) => match client
                .write(CONTROLLER_REGISTER, expected_revision, Bytes::from(value))
                .await
            {
                Ok(outcome) => Some(Answer {
                    revision: outcome.register.revision,
                    value: outcome.register.value.to_vec(),
                    written: outcome.written,
                }),
                Err(error) => {
                    tracing::debug!(%error, "writing the controller register failed");
                    None
                }
            },
        };
        let now = clock.now_ms();
        let leading = {
            let mut candidate = lock(&candidate);
            if let Some(answer) = answer {
                candidate.on_answer(sent, now, answer);
            }
            candidate.leads(now)
        };
        if leading != was_leading {
            tracing::info!(
                leading,
                "controller role {}",
                if leading { "won" } else { "lost" }
            );
            was_leading = leading;
        }
        tokio::time::sleep(pause).await;
    }
}
