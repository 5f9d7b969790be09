//! Which storage servers the running generation leaves out: what the
//! configuration asks (`exclusion`), the servers found failed
//! (`failures`), and a watch on the configuration register so that a
//! change is followed at once rather than at the next periodic read.
//!
//! ```text
//!  "configuration" register ─watch─▶ ConfigurationWatch::changed ─┐
//!  every second ──────────────────────────────────────────────────┴─▶ review_failures, exclusion_changed
//!                                                                       └─ set ≠ the generation's ─▶ recovery
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use cluster::configuration::CONFIGURATION_REGISTER;
use cluster::retry::endless_backoff;
use coordinator::client::CoordinatorClient;
use proto::rpc::Message;
use proto::transport::RpcClient;

use super::{lock, Inner};
use crate::exclusion::{self, Exclusion};
use crate::failures::{self, StorageProbes};

/// How long the controller's reads of the configuration and the core
/// state may take, between the other duties of its watch.
const CONFIGURATION_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a storage server has to say whether it holds its teams' data.
const STORAGE_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one watch of the configuration register waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// A watch on the configuration register: says when it changed since last
/// asked. It stops when dropped.
pub(super) struct ConfigurationWatch {
    changed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ConfigurationWatch {
    pub(super) fn start(coordinators: CoordinatorClient) -> ConfigurationWatch {
        let changed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch_configuration(coordinators, changed.clone()));
        ConfigurationWatch { changed, task }
    }

    /// Whether the register changed since the last call.
    pub(super) fn changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

impl Drop for ConfigurationWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_configuration(coordinators: CoordinatorClient, changed: Arc<AtomicBool>) {
    let mut seen = 0;
    let mut delays = endless_backoff().build();
    loop {
        match coordinators
            .watch(CONFIGURATION_REGISTER, seen, WATCH_WAIT)
            .await
        {
            Ok(register) => {
                delays = endless_backoff().build();
                if register.revision > seen {
                    seen = register.revision;
                    changed.store(true, Ordering::Release);
                }
            }
            Err(error) => {
                // The watch loop still reads the configuration every second.
                tracing::debug!(%error, "watching the configuration failed");
                tokio::time::sleep(delays.next().unwrap_or(WATCH_WAIT)).await;
            }
        }
    }
}

impl Inner {
    /// The storage servers the generation should leave out by the
    /// configuration, when it and the core state can be read; status says
    /// why what the configuration asks is not (yet) followed.
    pub(super) async fn excluded_wanted(&self) -> Option<Exclusion> {
        let reads = async {
            tokio::try_join!(
                self.coordinators.read_configuration(),
                self.coordinators.read_core_state()
            )
        };
        let (configuration, (state, _)) =
            match tokio::time::timeout(CONFIGURATION_READ_TIMEOUT, reads).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the configuration cannot be read");
                    return None;
                }
                Err(_) => return None,
            };
        let current = state
            .generations
            .last()
            .map(|g| g.excluded_servers.clone())
            .unwrap_or_default();
        let topology = self.config.cluster.topology();
        let map = match &state.shard_map {
            Some(snapshot) => snapshot.map().ok()?,
            None => self.config.initial_shards.clone(),
        };
        let wanted = match exclusion::wanted(&topology, &configuration, &map) {
            Ok(wanted) => wanted,
            Err(why) => {
                self.set_status(|s| s.configuration_problem = Some(why));
                return None;
            }
        };
        let asked = exclusion::teammates_to_ask(&topology, &current, &wanted.servers);
        let holders = exclusion::holders(&self.serving(&asked).await, &state);
        let (follow, waiting) = exclusion::to_follow(&topology, &current, &wanted, &holders);
        let problem = (!waiting.is_empty()).then(|| waiting.join("; "));
        self.set_status(|s| s.configuration_problem = problem);
        Some(follow)
    }

    /// Why the running generation no longer leaves out what it should,
    /// if so. While the configuration asks exactly what the generation
    /// leaves out, only the configuration is read.
    pub(super) async fn exclusion_changed(&self) -> Option<String> {
        let read = self.coordinators.read_configuration();
        let Ok(Ok(configuration)) = tokio::time::timeout(CONFIGURATION_READ_TIMEOUT, read).await
        else {
            return None;
        };
        let current = lock(&self.excluded).clone();
        let asked: BTreeSet<u64> = configuration
            .left_out()
            .iter()
            .filter(|s| self.config.storage_servers.contains_key(s))
            .copied()
            .collect();
        if asked == current {
            self.set_status(|s| s.configuration_problem = None);
            return None;
        }
        let wanted = self.excluded_wanted().await?.servers;
        (wanted != current).then(|| {
            format!("the configuration leaves out storage servers {wanted:?}, the generation {current:?}")
        })
    }

    /// Leaves out the storage servers silent past the timeout, and takes
    /// back those that answer again (`failures`); status says which.
    pub(super) async fn review_failures(&self, storage: &StorageProbes) {
        let Some(timeout) = self.config.storage_failure_timeout else {
            return;
        };
        let now = self.clock.now_ms();
        if !self.pauses.trusts_silence(now) {
            storage.forgive(now);
        }
        let topology = self.config.cluster.topology();
        let reviewed = failures::review_and_record(
            &self.coordinators,
            &topology,
            &self.config.initial_shards,
            storage,
            self.clock.as_ref(),
            timeout,
        );
        match reviewed.await {
            Ok(review) => self.set_status(|s| s.failures = review.lines),
            Err(why) => tracing::debug!(%why, "no review of failed storage servers this time"),
        }
    }

    /// Of `servers`, those that answer that they hold their teams' data
    /// (`exclusion::holds_its_teams`).
    pub(super) async fn serving(&self, servers: &BTreeSet<u64>) -> BTreeSet<u64> {
        let asks = servers.iter().filter_map(|id| {
            let address = *self.config.storage_servers.get(id)?;
            Some(async move {
                let ask = async {
                    let client = RpcClient::connect(address, self.config.transport.clone()).await?;
                    client.call(Message::Status).await
                };
                match tokio::time::timeout(STORAGE_STATUS_TIMEOUT, ask).await {
                    Ok(Ok(Message::StorageStatus(status)))
                        if exclusion::holds_its_teams(&status) =>
                    {
                        Some(*id)
                    }
                    _ => None,
                }
            })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
