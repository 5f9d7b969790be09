//! The client library: commit batches of mutations, get read versions, and
//! read keys at a version, finding every process through the cluster file
//! (and, where the controller recruits the commit path, the coordinators:
//! see `commit_path`).
//!
//! ```text
//!  Client ─commit─▶ a proxy (round robin; the next one if it cannot be reached)
//!         ─read_version─▶ the sequencer
//!         ─get(key, v)─▶ a proxy: which shard, which teams? (cached) ─▶ one of
//!                        the team's servers (the next on failure; on
//!                        wrong_shard_server everywhere, ask the proxy again)
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use std::collections::BTreeMap;

use bytes::Bytes;
use proto::rpc::{
    ClientCommitRequest, ErrorCode, GetKeyLocationReply, GetKeyLocationRequest, GetRangeRequest,
    GetValueRequest, KeyRange, Message, ShardMetrics,
};
use proto::system_keys::USER_KEYS_END;
use proto::transport::{ClientConfig, Peer, RpcError};
use proto::{Mutation, StorageServerId, StorageTeamId, Version};

use cluster::{ClusterFile, ClusterFileError};

use crate::commit_path::CommitPath;

mod commit_path;
pub mod moves;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster refused the commit; nothing of it was applied.
    #[error("commit refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The commit may or may not have been applied.
    #[error("commit result unknown: {0}")]
    UnknownResult(String),
    #[error("no proxy could be reached: {0}")]
    Unavailable(String),
    #[error("sequencer: {0}")]
    Sequencer(RpcError),
    /// A read failed with an answer the caller can act on (e.g.
    /// `future_version`, `transaction_too_old`).
    #[error("read failed: {code}: {message}")]
    Read { code: ErrorCode, message: String },
    /// A range the cluster cannot read: reversed, or reaching into the
    /// system keys (past `\xff`). Nothing was sent.
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// The cluster file's TLS files could not be read.
    #[error(transparent)]
    Config(#[from] ClusterFileError),
}

pub struct Client {
    path: CommitPath,
    servers: BTreeMap<StorageServerId, Peer>,
    /// Every team's servers, as the cluster file names them.
    teams: BTreeMap<StorageTeamId, Vec<StorageServerId>>,
    /// Shard locations learned from proxies, by shard begin; an entry is
    /// dropped when a server answers `wrong_shard_server` for it.
    locations: Mutex<BTreeMap<Bytes, Location>>,
    next: AtomicUsize,
}

/// A shard and the servers that can answer for it.
#[derive(Clone)]
struct Location {
    begin: Bytes,
    end: Bytes,
    servers: Vec<StorageServerId>,
}

impl Client {
    /// A client of the cluster the file describes, over TLS when the file
    /// says so.
    pub fn new(cluster: &ClusterFile) -> Result<Client, ClientError> {
        Self::with_transport(cluster, cluster.client_config()?)
    }

    /// A client that calls the cluster with `transport`.
    pub fn with_transport(
        cluster: &ClusterFile,
        transport: ClientConfig,
    ) -> Result<Client, ClientError> {
        let peer = |addr| Peer::new(addr, transport.clone());
        Ok(Client {
            path: CommitPath::new(cluster, &transport)?,
            servers: cluster
                .storage_servers
                .iter()
                .map(|s| (StorageServerId(s.id), peer(s.address)))
                .collect(),
            teams: cluster.topology().teams,
            locations: Mutex::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
        })
    }

    /// Commits `mutations` atomically; returns the commit version.
    pub async fn commit(&self, mutations: Vec<Mutation>) -> Result<Version, ClientError> {
        self.send(ClientCommitRequest {
            mutations,
            ..ClientCommitRequest::default()
        })
        .await
    }

    /// Like `commit`, allowing the system keys that admin tools write.
    pub async fn commit_system(&self, mutations: Vec<Mutation>) -> Result<Version, ClientError> {
        self.send(ClientCommitRequest {
            mutations,
            allow_system_keys: true,
            ..ClientCommitRequest::default()
        })
        .await
    }

