//! Reading the metadata team: every system mutation a recruited commit
//! path commits also goes to it, so the shard map can be carried from a
//! recorded snapshot to a later version by the changes after it. A
//! recovery reads it from a locked TLog up to the recovery version, the
//! controller's checkpoints up to what a TLog knows committed, and a
//! storage server that rebuilds up to the version its copy starts at.
//!
//! ```text
//!  proxies ─system mutations─▶ METADATA_TEAM on its TLogs
//!  read_changes(tlog, after, through) ─peek (after, through]─▶ [(version, mutations)]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proto::rpc::PeekRequest;
use proto::system_keys::METADATA_TEAM;
use proto::transport::{ClientConfig, RpcClient};
use proto::{BlockEntry, Mutation, Version};

/// Each version's system mutations, in version order.
pub type Changes = Vec<(Version, Vec<Mutation>)>;

/// How far a read goes.
#[derive(Clone, Copy, Debug)]
pub enum ReadThrough {
    /// Up to this version, all of which the TLog holds (a locked TLog, up
    /// to the recovery version).
    Version(Version),
    /// Up to what the TLog knows committed when first asked.
    KnownCommitted,
}

/// How many bytes one peek of the metadata team asks for.
const PEEK_BYTES: u32 = 1 << 20;

/// How long one peek may take.
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the metadata team's mutations of versions `(after, through]`
/// from `tlog`; returns them and the version read through.
pub async fn read_changes(
    tlog: SocketAddr,
    transport: &ClientConfig,
    after: Version,
    through: ReadThrough,
) -> Result<(Changes, Version), String> {
    let failed = |e: &dyn std::fmt::Display| format!("reading the metadata team on {tlog}: {e}");
    let client = RpcClient::connect(tlog, transport.clone())
        .await
        .map_err(|e| failed(&e))?;
    let mut through = match through {
        ReadThrough::Version(v) => Some(v),
        ReadThrough::KnownCommitted => None,
    };
    let mut changes: BTreeMap<Version, Vec<Mutation>> = BTreeMap::new();
    let mut begin = after.next();
    loop {
        let request = PeekRequest {
            team: METADATA_TEAM,
            begin,
            max_bytes: PEEK_BYTES,
            timeout_ms: 0,
        };
        let reply = match tokio::time::timeout(PEEK_TIMEOUT, client.peek(request)).await {
            Ok(reply) => reply.map_err(|e| failed(&e))?,
            Err(_) => return Err(failed(&"no answer in time")),
        };
        let through = *through.get_or_insert(reply.known_committed_version);
        if through <= after {
            return Ok((Vec::new(), after));
        }
        for block in &reply.blocks {
            let block = block.parse().map_err(|e| failed(&e))?;
            for entry in block.entries() {
                if let BlockEntry::Message(m) = entry {
                    if m.version > after && m.version <= through {
                        changes.entry(m.version).or_default().push(m.mutation);
                    }
                }
            }
        }
        if reply.end > through {
            return Ok((changes.into_iter().collect(), through));
        }
        // Versions up to `through` are durable on this TLog, so each reply
        // moves on unless the TLog lacks them.
        if reply.end <= begin || reply.end_of_stream {
            return Err(failed(&format!(
                "it holds versions below {} only, short of {through}",
                reply.end
            )));
        }
        begin = reply.end;
    }
}

/// [`read_changes`] from the first of `tlogs` that answers whole.
pub async fn read_from_any(
    tlogs: &[SocketAddr],
    transport: &ClientConfig,
    after: Version,
    through: ReadThrough,
) -> Result<(Changes, Version), String> {
    let mut last = "no TLog holds the metadata team".to_owned();
    for tlog in tlogs {
        match read_changes(*tlog, transport, after, through).await {
            Ok(read) => return Ok(read),
            Err(e) => last = e,
        }
    }
    Err(last)
}
