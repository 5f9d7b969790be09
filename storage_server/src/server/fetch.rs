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
//! the fetch pauses after each page so that it reads no faster. Status
//! says how long each copy has gone without a page (`CopyProgress`).

use std::collections::BTreeMap;
use std::time::Duration;

use proto::rpc::{AddingRangeStatus, GetRangeRequest, Message};
use proto::transport::Peer;

use super::*;
use crate::adding::{Page, PageRequest};

/// The longest wait between failed page reads.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// When each range being added last got a page (or its copy began): a
/// copy that gets none for long is stuck, and status says so.
#[derive(Default)]
pub(super) struct CopyProgress {
    last_page: BTreeMap<Bytes, tokio::time::Instant>,
}

impl CopyProgress {
    fn began(&mut self, range: &Bytes) {
        self.last_page
            .entry(range.clone())
            .or_insert_with(tokio::time::Instant::now);
    }

    fn got_page(&mut self, range: &Bytes) {
        self.last_page
            .insert(range.clone(), tokio::time::Instant::now());
    }

    /// Fills in how long each range has gone without a page, and forgets
    /// the ranges no longer being added.
    pub(super) fn fill_idle(&mut self, ranges: &mut [AddingRangeStatus]) {
        let now = tokio::time::Instant::now();
        self.last_page
            .retain(|range, _| ranges.iter().any(|r| r.begin == *range));
        for range in ranges {
            let since = *self.last_page.entry(range.begin.clone()).or_insert(now);
            range.idle_ms =
                u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX);
        }
    }
}

/// Reads pages of ranges being added until the service is dropped.
pub(super) async fn run_fetch<E: KvEngine>(inner: Weak<Inner<E>>) {
    let retry_policy = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times();
    let mut delays = retry_policy.build();
    let mut next_source = 0usize;
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
        strong.copy_progress().began(&request.range);
        match read_page(&strong, &request, next_source).await {
            Ok(page) => {
                delays = retry_policy.build();
                let bytes: u64 = page
                    .pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum();
                let delivered = {
                    let mut store = strong.store_mut();
                    let mut adding = strong.adding();
                    let delivered = adding.deliver(&request, page);
                    Inner::write_adding_due(&mut store, &mut adding).map(|()| delivered)
                };
                match delivered {
                    Ok(true) => {
                        strong.copy_progress().got_page(&request.range);
                        drop(strong);
                        pace(
                            bytes,
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
                tracing::debug!(range = ?request.range, %problem, "a page of a range being added could not be read");
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

/// Waits as long as reading `bytes` takes at `rate` bytes a second.
async fn pace(bytes: u64, rate: Option<u64>) {
    if let Some(rate) = rate.filter(|r| *r > 0) {
        tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
    }
}