    /// Like `commit_system`, but refused with `not_committed`, nothing of
    /// it applied, when a key of `read_ranges` (system keys only) was
    /// written after `read_version`: a change decided on what was read.
    pub async fn commit_system_if_unchanged(
        &self,
        mutations: Vec<Mutation>,
        read_version: Version,
        read_ranges: Vec<KeyRange>,
    ) -> Result<Version, ClientError> {
        self.send(ClientCommitRequest {
            mutations,
            allow_system_keys: true,
            read_version,
            read_ranges,
        })
        .await
    }

    async fn send(&self, request: ClientCommitRequest) -> Result<Version, ClientError> {
        let result = self.send_once(request).await;
        if result.is_err() {
            self.path.failed();
        }
        result
    }

    async fn send_once(&self, request: ClientCommitRequest) -> Result<Version, ClientError> {
        let route = self.path.route().await?;
        let proxies = &route.proxies;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in 0..proxies.len() {
            let proxy = &proxies[(start + i) % proxies.len()];
            // Only a failure to connect is safe to retry elsewhere: once the
            // request is sent, it may be applied.
            let client = match proxy.client().await {
                Ok(client) => client,
                Err(e) => {
                    unreachable.push(format!("{}: {e}", proxy.addr()));
                    continue;
                }
            };
            let reply = client.call(Message::ClientCommit(request)).await;
            if matches!(reply, Err(RpcError::Timeout)) {
                proxy.drop_connection(&client).await;
            }
            return match reply {
                Ok(Message::ClientCommitReply(reply)) => Ok(reply.version),
                Ok(other) => Err(ClientError::UnknownResult(format!(
                    "proxy answered {}",
                    other.name()
                ))),
                Err(RpcError::Remote { code, message, .. }) => Err(match code {
                    // `unknown` is what a proxy's responder says when it is
                    // dropped unanswered, which can happen after the push.
                    ErrorCode::CommitUnknownResult | ErrorCode::Unknown => {
                        ClientError::UnknownResult(message)
                    }
                    code => ClientError::Refused { code, message },
                }),
                Err(e) => Err(ClientError::UnknownResult(format!("{}: {e}", proxy.addr()))),
            };
        }
        Err(ClientError::Unavailable(unreachable.join("; ")))
    }

