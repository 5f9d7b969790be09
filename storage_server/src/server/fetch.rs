//! The fetch of ranges being added: reads each page of a range from a
//! server of its source teams, at the committed version of that moment,
//! and hands it to the adding state, which installs it (see `adding`).
//!
//! ```text
//!  AddingRanges::next_request ─▶ committed version v >= min_version
//!     ─▶ GetRange [from, end) at v ─▶ a source server (another after a failure)
//!     ─▶ deliver ─▶ installed now if the store is at v, else by the apply loop
//!  nothing to read ─▶ wait until the adding state changes
//! ```
//!
//! The sources are the servers of the shard's source teams by the
//! server's current shard map, without itself: after a flip that came
//! before its copy was done, those are its own teammates. With a rate set,
//! the fetch pauses after each page so that it reads no faster. Its reads
//! are copy reads, which the source serves after its foreground reads, and
//! it waits a moment for this server's own before each page (`lazy_copy`).
//! Every few
//! seconds it also asks a source how much of the range is left (its byte
//! sample's estimate), for status (`copy_progress`).

use std::time::Duration;

use proto::rpc::{stored_size, GetRangeRequest, KeyRange, Message};
use proto::transport::Peer;
use tokio::time::Instant;

use super::*;
use crate::adding::{Page, PageRequest};

/// The longest wait between failed page reads.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Reads pages of ranges being added until the service is dropped.
pub(super) async fn run_fetch<E: KvEngine>(inner: Weak<Inner<E>>) {
    let retry_policy = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times();
    let mut delays = retry_policy.build();
    // Teammates start at different sources, so a team's copies read from
    // as many servers as the source team has.
    let mut next_source = inner
        .upgrade()
        .map_or(0, |strong| strong.config.id.0 as usize);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let changed = strong.adding_changed.clone();
        // A rebuild starts the adding state over when it is done.
        let request = match strong.rebuilding() {
            Some(_) => None,
            None => strong.adding().next_request(),
        };
        let Some(request) = request else {
            drop(strong);
            changed.notified().await;
            continue;
        };
        strong.copy_progress().began(&request.range, Instant::now());
        if strong
            .copy_progress()
            .wants_estimate(&request.range, Instant::now())
        {
            estimate_left(&strong, &request, next_source).await;
        }
        // This server's own reads go first here too (see `lazy_copy`).
        strong.lanes.yield_to_foreground(lazy_copy::MAX_YIELD).await;
        match read_page(&strong, &request, next_source).await {
            Ok(page) => {
                delays = retry_policy.build();
                let size: u64 = page
                    .pairs
                    .iter()
                    .map(|(k, v)| stored_size(k.len(), v.len()))
                    .sum();
                let delivered = {
                    let mut store = strong.store_mut();
                    let mut adding = strong.adding();
                    let delivered = adding.deliver(&request, page);
                    Inner::write_adding_due(&mut store, &mut adding).map(|()| delivered)
                };
                match delivered {
                    Ok(true) => {
                        strong
                            .copy_progress()
                            .got_page(&request.range, size, Instant::now());
                        drop(strong);
                        pace(
                            size,
                            inner.upgrade().and_then(|s| s.config.move_bytes_per_second),
                        )
                        .await;
                    }
                    Ok(false) => {}
                    Err(reason) => {
                        strong.fail(reason);
                        return;
                    }
                }
            }
            Err(problem) => {
                next_source += 1;
                tracing::debug!(server = %strong.config.id, range = ?request.range, %problem, "a page of a range being added could not be read");
                strong.adding().note_problem(&request.range, problem);
                if let Err(reason) = strong.generations.refresh().await {
                    tracing::debug!(%reason, "the generations could not be refreshed");
                }
                drop(strong);
                tokio::time::sleep(delays.next().unwrap_or(MAX_RETRY_DELAY)).await;
            }
        }
    }
}

/// Asks one of the range's sources how much of it is left to copy, by its
/// byte sample. Status goes without the figure when none answers.
async fn estimate_left<E: KvEngine>(inner: &Inner<E>, request: &PageRequest, source_turn: usize) {
    let sources = sources_of(inner, &request.begin);
    let Some((source, address)) = sources.get(source_turn % sources.len().max(1)).copied() else {
        return;
    };
    let left = KeyRange {
        begin: request.begin.clone(),
        end: request.end.clone(),
    };
    let peer = Peer::new(address, inner.config.transport.clone());
    let reply = async {
        peer.client()
            .await?
            .call(Message::ShardMetrics(vec![left]))
            .await
    }
    .await;
    match reply {
        Ok(Message::ShardMetricsReply(metrics)) if metrics.len() == 1 => {
            inner
                .copy_progress()
                .estimated(&request.range, metrics[0].bytes, Instant::now());
        }
        Ok(other) => {
            tracing::debug!(%source, answer = other.name(), "no estimate of a copy's size left");
        }
        Err(e) => tracing::debug!(%source, %e, "no estimate of a copy's size left"),
    }
}

/// Reads the page `request` asks for from one of the range's sources.
async fn read_page<E: KvEngine>(
    inner: &Inner<E>,
    request: &PageRequest,
    source_turn: usize,
) -> Result<Page, String> {
    let sources = sources_of(inner, &request.begin);
    if sources.is_empty() {
        return Err("no other server holds the range to copy it from".to_owned());
    }
    let (source, address) = sources[source_turn % sources.len()];
    let version = inner
        .committed_version()
        .await
        .map_err(|e| format!("no read version: {e}"))?;
    if version < request.min_version {
        return Err(format!(
            "the committed version {version} is below {}, which the copy needs",
            request.min_version
        ));
    }
    let read = GetRangeRequest {
        begin: request.begin.clone(),
        end: request.end.clone(),
        limit: MAX_RANGE_LIMIT,
        reverse: false,
        version,
        copy: true,
    };
    let peer = Peer::new(address, inner.config.transport.clone());
    let reply = async { peer.client().await?.call(Message::GetRange(read)).await }
        .await
        .map_err(|e| format!("{source} at {address}: {e}"))?;
    let reply = match reply {
        Message::GetRangeReply(reply) => reply,
        other => return Err(format!("{source} at {address} answered {}", other.name())),
    };
    Ok(Page {
        begin: request.begin.clone(),
        end: reply.forward_end(&request.end),
        version,
        pairs: reply.pairs,
    })
}

/// The servers of the source teams of the shard holding `key`, by the
/// current map, other than this one.
fn sources_of<E: KvEngine>(inner: &Inner<E>, key: &[u8]) -> Vec<(StorageServerId, SocketAddr)> {
    let src = inner.ownership().current_assignment_of(key).src;
    src.into_iter()
        .flat_map(|team| inner.config.others_of(team))
        .collect()
}

/// Waits as long as copying `size` stored bytes takes at `rate` a second.
async fn pace(size: u64, rate: Option<u64>) {
    if let Some(rate) = rate.filter(|r| *r > 0) {
        tokio::time::sleep(Duration::from_secs_f64(size as f64 / rate as f64)).await;
    }
}
