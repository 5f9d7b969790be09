//! The client library: commit batches of mutations and get read versions,
//! finding the proxies and the sequencer in the cluster file.
//!
//! ```text
//!  Client ─commit─▶ a proxy (round robin; the next one if it cannot be reached)
//!         ─read_version─▶ the sequencer
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use proto::rpc::{ClientCommitRequest, ErrorCode, Message};
use proto::transport::{ClientConfig, Peer, RpcError};
use proto::{Mutation, Version};

use crate::cluster::ClusterFile;

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
}

pub struct Client {
    proxies: Vec<Peer>,
    sequencer: Peer,
    next: AtomicUsize,
}

impl Client {
    pub fn new(cluster: &ClusterFile) -> Client {
        let peer = |addr| Peer::new(addr, ClientConfig::default());
        Client {
            proxies: cluster.proxies.iter().map(|p| peer(p.address)).collect(),
            sequencer: peer(cluster.sequencer.address),
            next: AtomicUsize::new(0),
        }
    }

    /// Commits `mutations` atomically; returns the commit version.
    pub async fn commit(&self, mutations: Vec<Mutation>) -> Result<Version, ClientError> {
        self.send(ClientCommitRequest {
            mutations,
            allow_system_keys: false,
        })
        .await
    }

    /// Like `commit`, allowing the system keys that admin tools write.
    pub async fn commit_system(&self, mutations: Vec<Mutation>) -> Result<Version, ClientError> {
        self.send(ClientCommitRequest {
            mutations,
            allow_system_keys: true,
        })
        .await
    }

    async fn send(&self, request: ClientCommitRequest) -> Result<Version, ClientError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in 0..self.proxies.len() {
            let proxy = &self.proxies[(start + i) % self.proxies.len()];
            // Only a failure to connect is safe to retry elsewhere: once the
            // request is sent, it may be applied.
            let client = match proxy.client().await {
                Ok(client) => client,
                Err(e) => {
                    unreachable.push(format!("{}: {e}", proxy.addr()));
                    continue;
                }
            };
            return match client.call(Message::ClientCommit(request)).await {
                Ok(Message::ClientCommitReply(reply)) => Ok(reply.version),
                Ok(other) => Err(ClientError::UnknownResult(format!(
                    "proxy answered {}",
                    other.name()
                ))),
                Err(RpcError::Remote { code, message }) => Err(match code {
                    ErrorCode::CommitUnknownResult => ClientError::UnknownResult(message),
                    code => ClientError::Refused { code, message },
                }),
                Err(e) => Err(ClientError::UnknownResult(format!("{}: {e}", proxy.addr()))),
            };
        }
        Err(ClientError::Unavailable(unreachable.join("; ")))
    }

    /// A version at which every acknowledged commit is visible.
    pub async fn read_version(&self) -> Result<Version, ClientError> {
        let call = async {
            match self
                .sequencer
                .client()
                .await?
                .call(Message::GetReadVersion)
                .await?
            {
                Message::GetReadVersionReply(reply) => Ok(reply.version),
                other => Err(RpcError::UnexpectedReply(other.name())),
            }
        };
        call.await.map_err(ClientError::Sequencer)
    }
}