    /// The cluster's teams, as the cluster file names them.
    pub fn teams(&self) -> impl Iterator<Item = StorageTeamId> + '_ {
        self.teams.keys().copied()
    }

    /// What a server of `team` holds and takes in each of `ranges` (at
    /// most `MAX_SHARD_METRICS_RANGES`), estimated from its samples; asks
    /// the team's servers in turn until one answers. Cluster members only.
    pub async fn shard_metrics(
        &self,
        team: StorageTeamId,
        ranges: Vec<KeyRange>,
    ) -> Result<Vec<ShardMetrics>, ClientError> {
        let servers = self.teams.get(&team).map(Vec::as_slice).unwrap_or_default();
        let mut failures = Vec::new();
        for id in servers {
            let Some(peer) = self.servers.get(id) else {
                continue;
            };
            let request = Message::ShardMetrics(ranges.clone());
            match peer.call(|c| async move { c.call(request).await }).await {
                Ok(Message::ShardMetricsReply(m)) if m.len() == ranges.len() => return Ok(m),
                Ok(other) => failures.push(format!("{id}: answered {}", other.name())),
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        Err(ClientError::Unavailable(format!(
            "no server of {team} gave its metrics: {}",
            failures.join("; ")
        )))
    }

    /// The value of `key` at `version`.
    pub async fn get(&self, key: &[u8], version: Version) -> Result<Option<Bytes>, ClientError> {
        let end = proto::key_after(key);
        self.retry_if_stale(key, &end, || self.get_once(key, version))
            .await
    }

    async fn get_once(&self, key: &[u8], version: Version) -> Result<Option<Bytes>, ClientError> {
        let location = self.locate(key, version).await?;
        let request = Message::GetValue(GetValueRequest {
            key: Bytes::copy_from_slice(key),
            version,
        });
        match self.ask_servers(&location, request).await? {
            Message::GetValueReply(reply) => Ok(reply.value),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `limit` pairs of `[begin, end)` at `version`, ascending (or
    /// descending when `reverse`), and whether more remain.
    pub async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        version: Version,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ClientError> {
        check_range(begin, end)?;
        self.retry_if_stale(begin, end, || {
            self.get_range_once(begin, end, limit, reverse, version)
        })
        .await
    }

    /// Runs a read; when every server said `wrong_shard_server`, a cached
    /// location of `[begin, end)` was stale: forget them and run it again,
    /// once, with locations fresh from a proxy.
    async fn retry_if_stale<R, F, Fut>(
        &self,
        begin: &[u8],
        end: &[u8],
        read: F,
    ) -> Result<R, ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<R, ClientError>>,
    {
        match read().await {
            Err(ClientError::Read {
                code: ErrorCode::WrongShardServer,
                ..
            }) => {
                self.forget_range(begin, end);
                read().await
            }
            other => other,
        }
    }

    async fn get_range_once(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        version: Version,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ClientError> {
        // The shards the range spans, in key order.
        let mut shards = Vec::new();
        let mut at = Bytes::copy_from_slice(begin);
        while at.as_ref() < end && limit > 0 {
            let location = self.locate(&at, version).await?;
            if location.end.as_ref() <= at.as_ref() {
                return Err(ClientError::Read {
                    code: ErrorCode::Unknown,
                    message: format!(
                        "the shard map gave a shard ending at {:?}, not after {:?}",
                        location.end, at
                    ),
                });
            }
            at = location.end.clone();
            shards.push(location);
        }
        if reverse {
            shards.reverse();
        }
        let mut pairs = Vec::new();
        for (i, location) in shards.iter().enumerate() {
            let mut lo = Bytes::copy_from_slice(location.begin.as_ref().max(begin));
            let mut hi = Bytes::copy_from_slice(location.end.as_ref().min(end));
            // A server returns at most a page per request: continue after
            // the last pair until the shard is done or the limit is reached.
            loop {
                let request = Message::GetRange(GetRangeRequest {
                    begin: lo.clone(),
                    end: hi.clone(),
                    limit: u32::try_from(limit - pairs.len()).unwrap_or(u32::MAX),
                    reverse,
                    version,
                    copy: false,
                });
                let reply = match self.ask_servers(location, request).await? {
                    Message::GetRangeReply(reply) => reply,
                    other => return Err(unexpected(other)),
                };
                let last_key = reply.pairs.last().map(|(k, _)| k.clone());
                pairs.extend(reply.pairs);
                if pairs.len() >= limit {
                    let more = reply.more || i + 1 < shards.len();
                    return Ok((pairs, more));
                }
                match (reply.more, last_key) {
                    (true, Some(last)) if reverse => hi = last,
                    (true, Some(last)) => lo = proto::key_after(&last),
                    _ => break,
                }
            }
        }
        Ok((pairs, false))
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<Bytes, Location>> {
        self.locations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_range(&self, begin: &[u8], end: &[u8]) {
        self.cache()
            .retain(|_, l| l.end.as_ref() <= begin || l.begin.as_ref() >= end);
    }

    /// The shard holding `key`: cached, or asked of a proxy.
    async fn locate(&self, key: &[u8], version: Version) -> Result<Location, ClientError> {
        let cached = self
            .cache()
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .map(|(_, l)| l.clone())
            .filter(|l| key < l.end.as_ref());
        if let Some(location) = cached {
            return Ok(location);
        }
        let location = self.fetch_location(key, version).await?;
        self.cache()
            .insert(location.begin.clone(), location.clone());
        Ok(location)
    }

    async fn fetch_location(&self, key: &[u8], version: Version) -> Result<Location, ClientError> {
        let reply = self.key_location(key, version).await?;
        Ok(Location {
            begin: reply.begin,
            end: reply.end,
            servers: reply.teams.into_iter().flat_map(|(_, s)| s).collect(),
        })
    }

    /// The shard holding `key` at `version`, its teams and their servers,
    /// as a proxy knows it: the first whose map has every change up to the
    /// version (a proxy learns the others' changes only as it commits
    /// batches of its own, and the one that committed `version` has them
    /// all), or else the freshest; `as_of` says which.
    pub async fn key_location(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<GetKeyLocationReply, ClientError> {
        let request = GetKeyLocationRequest {
            key: Bytes::copy_from_slice(key),
            version,
        };
        let route = self.path.route().await?;
        let exact_from = Version(version.0.saturating_sub(1));
        let mut failures = Vec::new();
        let mut freshest: Option<GetKeyLocationReply> = None;
        for proxy in &route.proxies {
            let request = request.clone();
            let call =
                proxy.call(|c| async move { c.call(Message::GetKeyLocation(request)).await });
            match call.await {
                Ok(Message::GetKeyLocationReply(reply)) if reply.as_of >= exact_from => {
                    return Ok(reply)
                }
                Ok(Message::GetKeyLocationReply(reply)) => {
                    if freshest.as_ref().is_none_or(|f| f.as_of < reply.as_of) {
                        freshest = Some(reply);
                    }
                }
                Ok(other) => return Err(unexpected(other)),
                Err(RpcError::Remote { code, message, .. }) => {
                    return Err(ClientError::Read { code, message })
                }
                Err(e) => failures.push(format!("{}: {e}", proxy.addr())),
            }
        }
        if let Some(reply) = freshest {
            return Ok(reply);
        }
        self.path.failed();
        Err(ClientError::Unavailable(failures.join("; ")))
    }

    /// Asks the location's servers in turn until one answers.
    async fn ask_servers(
        &self,
        location: &Location,
        request: Message,
    ) -> Result<Message, ClientError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..location.servers.len() {
            let id = location.servers[(start + i) % location.servers.len()];
            let Some(server) = self.servers.get(&id) else {
                last = Some(format!("{id} is not in the cluster file"));
                continue;
            };
            let request = request.clone();
            let call = server.call(|c| async move { c.call(request).await });
            match call.await {
                Ok(reply) => return Ok(reply),
                // Another server of the team may be further along, still own
                // it, or still keep the version (a rebuilt server reads only
                // from the end of its copy on).
                Err(RpcError::Remote { code, message, .. })
                    if matches!(
                        code,
                        ErrorCode::WrongShardServer
                            | ErrorCode::FutureVersion
                            | ErrorCode::TransactionTooOld
                    ) =>
                {
                    last = Some(format!("{id}: {code}: {message}"));
                    if i + 1 == location.servers.len() {
                        return Err(ClientError::Read { code, message });
                    }
                }
                Err(RpcError::Remote { code, message, .. }) => {
                    return Err(ClientError::Read { code, message })
                }
                Err(e) => last = Some(format!("{id}: {e}")),
            }
        }
        Err(ClientError::Unavailable(
            last.unwrap_or_else(|| "the shard has no servers".into()),
        ))
    }

    /// A version at which every acknowledged commit is visible.
    pub async fn read_version(&self) -> Result<Version, ClientError> {
        let route = self.path.route().await?;
        let call = async {
            match route
                .sequencer
                .call(|c| async move { c.call(Message::GetReadVersion).await })
                .await?
            {
                Message::GetReadVersionReply(reply) => Ok(reply.version),
                other => Err(RpcError::UnexpectedReply(other.name())),
            }
        };
        call.await.map_err(|e| {
            self.path.failed();
            ClientError::Sequencer(e)
        })
    }
}

/// User reads stay in `["", \xff)`; a reversed range is a mistake, not an
/// empty answer.
fn check_range(begin: &[u8], end: &[u8]) -> Result<(), ClientError> {
    if begin > end {
        return Err(ClientError::InvalidRange(format!(
            "begin {begin:?} is after end {end:?}"
        )));
    }
    if end > USER_KEYS_END {
        return Err(ClientError::InvalidRange(format!(
            "end {end:?} lies in the system keys; user ranges end at most at \\xff"
        )));
    }
    Ok(())
}

fn unexpected(message: Message) -> ClientError {
    ClientError::Read {
        code: ErrorCode::Unknown,
        message: format!("unexpected reply {}", message.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_past_the_user_keys_or_reversed_are_refused_before_sending() {
        assert!(check_range(b"a", b"z").is_ok());
        assert!(check_range(b"", b"\xff").is_ok());
        assert!(check_range(b"a", b"a").is_ok());
        for (begin, end) in [
            (&b"a"[..], &b"\xff\x00"[..]),
            (b"z", b"a"),
            (b"\xff", b"\xff\xff"),
        ] {
            assert!(matches!(
                check_range(begin, end),
                Err(ClientError::InvalidRange(_))
            ));
        }
    }
}
