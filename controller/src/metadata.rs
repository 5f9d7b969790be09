//! The metadata team: every system mutation a recruited commit path
//! commits also goes to it, so that the shard map outlives the proxies
//! that routed by it. A recovery reads it up to the recovery version from
//! a locked TLog; while a generation runs, the controller checkpoints the
//! shard map into the core state and pops what it folded in, or the team
//! would hold every TLog segment of the generation.
//!
//! ```text
//!  proxies ─system mutations─▶ METADATA_TEAM on its TLogs
//!  recovery:   peek (snapshot, recovery version] on a locked TLog ─▶ fold ─▶ recorded with the generation
//!  checkpoint: peek (snapshot, known committed] ─▶ fold ─▶ core state (conditional write) ─▶ pop
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use backon::Retryable;
use cluster::core_state::{CoreState, CORE_STATE_REGISTER};
use cluster::placement::tlogs_for_team;
use cluster::retry::backoff;
use coordinator::client::CoordinatorClient;
pub use cursor::metadata_team::Changes;
use cursor::metadata_team::{read_from_any, ReadThrough};
use proto::rpc::PopRequest;
use proto::shard_map::ShardMap;
use proto::system_keys::{METADATA_READER, METADATA_TEAM};
use proto::transport::{ClientConfig, RpcClient};
use proto::Version;

/// How far the shard map may stay behind without changes to fold in:
/// the checkpoint that only moves it on (so that the metadata team is
/// popped) is a write through the coordinators, which sync on disk.
const UNCHANGED_CHECKPOINT_VERSIONS: u64 = 10_000_000;

/// How long a recovery tries the metadata team's TLogs before it gives up
/// (and a new recovery starts).
const RECOVERY_READ_PATIENCE: Duration = Duration::from_secs(10);

/// How long a pop of the metadata team may take.
const POP_TIMEOUT: Duration = Duration::from_secs(2);

/// A recovery's read of `(after, through]` from the first of `tlogs` that
/// answers whole, trying them in turn for a while.
pub async fn read_for_recovery(
    tlogs: &[SocketAddr],
    transport: &ClientConfig,
    after: Version,
    through: Version,
) -> Result<Changes, String> {
    let attempt = || async {
        let read = read_from_any(tlogs, transport, after, ReadThrough::Version(through));
        read.await.map(|(changes, _)| changes)
    };
    attempt
        .retry(backoff(RECOVERY_READ_PATIENCE))
        .notify(|e, _| tracing::debug!(error = %e, "shard-map changes not read; trying again"))
        .await
}

/// What a checkpoint read and did.
pub struct Checkpoint {
    /// The core state written, if the recorded map moved on.
    pub written: Option<CoreState>,
    /// The shard map as of what the TLogs know committed.
    pub map: ShardMap,
    /// The changes read since the recorded map.
    pub changes: Changes,
}

/// Moves the core state's shard map on to what the current generation's
/// TLogs know committed, then pops the metadata team there up to it:
/// at once when there are changes to fold in, and otherwise once it is
/// [`UNCHANGED_CHECKPOINT_VERSIONS`] behind. None while no generation is
/// open.
pub async fn checkpoint(
    coordinators: &CoordinatorClient,
    transport: &ClientConfig,
) -> Result<Option<Checkpoint>, String> {
    let (state, revision) = coordinators
        .read_core_state()
        .await
        .map_err(|e| e.to_string())?;
    let (Some(current), Some(snapshot)) = (state.current(), &state.shard_map) else {
        return Ok(None);
    };
    if current.commit_path.is_none() {
        return Ok(None);
    }
    let holding: Vec<SocketAddr> =
        tlogs_for_team(METADATA_TEAM, current.tlogs.len(), current.replication)
            .into_iter()
            .map(|i| current.tlogs[i])
            .collect();
    let read = read_from_any(
        &holding,
        transport,
        snapshot.version,
        ReadThrough::KnownCommitted,
    );
    let (changes, through) = read.await?;
    let advanced = snapshot
        .advanced(through.max(snapshot.version), &changes)
        .map_err(|e| e.to_string())?;
    let map = advanced.map().map_err(|e| e.to_string())?;
    let mut moved = None;
    let behind = through.0.saturating_sub(snapshot.version.0);
    if !changes.is_empty() || behind >= UNCHANGED_CHECKPOINT_VERSIONS {
        let next = state.with_shard_map(advanced);
        let outcome = coordinators
            .write(CORE_STATE_REGISTER, revision, next.encode())
            .await
            .map_err(|e| e.to_string())?;
        if !outcome.written {
            return Err("the core state changed during a shard-map checkpoint".to_owned());
        }
        tracing::debug!(%through, "shard map checkpointed");
        moved = Some(next);
    }
    // Popped again even when nothing moved: a pop lost earlier is redone.
    let popped = moved
        .as_ref()
        .and_then(|s| s.shard_map.as_ref())
        .map_or(snapshot.version, |m| m.version)
        .next();
    for tlog in holding {
        let pop = async {
            let client = RpcClient::connect(tlog, transport.clone()).await?;
            client
                .pop(PopRequest {
                    team: METADATA_TEAM,
                    server: METADATA_READER,
                    version: popped,
                })
                .await
        };
        match tokio::time::timeout(POP_TIMEOUT, pop).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%tlog, error = %e, "metadata team not popped"),
            Err(_) => tracing::debug!(%tlog, "metadata team pop took too long"),
        }
    }
    Ok(Some(Checkpoint {
        written: moved,
        map,
        changes,
    }))
}
