//! Peeks over TCP from the TLogs that hold a team.
//!
//! ```text
//! peek(team, begin) ─▶ replicas of team: [a, b, c], start at the last one that answered
//!     attempt 1 ─▶ a ✗ (refused, lost, timed out, overloaded)
//!     attempt 2 ─▶ b ✗
//!     attempt 3 ─▶ c ✗      ── every replica tried: sleep(backoff), backoff *= 2 (bounded)
//!     attempt 4 ─▶ a ✓ ─▶ PeekReply (a is remembered for the team)
//! ```
//!
//! Connections are opened lazily, one per TLog address, shared by every
//! team and cursor using this source, and reopened after they close.
//! A refusal that no retry can fix (`peek_before_popped`, a malformed
//! request) ends the peek at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use proto::rpc::ErrorCode;
use proto::transport::{ClientConfig, Peer, RpcError};
use proto::{PeekReply, PeekRequest, StorageTeamId, Version};
use tracing::debug;

use super::PeekSource;
use crate::error::SourceError;

#[derive(Clone, Debug)]
pub struct TLogSourceConfig {
    /// Connection settings; `request_timeout` bounds each attempt (a long
    /// poll gets `long_poll` on top).
    pub client: ClientConfig,
    /// How long a TLog holds a peek open when it has nothing new.
    pub long_poll: Duration,
    /// Attempts per peek, over all of the team's replicas together.
    pub max_attempts: u32,
    /// Sleep after a round in which every replica failed; grows each round
    /// up to `max_backoff`, with jitter so that many cursors do not retry
    /// in step.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for TLogSourceConfig {
    fn default() -> Self {
        TLogSourceConfig {
            client: ClientConfig::default(),
            long_poll: Duration::from_secs(1),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A [`PeekSource`] over the real TLogs.
///
/// ```no_run
/// # async fn example() -> Result<(), cursor::CursorError> {
/// use std::sync::Arc;
/// use cursor::{PeekCursor, StorageTeamPeekCursor, TLogSource, TLogSourceConfig};
/// use proto::{StorageTeamId, Version};
///
/// let team = StorageTeamId(1);
/// let tlogs = vec!["127.0.0.1:4500".parse().unwrap(), "127.0.0.1:4501".parse().unwrap()];
/// let source = Arc::new(TLogSource::new(TLogSourceConfig::default()).with_team(team, tlogs));
/// let mut cursor = StorageTeamPeekCursor::new(source, team, Version(1));
/// cursor.remote_more_available().await?;
/// # Ok(()) }
/// ```
pub struct TLogSource {
    config: TLogSourceConfig,
    routes: Mutex<Routes>,
    peers: Mutex<BTreeMap<SocketAddr, Arc<Peer>>>,
}

#[derive(Default)]
struct Routes {
    /// The TLogs holding each team, in preference order.
    replicas: BTreeMap<StorageTeamId, Vec<SocketAddr>>,
    /// For teams not listed: typically every TLog holds every team.
    default_replicas: Vec<SocketAddr>,
    /// Index of the replica that answered last, per team.
    preferred: BTreeMap<StorageTeamId, usize>,
}

/// How one attempt ended, when it did not give a reply.
enum Failure {
    /// No other replica or retry will change the answer.
    Final(SourceError),
    Retry {
        reason: RpcError,
        reconnect: bool,
    },
}

impl TLogSource {
    pub fn new(config: TLogSourceConfig) -> TLogSource {
        TLogSource {
            config,
            routes: Mutex::new(Routes::default()),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The TLogs that hold every team not given its own list.
    pub fn with_default_replicas(self, tlogs: Vec<SocketAddr>) -> TLogSource {
        self.routes().default_replicas = tlogs;
        self
    }

    pub fn with_team(self, team: StorageTeamId, tlogs: Vec<SocketAddr>) -> TLogSource {
        self.set_replicas(team, tlogs);
        self
    }

    /// Sets (or replaces) the TLogs that hold `team`, e.g. when a server's
    /// team set grows.
    pub fn set_replicas(&self, team: StorageTeamId, tlogs: Vec<SocketAddr>) {
        let mut routes = self.routes();
        routes.preferred.remove(&team);
        routes.replicas.insert(team, tlogs);
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // Every update is a single insert or remove: a panic elsewhere
        // cannot leave the maps half-changed.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(addr)
            .or_insert_with(|| Arc::new(Peer::new(addr, self.config.client.clone())))
            .clone()
    }

    async fn attempt(&self, addr: SocketAddr, request: PeekRequest) -> Result<PeekReply, Failure> {
        let client = self
            .peer(addr)
            .client()
            .await
            .map_err(|reason| Failure::Retry {
                reason,
                reconnect: true,
            })?;
        client.peek(request).await.map_err(|error| match error {
            RpcError::Remote {
                code,
                message,
                version,
            } => match code {
                ErrorCode::PeekBeforePopped => Failure::Final(SourceError::Popped {
                    begin: request.begin,
                    popped: version,
                }),
                ErrorCode::UnknownTeam
                | ErrorCode::Timeout
                | ErrorCode::Overloaded
                | ErrorCode::TLogStopped
                | ErrorCode::Poisoned
                | ErrorCode::Unknown => Failure::Retry {
                    reason: RpcError::Remote {
                        code,
                        message,
                        version,
                    },
                    reconnect: false,
                },
                _ => Failure::Final(SourceError::Corrupt(format!(
                    "{addr} refused the peek: {code}: {message}"
                ))),
            },
            reason => Failure::Retry {
                reason,
                reconnect: true,
            },
        })
    }

    async fn peek_with_retries(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> Result<PeekReply, SourceError> {
        let (replicas, first) = {
            let routes = self.routes();
            let replicas = routes
                .replicas
                .get(&team)
                .unwrap_or(&routes.default_replicas)
                .clone();
            let first = routes.preferred.get(&team).copied().unwrap_or(0);
            (replicas, first)
        };
        if replicas.is_empty() {
            return Err(SourceError::UnknownTeam);
        }
        let request = PeekRequest {
            team,
            begin,
            max_bytes,
            timeout_ms: u32::try_from(self.config.long_poll.as_millis()).unwrap_or(u32::MAX),
        };
        let attempts = self.config.max_attempts.max(1);
        let mut delays = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.config.initial_backoff)
            .with_max_delay(self.config.max_backoff)
            .without_max_times()
            .build();
        let mut every_replica_lacks_team = true;
        let mut last_error = None;
        for attempt in 0..attempts {
            let index = (first + attempt as usize) % replicas.len();
            let addr = replicas[index];
            match self.attempt(addr, request).await {
                Ok(reply) => {
                    self.routes().preferred.insert(team, index);
                    return Ok(reply);
                }
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retry { reason, reconnect }) => {
                    debug!(%team, %addr, attempt, error = %reason, "peek attempt failed");
                    if reconnect {
                        self.peer(addr).reset().await;
                    }
                    every_replica_lacks_team &= matches!(
                        reason,
                        RpcError::Remote {
                            code: ErrorCode::UnknownTeam,
                            ..
                        }
                    );
                    last_error = Some(reason);
                }
            }
            let round_done = (attempt as usize + 1) % replicas.len() == 0;
            if round_done && attempt + 1 < attempts {
                let delay = delays.next().unwrap_or(self.config.max_backoff);
                tokio::time::sleep(delay).await;
            }
        }
        Err(match last_error {
            _ if every_replica_lacks_team => SourceError::UnknownTeam,
            Some(RpcError::Timeout) => SourceError::Timeout { attempts },
            reason => SourceError::Unavailable {
                attempts,
                reason: reason.map_or_else(String::new, |r| r.to_string()),
            },
        })
    }
}

impl PeekSource for TLogSource {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        self.peek_with_retries(team, begin, max_bytes)
    }
}
