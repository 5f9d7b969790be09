//! Retiring old generations: once every storage server has made durable
//! the versions an ended generation holds, and follows a newer one (so it
//! knows where that one ended, and rolled back what it read past the end),
//! nobody will read it again, and the controller drops it from the core
//! state; the workers then stop its TLogs and remove their data.
//!
//! ```text
//!  every storage server ─Status─▶ durable versions, followed epochs ─min─▶ core state.retired_below
//!        (one that does not answer holds every generation back)      │ conditional write
//!                                                                     ▼
//!                                         workers: TLogs of unlisted generations stopped, removed
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use cluster::core_state::{CoreState, CORE_STATE_REGISTER};
use coordinator::client::CoordinatorClient;
use proto::rpc::Message;
use proto::transport::{ClientConfig, RpcClient};
use proto::Version;

/// How long a storage server has to say its durable version.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// What every storage server has left behind: the lowest durable version
/// and the oldest generation any of them follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftBehind {
    pub durable: Version,
    pub followed: u64,
}

/// What `servers` have left behind, when every one answers.
pub async fn left_behind(servers: &[SocketAddr], transport: &ClientConfig) -> Option<LeftBehind> {
    let asks = servers.iter().map(|addr| async move {
        let ask = async {
            let client = RpcClient::connect(*addr, transport.clone()).await?;
            client.call(Message::Status).await
        };
        match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
            Ok(Ok(Message::StorageStatus(status))) => Some(LeftBehind {
                durable: status.durable_version,
                followed: status.following_epoch,
            }),
            _ => None,
        }
    });
    let answers: Option<Vec<LeftBehind>> =
        futures::future::join_all(asks).await.into_iter().collect();
    let answers = answers?;
    Some(LeftBehind {
        durable: answers.iter().map(|a| a.durable).min()?,
        followed: answers.iter().map(|a| a.followed).min()?,
    })
}

/// Drops from the core state the ended generations every storage server
/// has made durable; returns the core state written, if one was.
pub async fn retire(
    coordinators: &CoordinatorClient,
    servers: &[SocketAddr],
    transport: &ClientConfig,
) -> Result<Option<CoreState>, String> {
    if servers.is_empty() {
        return Ok(None);
    }
    let Some(left) = left_behind(servers, transport).await else {
        return Ok(None);
    };
    let (state, revision) = coordinators
        .read_core_state()
        .await
        .map_err(|e| e.to_string())?;
    let next = state.retired_below(left.durable, left.followed);
    let retired = state.generations.len() - next.generations.len();
    if retired == 0 {
        return Ok(None);
    }
    let outcome = coordinators
        .write(CORE_STATE_REGISTER, revision, next.encode())
        .await
        .map_err(|e| e.to_string())?;
    if !outcome.written {
        return Err("the core state changed while retiring generations".to_owned());
    }
    tracing::info!(
        retired,
        durable = %left.durable,
        followed = left.followed,
        "retired generations every storage server made durable and left"
    );
    Ok(Some(next))
}
