//! The workload: clients that append unique tokens to random keys and read
//! them back at read versions, while the faults run, and a prober that
//! reads one key from every storage server at a read version each
//! `PROBE_INTERVAL`; then, once the faults stop, a commit that must go
//! through (liveness) and a read of every key from every replica (no
//! acknowledged commit lost, replicas equal, each key answered by exactly
//! one whole team).
//!
//! ```text
//!  0 ── faults ──▶ fault_end ── in-flight calls end ─▶ final commit (≤ LIVENESS)
//!     ─▶ every storage server back in (recruited) ─▶ replica reads
//!  clients: commit {keys} += "c{client}-{n};" │ read key at read_version
//!  prober:  key at read_version from every server: the answers from one team, equal
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use client::{Client, ClientError};
use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;
use proto::rpc::{ErrorCode, GetValueRequest, Message};
use proto::transport::{Peer, RpcError};
use proto::{Mutation, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::now;
use crate::history::{Commit, History, Outcome, Read, TOKEN_END};
use crate::layout::{coordinator_ids, key, servers_of, storage_ids, team_of, Role, KEYS};
use crate::mover::Mover;
use crate::net;
use crate::operator::{self, Operator};
use crate::trace::Trace;

/// How long after the faults stop a commit must be acknowledged.
pub const LIVENESS: Duration = Duration::from_secs(60);

/// How often, while the faults run, one key is read from every storage
/// server at one version.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a probe waits for a server's answer: one cut off or behind
/// just does not count, since the faults may keep it so.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// The stream of a seed that picks the probes' keys.
const PROBE_STREAM: u64 = 0x0b5e_55ed;

pub struct Workload {
    pub cluster: ClusterFile,
    /// Whether an operator leaves storage servers out and takes them back
    /// (a recruited cluster only).
    pub exclude: bool,
    /// Whether the operator takes whole teams out and lets them back in
    /// (a recruited cluster only).
    pub scale: bool,
    pub clients: usize,
    pub seed: u64,
    pub fault_end: Duration,
    pub history: Rc<RefCell<History>>,
    pub trace: Trace,
}

impl Workload {
    pub async fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let client = Client::with_transport(&self.cluster, net::client_config())?;
        // The roles start together; the clients begin once a commit went
        // through, so what they see is the cluster's, not its start-up.
        let up = loop {
            if let Some(version) = self.commit_everywhere(&client, "up").await {
                break version;
            }
            if now() >= LIVENESS {
                self.trace.violation(format!(
                    "no commit was acknowledged within {LIVENESS:?} of the start"
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.trace
            .note("workload", format!("the cluster is up at {up}"));
        let loops = (0..self.clients).map(|i| self.client_loop(i, &client));
        let mover = self.cluster.is_recruited().then(|| Mover {
            seed: self.seed,
            fault_end: self.fault_end,
            trace: self.trace.clone(),
            coordinators: CoordinatorClient::new(
                &self.cluster.coordinator_addresses(),
                net::client_config(),
            )
            .ok(),
        });
        let moves = async {
            if let Some(mover) = &mover {
                mover.run(&client).await;
            }
        };
        let operating = (self.exclude || self.scale) && self.cluster.is_recruited();
        let operator = operating.then(|| Operator {
            exclude: self.exclude,
            scale: self.scale,
            seed: self.seed,
            fault_end: self.fault_end,
            cluster: self.cluster.clone(),
            trace: self.trace.clone(),
        });
        let exclusions = async {
            if let Some(operator) = &operator {
                operator.run().await;
            }
        };
        futures::future::join4(
            futures::future::join_all(loops),
            moves,
            exclusions,
            self.probe_owners(&client),
        )
        .await;
        self.trace.note("workload", "faults over; every call ended");
        let deadline = now() + LIVENESS;
        let last = loop {
            match self.commit_everywhere(&client, "final").await {
                Some(version) => break version,
                None if now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                None => {
                    let controller = match controller_says().await {
                        Some(said) => format!(" (the controller: {said})"),
                        None => String::new(),
                    };
                    self.trace.violation(format!(
                        "no commit was acknowledged within {LIVENESS:?} after the faults \
                         stopped{controller}"
                    ));
                    return Ok(());
                }
            }
        };
        if let Some(mover) = &mover {
            if !mover.settled(&client, now() + LIVENESS).await {
                return Ok(());
            }
        }
        if self.cluster.is_recruited()
            && !operator::every_server_back(&self.cluster, &self.trace).await
        {
            return Ok(());
        }
        self.read_every_replica(&client, last, now() + LIVENESS)
            .await;
        Ok(())
    }

    async fn client_loop(&self, index: usize, client: &Client) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (index as u64 + 1) << 32);
        let who = format!("client-{index}");
        let mut written = 0;
        while now() < self.fault_end {
            if rng.random_bool(0.6) {
                written += 1;
                let count = rng.random_range(1..=3);
                // Each key once: the token is appended once per key.
                let keys: BTreeSet<Bytes> = (0..count)
                    .map(|_| Bytes::from(key(rng.random_range(0..KEYS))))
                    .collect();
                let token = Bytes::from(format!("c{index}-{written}"));
                self.commit(&who, client, keys.into_iter().collect(), token)
                    .await;
            } else {
                let key = Bytes::from(key(rng.random_range(0..KEYS)));
                self.read(&who, client, key).await;
            }
        }
    }

    /// While the faults run, one random key at a time from every storage
    /// server at a fresh read version: whatever servers answer must be of
    /// one team and agree, and their values go to the model's checks. The
    /// final read asks more (every key, a whole team) once faults stopped.
    async fn probe_owners(&self, client: &Client) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ PROBE_STREAM);
        let servers = storage_peers();
        while now() < self.fault_end {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let key = Bytes::from(key(rng.random_range(0..KEYS)));
            let Ok(version) = client.read_version().await else {
                continue;
            };
            let reads = servers.iter().map(|(server, peer)| {
                let key = key.clone();
                async move {
                    let deadline = now() + PROBE_PATIENCE;
                    // The deadline ends the retries; the timeout also cuts
                    // short one call to a server the faults keep silent.
                    let read = read_replica(peer, &key, version, deadline);
                    match tokio::time::timeout(PROBE_PATIENCE, read).await {
                        Ok(Ok(value)) => Some((*server, value)),
                        _ => None,
                    }
                }
            });
            let answers: Vec<(u64, Option<Bytes>)> = futures::future::join_all(reads)
                .await
                .into_iter()
                .flatten()
                .collect();
            self.record_replica_reads(&key, version, &answers);
            let answered: Vec<u64> = answers.iter().map(|(server, _)| *server).collect();
            self.trace.note(
                "prober",
                format!("{key:?} at {version} answered by {answered:?}"),
            );
            self.check_one_team(&key, version, &answers);
        }
    }

    /// Appends `token` to `keys` and records how it ended.
    async fn commit(&self, who: &str, client: &Client, keys: Vec<Bytes>, token: Bytes) -> Outcome {
        let index = {
            let mut history = self.history.borrow_mut();
            history.commits.push(Commit {
                keys: keys.clone(),
                token: token.clone(),
                outcome: Outcome::Unknown("in flight".into()),
            });
            history.commits.len() - 1
        };
        let suffix = Bytes::from([&token[..], &[TOKEN_END]].concat());
        let mutations = keys
            .iter()
            .map(|key| Mutation::AppendIfFits {
                key: key.clone(),
                suffix: suffix.clone(),
            })
            .collect();
        let outcome = match client.commit(mutations).await {
            Ok(version) => Outcome::Acknowledged(version),
            Err(e @ (ClientError::Refused { .. } | ClientError::Unavailable(_))) => {
                Outcome::Refused(e.to_string())
            }
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        self.trace
            .note(who, format!("commit {token:?} to {keys:?}: {outcome:?}"));
        self.history.borrow_mut().commits[index].outcome = outcome.clone();
        outcome
    }

    async fn read(&self, who: &str, client: &Client, key: Bytes) {
        let read = async {
            let version = client.read_version().await?;
            let value = client.get(&key, version).await?;
            Ok::<_, ClientError>((version, value))
        };
        match read.await {
            Ok((version, value)) => {
                self.trace
                    .note(who, format!("read {key:?} at {version}: {value:?}"));
                self.history.borrow_mut().reads.push(Read {
                    key,
                    version,
                    value,
                    from: who.to_owned(),
                });
            }
            Err(e) => self.trace.note(who, format!("read {key:?} failed: {e}")),
        }
    }

    /// One value to every key; its version when acknowledged.
    async fn commit_everywhere(&self, client: &Client, what: &str) -> Option<Version> {
        let keys = (0..KEYS).map(|i| Bytes::from(key(i))).collect();
        let attempt = self.history.borrow().commits.len();
        let token = Bytes::from(format!("{what}-{attempt}"));
        match self.commit("workload", client, keys, token).await {
            Outcome::Acknowledged(version) => Some(version),
            _ => None,
        }
    }

    /// Reads every key from each of its replicas at a read version at or
    /// after `last`, waiting for each replica to catch up until `deadline`.
    /// A read version at or past `last`, the final acknowledged commit.
    async fn read_version_past(
        &self,
        client: &Client,
        last: Version,
        deadline: Duration,
    ) -> Option<Version> {
        loop {
            match client.read_version().await {
                Ok(version) if version >= last => return Some(version),
                Ok(version) => {
                    self.trace.violation(format!(
                        "read version {version} below the acknowledged commit at {last}"
                    ));
                    return None;
                }
                Err(_) if now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    self.trace
                        .violation(format!("no read version after the faults: {e}"));
                    return None;
                }
            }
        }
    }

    /// Every key from every storage server, at one read version past
    /// `last`: the servers that answer must be exactly the servers of one
    /// team (the key's owner at that version; the others refuse it as
    /// `wrong_shard_server`), and agree. A server that caught up past the
    /// version's window makes it too old: the key is read again at a newer
    /// one, as a client would.
    async fn read_every_replica(&self, client: &Client, last: Version, deadline: Duration) {
        let Some(mut version) = self.read_version_past(client, last, deadline).await else {
            return;
        };
        let servers = storage_peers();
        for index in 0..KEYS {
            let key = Bytes::from(key(index));
            let answers = loop {
                match self
                    .read_everywhere(&servers, &key, version, deadline)
                    .await
                {
                    Some(answers) => break answers,
                    None => match self.read_version_past(client, version, deadline).await {
                        Some(newer) => version = newer,
                        None => return,
                    },
                }
            };
            self.record_replica_reads(&key, version, &answers);
            self.check_owners(&key, version, &answers);
        }
        self.trace
            .note("workload", format!("read every replica at {version}"));
    }

    /// `key` at `version` from every server: the values of those that
    /// answer it, or `None` when one found the version too old.
    async fn read_everywhere(
        &self,
        servers: &BTreeMap<u64, Peer>,
        key: &Bytes,
        version: Version,
        deadline: Duration,
    ) -> Option<Vec<(u64, Option<Bytes>)>> {
        let mut answers = Vec::new();
        for (server, peer) in servers {
            match read_replica(peer, key, version, deadline).await {
                Ok(value) => answers.push((*server, value)),
                Err(RpcError::Remote {
                    code: ErrorCode::WrongShardServer,
                    ..
                }) => {}
                Err(RpcError::Remote {
                    code: ErrorCode::TransactionTooOld,
                    ..
                }) if now() < deadline => return None,
                Err(e) => {
                    let stopped = match stopped_applying(peer).await {
                        Some(reason) => format!(" (it stopped applying: {reason})"),
                        None => String::new(),
                    };
                    self.trace.violation(format!(
                        "storage-{server} did not answer for {key:?} at {version} \
                         within {LIVENESS:?} after the faults: {e}{stopped}"
                    ))
                }
            }
        }
        Some(answers)
    }

    /// Storage servers' answers for `key` at `version` go to the model's
    /// checks, as clients' reads do.
    fn record_replica_reads(
        &self,
        key: &Bytes,
        version: Version,
        answers: &[(u64, Option<Bytes>)],
    ) {
        let mut history = self.history.borrow_mut();
        for (server, value) in answers {
            history.reads.push(Read {
                key: key.clone(),
                version,
                value: value.clone(),
                from: Role::Storage(*server).to_string(),
            });
        }
    }

    /// The servers that answered for `key` are one whole team, and agree.
    fn check_owners(&self, key: &Bytes, version: Version, answers: &[(u64, Option<Bytes>)]) {
        let answered: Vec<u64> = answers.iter().map(|(server, _)| *server).collect();
        match answered.first() {
            None => self
                .trace
                .violation(format!("no server answers for {key:?} at {version}")),
            Some(server)
                if answered.iter().all(|s| team_of(*s) == team_of(*server))
                    && answered != servers_of(team_of(*server)) =>
            {
                self.trace.violation(format!(
                    "{key:?} at {version} is answered by part of its team: \
                     only {answered:?}"
                ))
            }
            Some(_) => {}
        }
        self.check_one_team(key, version, answers);
    }

    /// The servers that answered for `key` are of one team, and agree.
    fn check_one_team(&self, key: &Bytes, version: Version, answers: &[(u64, Option<Bytes>)]) {
        let owners: BTreeSet<u64> = answers.iter().map(|(server, _)| team_of(*server)).collect();
        if owners.len() > 1 {
            self.trace.violation(format!(
                "{key:?} at {version} is owned by more than one team: {answers:?} answer for it"
            ));
        }
        if answers.windows(2).any(|pair| pair[0].1 != pair[1].1) {
            self.trace.violation(format!(
                "replicas differ on {key:?} at {version}: {answers:?}"
            ));
        }
    }
}

