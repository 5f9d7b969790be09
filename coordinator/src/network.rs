//! openraft's messages between coordinators, over the cluster's framed
//! transport (and its mutual TLS: only members may send them). A message
//! travels as JSON inside `Message::Raft`; the answer, openraft's result
//! included, inside `Message::RaftReply`.
//!
//! ```text
//!  Raft ─▶ Connection::append_entries ─Message::Raft(json)─▶ Peer ══TCP══▶ CoordinatorService
//!       ◀── Result<…, RPCError> ◀─Message::RaftReply(json)─────────────◀── raft.append_entries
//! ```

// openraft's network trait fixes the error type; it is large, and these
// helpers build it for it.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use proto::rpc::Message;
use proto::transport::{ClientConfig, Peer, PeerPool, RpcError};
use serde::{Deserialize, Serialize};

use crate::raft_types::{Raft, TypeConfig};

type NodeId = u64;

/// A message from one coordinator's raft to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftMessage {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// What the receiving raft answered.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftAnswer {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

/// Hands a received message to the local raft and encodes its answer.
/// `Err` is a message that does not decode.
pub async fn deliver(raft: &Raft, payload: &[u8]) -> Result<Bytes, serde_json::Error> {
    let answer = match serde_json::from_slice(payload)? {
        RaftMessage::AppendEntries(request) => {
            RaftAnswer::AppendEntries(raft.append_entries(request).await)
        }
        RaftMessage::Vote(request) => RaftAnswer::Vote(raft.vote(request).await),
        RaftMessage::InstallSnapshot(request) => {
            RaftAnswer::InstallSnapshot(raft.install_snapshot(request).await)
        }
    };
    serde_json::to_vec(&answer).map(Bytes::from)
}

/// Hands openraft a client per peer coordinator whenever it asks. openraft
/// asks for a fresh client for every heartbeat and every linearizable read,
/// so the clients share one connection per address: a new TLS handshake per
/// read would cost the leader more than the read itself.
#[derive(Clone)]
pub struct Network {
    peers: Arc<PeerPool>,
}

impl Network {
    pub fn new(transport: ClientConfig) -> Network {
        Network {
            peers: Arc::new(PeerPool::new(transport)),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            peer: node
                .addr
                .parse::<SocketAddr>()
                .map(|addr| self.peers.get(addr))
                .map_err(|e| {
                    format!(
                        "coordinator {target} has a bad address {:?}: {e}",
                        node.addr
                    )
                }),
        }
    }
}

/// The way to one peer coordinator.
pub struct Connection {
    target: NodeId,
    peer: Result<Arc<Peer>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Connection {
    /// Sends `message` and returns the peer's answer, or why there is none.
    /// Only a failure to connect is `Unreachable` (openraft then backs off);
    /// anything later is a network error, retried at once.
    async fn send<E: std::error::Error>(
        &self,
        message: RaftMessage,
        option: &RPCOption,
    ) -> Result<RaftAnswer, RPCError<NodeId, BasicNode, E>> {
        let peer = self
            .peer
            .as_ref()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Failure(e.clone()))))?;
        let payload =
            serde_json::to_vec(&message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = peer
            .client()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply = client
            .call_with_timeout(Message::Raft(Bytes::from(payload)), option.hard_ttl())
            .await;
        match reply {
            Ok(Message::RaftReply(answer)) => serde_json::from_slice(&answer)
                .map_err(|e| RPCError::Network(NetworkError::new(&e))),
            Ok(other) => Err(RPCError::Network(NetworkError::new(
                &RpcError::UnexpectedReply(other.name()),
            ))),
            Err(error @ (RpcError::Connect(_) | RpcError::ConnectionClosed)) => {
                peer.reset().await;
                Err(RPCError::Unreachable(Unreachable::new(&error)))
            }
            Err(error) => Err(RPCError::Network(NetworkError::new(&error))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let why = format!(
            "coordinator {} answered another kind of message",
            self.target
        );
        RPCError::Network(NetworkError::new(&Failure(why)))
    }

    fn remote<T, E: std::error::Error>(
        &self,
        answer: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .send(RaftMessage::AppendEntries(request), &option)
            .await?
        {
            RaftAnswer::AppendEntries(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .send(RaftMessage::InstallSnapshot(request), &option)
            .await?
        {
            RaftAnswer::InstallSnapshot(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.send(RaftMessage::Vote(request), &option).await? {
            RaftAnswer::Vote(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_for_one_address_share_its_connection() {
        let mut network = Network::new(ClientConfig::default());
        let node = BasicNode::new("127.0.0.1:7001");
        let first = network.new_client(2, &node).await;
        let again = network.new_client(2, &node).await;
        let other = network
            .new_client(3, &BasicNode::new("127.0.0.1:7002"))
            .await;
        let peer = |c: &Connection| c.peer.as_ref().expect("a good address").clone();
        assert!(Arc::ptr_eq(&peer(&first), &peer(&again)));
        assert!(!Arc::ptr_eq(&peer(&first), &peer(&other)));
        let bad = network.new_client(4, &BasicNode::new("nowhere")).await;
        assert!(bad.peer.is_err());
    }
}
