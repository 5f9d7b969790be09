//! Retiring old generations: once every storage server has made durable
//! the versions an ended generation holds, nobody will read it again, and
//! the controller drops it from the core state; the workers then stop its
//! TLogs and remove their data.
//!
//! ```text
//!  every storage server ─Status─▶ durable versions ─min─▶ core state.retired_below(min)
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

/// The lowest durable version of `servers`, when every one answers.
pub async fn lowest_durable(servers: &[SocketAddr], transport: &ClientConfig) -> Option<Version> {
    let asks = servers.iter().map(|addr| async move {
        let ask = async {
            let client = RpcClient::connect(*addr, transport.clone()).await?;
            client.call(Message::Status).await
        };
        match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
            Ok(Ok(Message::StorageStatus(status))) => Some(status.durable_version),
            _ => None,
        }
    });
    let durable: Option<Vec<Version>> = futures::future::join_all(asks).await.into_iter().collect();
    durable?.into_iter().min()
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
    let Some(durable) = lowest_durable(servers, transport).await else {
        return Ok(None);
    };
    let (state, revision) = coordinators
        .read_core_state()
        .await
        .map_err(|e| e.to_string())?;
    let next = state.retired_below(durable);
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
    tracing::info!(retired, %durable, "retired generations every storage server made durable");
    Ok(Some(next))
}
