//! A typed client of one TLog, over the multiplexed RPC connection.

use std::net::SocketAddr;
use std::time::Duration;

use proto::rpc::{
    LockReply, Message, PeekReply, PeekRequest, PopRequest, RegisterTeamRequest, TLogCommitRequest,
    TLogStatusReply,
};
use proto::transport::{ClientConfig, RpcClient, RpcError};
use proto::{StorageServerId, StorageTeamId, Version};

#[derive(Clone)]
pub struct TLogClient {
    rpc: RpcClient,
}

impl TLogClient {
    pub async fn connect(addr: SocketAddr) -> Result<TLogClient, RpcError> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<TLogClient, RpcError> {
        Ok(TLogClient {
            rpc: RpcClient::connect(addr, config).await?,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.rpc.is_closed()
    }

    /// Returns once the commit is durable on this TLog.
    pub async fn commit(&self, request: TLogCommitRequest) -> Result<Version, RpcError> {
        match self.rpc.call(Message::TLogCommit(request)).await? {
            Message::TLogCommitReply(reply) => Ok(reply.version),
            _ => Err(RpcError::UnexpectedReply("commit")),
        }
    }

    pub async fn peek(&self, request: PeekRequest) -> Result<PeekReply, RpcError> {
        let wait = Duration::from_millis(u64::from(request.timeout_ms));
        let message = Message::Peek(request);
        match self
            .rpc
            .call_with_timeout(message, wait + Duration::from_secs(10))
            .await?
        {
            Message::PeekReply(reply) => Ok(reply),
            _ => Err(RpcError::UnexpectedReply("peek")),
        }
    }

    pub async fn pop(
        &self,
        team: StorageTeamId,
        server: StorageServerId,
        version: Version,
    ) -> Result<(), RpcError> {
        let request = PopRequest {
            team,
            server,
            version,
        };
        match self.rpc.call(Message::Pop(request)).await? {
            Message::PopReply => Ok(()),
            _ => Err(RpcError::UnexpectedReply("pop")),
        }
    }

    pub async fn lock(&self) -> Result<LockReply, RpcError> {
        match self.rpc.call(Message::Lock).await? {
            Message::LockReply(reply) => Ok(reply),
            _ => Err(RpcError::UnexpectedReply("lock")),
        }
    }

    pub async fn register_team(
        &self,
        team: StorageTeamId,
        servers: Vec<StorageServerId>,
    ) -> Result<(), RpcError> {
        let request = RegisterTeamRequest { team, servers };
        match self.rpc.call(Message::RegisterTeam(request)).await? {
            Message::RegisterTeamReply => Ok(()),
            _ => Err(RpcError::UnexpectedReply("register_team")),
        }
    }

    pub async fn status(&self) -> Result<TLogStatusReply, RpcError> {
        match self.rpc.call(Message::Status).await? {
            Message::TLogStatus(reply) => Ok(reply),
            _ => Err(RpcError::UnexpectedReply("status")),
        }
    }
}
