//! Reading and writing coordinated registers from any process: the client
//! keeps to the coordinator that answered last, tries the others in turn
//! when it does not lead or cannot be reached, and backs off (jittered,
//! bounded in total) once all have failed.
//!
//! A write sent again after a lost reply may already have taken. The
//! client recognises that case: the register then holds exactly the value
//! sent, at the revision after the expected one, and the write is reported
//! as taken.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use cluster::configuration::{Configuration, ConfigurationError, CONFIGURATION_REGISTER};
use cluster::core_state::{CoreState, CoreStateError, CORE_STATE_REGISTER};
use cluster::retry::backoff;
use proto::rpc::{
    CoordinatedRegister, CoordinatedReply, CoordinatedWatchRequest, CoordinatedWriteRequest,
    CoordinatorStatusReply, ErrorCode, Message,
};
use proto::transport::{ClientConfig, Peer, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No coordinator could serve: a majority is out of reach, or an
    /// election did not end in time. A write's outcome is then unknown: the
    /// leader may have logged it, and it takes once a majority is back.
    /// Read the register to learn.
    #[error("no coordinator could serve within {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    /// The request itself is wrong (a name or value out of bounds); sending
    /// it again will not help.
    #[error("the coordinators refused the request: {0}")]
    Refused(String),
    #[error("the cluster names no coordinators")]
    NoCoordinators,
    /// The core state register holds something this build cannot read.
    #[error("the core state: {0}")]
    CoreState(#[from] CoreStateError),
    /// The configuration register holds something this build cannot read.
    #[error("the configuration: {0}")]
    Configuration(#[from] ConfigurationError),
}

/// The outcome of a conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether this write took.
    pub written: bool,
    /// The register after the write: this write's value, or the one another
    /// writer put there.
    pub register: CoordinatedRegister,
}

pub struct CoordinatorClient {
    peers: Vec<Peer>,
    /// The coordinator to ask first: the one that answered last.
    preferred: AtomicUsize,
    /// How long one call waits for its answer.
    call_timeout: Duration,
    /// How long a read or write keeps trying before it gives up.
    timeout: Duration,
}

enum Attempt {
    /// Try the next coordinator, or wait and try again.
    Retry(String),
    Refused(String),
}

impl CoordinatorClient {
    pub fn new(
        coordinators: &[SocketAddr],
        transport: ClientConfig,
    ) -> Result<CoordinatorClient, CoordinatorError> {
        if coordinators.is_empty() {
            return Err(CoordinatorError::NoCoordinators);
        }
        Ok(CoordinatorClient {
            peers: coordinators
                .iter()
                .map(|addr| Peer::new(*addr, transport.clone()))
                .collect(),
            preferred: AtomicUsize::new(0),
            call_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        })
    }

    /// How long a read or write keeps trying (10 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> CoordinatorClient {
        self.timeout = timeout;
        self
    }

    /// The core state and its revision, linearizably (the initial state,
    /// at revision 0, while none was written).
    pub async fn read_core_state(&self) -> Result<(CoreState, u64), CoordinatorError> {
        let register = self.read(CORE_STATE_REGISTER).await?;
        Ok((
            CoreState::from_register(&register.value)?,
            register.revision,
        ))
    }

    /// The core state once its revision passes `seen`, or as it stands
    /// after about `wait`: a watcher learns of a new generation as soon as
    /// it is recorded. The coordinators bound the wait (5 s).
    pub async fn watch_core_state(
        &self,
        seen: u64,
        wait: Duration,
    ) -> Result<(CoreState, u64), CoordinatorError> {
        let register = self.watch(CORE_STATE_REGISTER, seen, wait).await?;
        Ok((
            CoreState::from_register(&register.value)?,
            register.revision,
        ))
    }

    /// The configuration operators set, linearizably (the default while
    /// none was written).
    pub async fn read_configuration(&self) -> Result<Configuration, CoordinatorError> {
        let register = self.read(CONFIGURATION_REGISTER).await?;
        Ok(Configuration::from_register(&register.value)?)
    }

    /// Changes the configuration with `change`, read anew and applied
    /// again whenever another writer got there first; returns it as
    /// written.
    pub async fn update_configuration(
        &self,
        change: impl Fn(&mut Configuration),
    ) -> Result<Configuration, CoordinatorError> {
        loop {
            let register = self.read(CONFIGURATION_REGISTER).await?;
            let mut configuration = Configuration::from_register(&register.value)?;
            change(&mut configuration);
            let outcome = self
                .write(
                    CONFIGURATION_REGISTER,
                    register.revision,
                    configuration.encode(),
                )
                .await?;
            if outcome.written {
                return Ok(configuration);
            }
        }
    }

    /// Reads a register, linearizably: it reflects every write that took
    /// before the read began.
    pub async fn read(&self, name: &str) -> Result<CoordinatedRegister, CoordinatorError> {
        let reply = self
            .call(|| Message::CoordinatedRead(name.to_owned()))
            .await?;
        Ok(reply.register)
    }

    /// Reads a register once its revision passes `seen`, or after about
    /// `wait` as it then stands (its revision may still be `seen`).
    pub async fn watch(
        &self,
        name: &str,
        seen: u64,
        wait: Duration,
    ) -> Result<CoordinatedRegister, CoordinatorError> {
        let request = CoordinatedWatchRequest {
            name: name.to_owned(),
            seen_revision: seen,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let reply = self
            .call_waiting(wait, || Message::CoordinatedWatch(request.clone()))
            .await?;
        Ok(reply.register)
    }

    /// Sets the register `name` to `value` if its revision is still
    /// `expected_revision`.
    pub async fn write(
        &self,
        name: &str,
        expected_revision: u64,
        value: Bytes,
    ) -> Result<WriteOutcome, CoordinatorError> {
        let request = CoordinatedWriteRequest {
            name: name.to_owned(),
            expected_revision,
            value: value.clone(),
        };
        let reply = self
            .call(|| Message::CoordinatedWrite(request.clone()))
            .await?;
        // A retry of a write that took finds its own value one revision on.
        let took_earlier = !reply.written
            && reply.register.revision == expected_revision + 1
            && reply.register.value == value;
        Ok(WriteOutcome {
            written: reply.written || took_earlier,
            register: reply.register,
        })
    }

    /// Each coordinator's status, in the order given; `Err` says why one
    /// did not answer.
    pub async fn statuses(&self) -> Vec<(SocketAddr, Result<CoordinatorStatusReply, String>)> {
        let asks = self.peers.iter().map(|peer| async move {
            let answer = async {
                let client = peer.client().await.map_err(|e| e.to_string())?;
                match client
                    .call_with_timeout(Message::Status, self.call_timeout)
                    .await
                {
                    Ok(Message::CoordinatorStatus(status)) => Ok(status),
                    Ok(other) => Err(format!("answered {}", other.name())),
                    Err(e) => Err(e.to_string()),
                }
            };
            (peer.addr(), answer.await)
        });
        futures::future::join_all(asks).await
    }

    async fn call(
        &self,
        request: impl Fn() -> Message,
    ) -> Result<CoordinatedReply, CoordinatorError> {
        self.call_waiting(Duration::ZERO, request).await
    }

    /// A call whose answer may take `wait` longer than usual.
    async fn call_waiting(
        &self,
        wait: Duration,
        request: impl Fn() -> Message,
    ) -> Result<CoordinatedReply, CoordinatorError> {
        let round = || async {
            let mut last = String::new();
            let first = self.preferred.load(Ordering::Relaxed);
            for offset in 0..self.peers.len() {
                let index = (first + offset) % self.peers.len();
                match self.ask(&self.peers[index], request(), wait).await {
                    Ok(reply) => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return Ok(reply);
                    }
                    Err(Attempt::Refused(why)) => return Err(Attempt::Refused(why)),
                    Err(Attempt::Retry(why)) => last = why,
                }
            }
            Err(Attempt::Retry(last))
        };
        round
            .retry(backoff(self.timeout))
            .when(|e| matches!(e, Attempt::Retry(_)))
            .await
            .map_err(|e| match e {
                Attempt::Refused(why) => CoordinatorError::Refused(why),
                Attempt::Retry(last) => CoordinatorError::Unavailable {
                    waited: self.timeout,
                    last,
                },
            })
    }

    async fn ask(
        &self,
        peer: &Peer,
        request: Message,
        wait: Duration,
    ) -> Result<CoordinatedReply, Attempt> {
        let addr = peer.addr();
        let client = peer
            .client()
            .await
            .map_err(|e| Attempt::Retry(format!("{addr}: {e}")))?;
        match client
            .call_with_timeout(request, self.call_timeout + wait)
            .await
        {
            Ok(Message::CoordinatedReply(reply)) => Ok(reply),
            Ok(other) => Err(Attempt::Refused(format!(
                "{addr} answered {}",
                other.name()
            ))),
            Err(RpcError::Remote {
                code:
                    code @ (ErrorCode::MalformedRequest
                    | ErrorCode::ValueTooLarge
                    | ErrorCode::Unauthorized),
                message,
                ..
            }) => Err(Attempt::Refused(format!("{addr}: {code:?}: {message}"))),
            Err(e) => {
                if matches!(
                    e,
                    RpcError::Connect(_) | RpcError::ConnectionClosed | RpcError::Io(_)
                ) {
                    peer.reset().await;
                }
                Err(Attempt::Retry(format!("{addr}: {e}")))
            }
        }
    }
}