/// `key` at `version` from a storage server itself, retrying while
/// it has not applied the version or cannot be reached.
async fn read_replica(
    server: &Peer,
    key: &Bytes,
    version: Version,
    deadline: Duration,
) -> Result<Option<Bytes>, RpcError> {
    loop {
        let request = Message::GetValue(GetValueRequest {
            key: key.clone(),
            version,
        });
        let attempt = server.call(|c| async move {
            match c.call(request).await? {
                Message::GetValueReply(reply) => Ok(reply.value),
                other => Err(RpcError::UnexpectedReply(other.name())),
            }
        });
        match attempt.await {
            Ok(value) => return Ok(value),
            Err(e) if now() < deadline && retryable(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a controller says of the recovery it is stuck in, if one runs
/// and is: why the cluster does not come back.
async fn controller_says() -> Option<String> {
    for id in coordinator_ids() {
        let coordinator = Peer::new(Role::Coordinator(id).addr(), net::client_config());
        let status = coordinator.call(|c| async move { c.call(Message::Status).await });
        let Ok(Message::CoordinatorStatus(status)) = status.await else {
            continue;
        };
        let Some(report) = status.recovery else {
            continue;
        };
        let said: Vec<String> = [
            report.recovering.map(|how| format!("recovering: {how}")),
            report
                .last_failure
                .map(|why| format!("last recovery abandoned: {why}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !said.is_empty() {
            return Some(said.join("; "));
        }
    }
    None
}

/// Why a storage server stopped applying, if it says it did: what a
/// correct cluster never makes it do (a recovery below a version it made
/// durable means a committed version was lost).
async fn stopped_applying(server: &Peer) -> Option<String> {
    let status = server.call(|c| async move { c.call(Message::Status).await });
    match status.await {
        Ok(Message::StorageStatus(status)) => status.stopped,
        _ => None,
    }
}

/// A peer for each storage server, by id.
fn storage_peers() -> BTreeMap<u64, Peer> {
    storage_ids()
        .into_iter()
        .map(|id| {
            (
                id,
                Peer::new(Role::Storage(id).addr(), net::client_config()),
            )
        })
        .collect()
}

fn retryable(error: &RpcError) -> bool {
    error.is_transient()
        || matches!(
            error,
            RpcError::Remote {
                code: ErrorCode::FutureVersion,
                ..
            }
        )
}
