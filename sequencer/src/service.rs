//! The sequencer process: the sequencer and the resolver cores behind one
//! RPC service.
//!
//! ```text
//!  proxies ─sequence─────────▶ SequencerCore: the report it carries, versions
//!                                  ─▶ ResolverCore (waits in version order)
//!          ─report_committed─▶ SequencerCore
//!  clients ─get_read_version─▶ SequencerCore
//!  status  ─status───────────▶ last and committed versions
//! ```
//!
//! Metrics (through the `metrics` facade; a no-op unless the process installs
//! a recorder): `teamlog_sequencer_last_version` and
//! `teamlog_sequencer_committed_version`, set as versions are handed out and
//! reported.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use backon::Retryable;
use proto::clock::Clock;
use proto::rpc::{
    ErrorCode, ErrorReply, GetReadVersionReply, Message, ResolveReply, ResolveRequest,
    SequenceReply, SequencerStatusReply,
};
use proto::transport::{ClientConfig, Responder, RpcClient, Service};
use proto::{ProxyId, Version};
use tokio::sync::oneshot;

use crate::resolver::{ResolverCore, ResolverError};
use crate::sequencer::{SequencerCore, SequencerError};
use cluster::retry::{backoff, wait_until};

/// Where a sequencer's versions start.
#[derive(Clone, Debug)]
pub enum SequencerStart {
    /// After the highest version any of these TLogs holds: a cluster with
    /// fixed roles, whose sequencer restarts over the same TLogs.
    AfterTLogs(Vec<SocketAddr>),
    /// After a recovery version: the sequencer of generation `epoch`, whose
    /// TLogs begin there, handing out versions above `floor`. It hands out
    /// nothing until opened (`Message::OpenCommits`), once its generation's
    /// commit path is recorded.
    AfterRecovery {
        version: Version,
        floor: Version,
        epoch: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SequencerConfig {
    pub proxies: BTreeSet<ProxyId>,
    pub start: SequencerStart,
    /// How long a batch may wait at the resolver for its predecessor.
    pub resolve_wait_timeout: Duration,
    /// How long to keep trying to reach the TLogs at start.
    pub startup_timeout: Duration,
    /// How the sequencer calls the TLogs.
    pub transport: ClientConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tlog {addr} did not answer within {waited:?}: {reason}")]
    TLogUnreachable {
        addr: SocketAddr,
        waited: Duration,
        reason: String,
    },
}

type ResolveToken = oneshot::Sender<Result<ResolveReply, ResolverError>>;

struct Inner {
    /// The generation this sequencer serves, when recruited by a recovery.
    epoch: Option<u64>,
    sequencer: Mutex<SequencerCore>,
    resolver: Mutex<ResolverCore<ResolveToken>>,
    clock: Arc<dyn Clock>,
}

#[derive(Clone)]
pub struct SequencerService {
    inner: Arc<Inner>,
}

impl SequencerService {
    /// Starts where `config.start` says, so versions never repeat across
    /// restarts of the sequencer or generations.
    pub async fn start(
        config: &SequencerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let (last, floor, epoch) = match &config.start {
            SequencerStart::AfterTLogs(tlogs) => {
                let mut last = Version::ZERO;
                for addr in tlogs {
                    last = last.max(
                        durable_version_of(*addr, config.startup_timeout, &config.transport)
                            .await?,
                    );
                }
                (last, last, None)
            }
            SequencerStart::AfterRecovery {
                version,
                floor,
                epoch,
            } => (*version, *floor, Some(*epoch)),
        };
        tracing::info!(%last, %floor, "sequencer starting");
        let wait_ms = config.resolve_wait_timeout.as_millis() as u64;
        let core = match epoch {
            Some(_) => {
                SequencerCore::after_recovery(last, floor, &config.proxies, clock.now_us()).closed()
            }
            None => SequencerCore::new(last, &config.proxies, clock.now_us()),
        };
        let inner = Arc::new(Inner {
            epoch,
            sequencer: Mutex::new(core),
            resolver: Mutex::new(ResolverCore::new(last, &config.proxies, wait_ms)),
            clock,
        });
        tokio::spawn(expire_waiting(Arc::downgrade(&inner)));
        Ok(SequencerService { inner })
    }

    pub fn last_version(&self) -> Version {
        lock(&self.inner.sequencer).last_version()
    }

    /// Stops handing out versions and waits, up to `timeout`, until every
    /// version out is committed, so that a clean stop leaves no hole in
    /// the chain. Proxies retry their requests meanwhile and reach the
    /// sequencer's next life.
    pub async fn drain(&self, timeout: Duration) {
        lock(&self.inner.sequencer).stop_handing_out();
        if !wait_until(|| lock(&self.inner.sequencer).is_settled(), timeout).await {
            tracing::warn!(?timeout, "stopping with versions out that did not commit");
        }
    }

    pub fn status(&self) -> SequencerStatusReply {
        let sequencer = lock(&self.inner.sequencer);
        SequencerStatusReply {
            last_version: sequencer.last_version(),
            committed_version: sequencer.read_version(),
        }
    }

    async fn handle(self, request: Message) -> Result<Message, ErrorReply> {
        let inner = &self.inner;
        match request {
            Message::Sequence(r) => {
                let now = inner.clock.now_us();
                let versions = {
                    let mut sequencer = lock(&inner.sequencer);
                    if r.committed > Version::ZERO {
                        sequencer
                            .report_committed(r.committed)
                            .map_err(sequencer_error)?;
                        metrics::gauge!("teamlog_sequencer_committed_version")
                            .set(sequencer.read_version().0 as f64);
                    }
                    sequencer
                        .commit_version(r.proxy, r.request_num, now)
                        .map_err(sequencer_error)?
                };
                metrics::gauge!("teamlog_sequencer_last_version").set(versions.version.0 as f64);
                let request = ResolveRequest {
                    proxy: r.proxy,
                    prev_version: versions.prev_version,
                    version: versions.version,
                    transactions: r.transactions,
                };
                let (tx, rx) = oneshot::channel();
                let answers = lock(&inner.resolver).resolve(request, tx, inner.clock.now_ms());
                answer(answers);
                let resolved = match rx.await {
                    Ok(resolved) => resolved.map_err(resolver_error),
                    Err(_) => Err(ErrorReply::new(ErrorCode::Unavailable, "resolver stopped")),
                };
                Ok(Message::SequenceReply(SequenceReply { versions, resolved }))
            }
            Message::ReportCommitted(r) => {
                let committed = {
                    let mut sequencer = lock(&inner.sequencer);
                    sequencer
                        .report_committed(r.version)
                        .map_err(sequencer_error)?;
                    sequencer.read_version()
                };
                metrics::gauge!("teamlog_sequencer_committed_version").set(committed.0 as f64);
                Ok(Message::ReportCommittedReply)
            }
            Message::Status => Ok(Message::SequencerStatus(self.status())),
            Message::OpenCommits(epoch) => {
                if inner.epoch != Some(epoch) {
                    return Err(ErrorReply::new(
                        ErrorCode::MalformedRequest,
                        format!("this sequencer does not serve generation {epoch}"),
                    ));
                }
                lock(&inner.sequencer).open();
                tracing::info!(epoch, "sequencer open: handing out versions");
                Ok(Message::OpenCommitsReply)
            }
            Message::GetReadVersion => {
                let version = lock(&inner.sequencer).read_version();
                Ok(Message::GetReadVersionReply(GetReadVersionReply {
                    version,
                }))
            }
            other => Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                format!("a sequencer does not serve {}", other.name()),
            )),
        }
    }
}

impl Service for SequencerService {
    fn handle(&self, request: Message, responder: Responder) {
        responder.reply_with(self.clone().handle(request));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(answers: Vec<(ResolveToken, Result<ResolveReply, ResolverError>)>) {
    for (token, result) in answers {
        let _ = token.send(result);
    }
}

async fn expire_waiting(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.clock.now_ms();
        let answers = lock(&inner.resolver).tick(now);
        answer(answers);
    }
}

async fn durable_version_of(
    addr: SocketAddr,
    waited: Duration,
    transport: &ClientConfig,
) -> Result<Version, StartError> {
    let attempt = || async {
        let client = RpcClient::connect(addr, transport.clone()).await?;
        client.status().await
    };
    let status = attempt
        .retry(backoff(waited))
        .notify(|e, _| tracing::debug!(%addr, error = %e, "tlog not reachable yet"))
        .await
        .map_err(|e| StartError::TLogUnreachable {
            addr,
            waited,
            reason: e.to_string(),
        })?;
    Ok(status.durable_version)
}

fn sequencer_error(e: SequencerError) -> ErrorReply {
    let code = match e {
        SequencerError::StaleRequest { .. } => ErrorCode::MalformedRequest,
        SequencerError::UnknownVersion { .. } => ErrorCode::VersionConflict,
        SequencerError::UnknownProxy(_) => ErrorCode::MalformedRequest,
        SequencerError::Stopping | SequencerError::NotOpen | SequencerError::TooFarAhead { .. } => {
            ErrorCode::Unavailable
        }
    };
    ErrorReply::new(code, e.to_string())
}

fn resolver_error(e: ResolverError) -> ErrorReply {
    let code = match e {
        ResolverError::VersionConflict { .. } => ErrorCode::VersionConflict,
        ResolverError::MissingPredecessor { .. } => ErrorCode::MissingPredecessor,
        ResolverError::UnknownProxy(_) => ErrorCode::MalformedRequest,
    };
    ErrorReply::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::clock::SystemClock;
    use proto::rpc::SequenceRequest;
    use proto::Mutation;

    use super::*;

    async fn sequencer() -> SequencerService {
        let config = SequencerConfig {
            proxies: [ProxyId(1), ProxyId(2)].into(),
            start: SequencerStart::AfterTLogs(Vec::new()),
            resolve_wait_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(1),
            transport: ClientConfig::default(),
        };
        SequencerService::start(&config, Arc::new(SystemClock::default()))
            .await
            .unwrap()
    }

    fn request(proxy: u64, request_num: u64, metadata: Vec<Mutation>) -> Message {
        Message::Sequence(SequenceRequest {
            proxy: ProxyId(proxy),
            request_num,
            transactions: vec![proto::rpc::ResolveTransaction {
                metadata,
                ..Default::default()
            }],
            committed: Version::ZERO,
        })
    }

    async fn sequence(service: &SequencerService, request: Message) -> SequenceReply {
        match service.clone().handle(request).await {
            Ok(Message::SequenceReply(reply)) => reply,
            other => panic!("expected a sequence reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn one_call_hands_out_versions_and_resolves_at_them_and_a_retry_gets_the_same() {
        let service = sequencer().await;
        let change = Mutation::SetValue {
            key: Bytes::from_static(b"\xff/keyServers/a"),
            value: Bytes::from_static(b"2"),
        };
        let first = sequence(&service, request(1, 10, vec![change.clone()])).await;
        assert_eq!(first.versions.prev_version, Version::ZERO);
        assert!(first.resolved.as_ref().unwrap().metadata.is_empty());
        let second = sequence(&service, request(2, 10, Vec::new())).await;
        assert_eq!(second.versions.prev_version, first.versions.version);
        let learned = &second.resolved.as_ref().unwrap().metadata;
        assert_eq!(learned.len(), 1, "proxy 2 learns proxy 1's change");
        assert_eq!(
            (learned[0].version, &learned[0].mutations),
            (first.versions.version, &vec![change.clone()])
        );
        // A reply lost on the way: the retry gets the same versions and
        // the same resolution, and hands out nothing new.
        assert_eq!(sequence(&service, request(2, 10, Vec::new())).await, second);
        assert_eq!(service.last_version(), second.versions.version);
    }

    #[tokio::test]
    async fn a_report_carried_by_a_sequence_call_is_heard_before_it_is_answered() {
        let service = sequencer().await;
        let first = sequence(&service, request(1, 1, Vec::new())).await;
        let read_version = || async {
            match service.clone().handle(Message::GetReadVersion).await {
                Ok(Message::GetReadVersionReply(reply)) => reply.version,
                other => panic!("expected a read version, got {other:?}"),
            }
        };
        assert_eq!(read_version().await, Version::ZERO);
        let Message::Sequence(mut carrying) = request(1, 2, Vec::new()) else {
            unreachable!()
        };
        carrying.committed = first.versions.version;
        sequence(&service, Message::Sequence(carrying.clone())).await;
        assert_eq!(read_version().await, first.versions.version);
        // A version never handed out is refused, and hands out nothing.
        let last = service.last_version();
        carrying.request_num = 3;
        carrying.committed = Version(last.0 + 1);
        let refused = service.clone().handle(Message::Sequence(carrying)).await;
        assert!(
            matches!(&refused, Err(e) if e.code == ErrorCode::VersionConflict),
            "{refused:?}"
        );
        assert_eq!(service.last_version(), last);
        assert_eq!(read_version().await, first.versions.version);
    }

    #[tokio::test]
    async fn a_proxy_outside_the_cluster_gets_no_versions() {
        let service = sequencer().await;
        let refused = service.clone().handle(request(9, 1, Vec::new())).await;
        assert!(
            matches!(&refused, Err(e) if e.code == ErrorCode::MalformedRequest),
            "{refused:?}"
        );
        assert_eq!(service.last_version(), Version::ZERO);
    }
}
