//! Reads at a version: each waits briefly for its version to be applied,
//! is refused unless the server's shard map at that version places the
//! keys on one of its teams, and reads the versioned store. A copy's range
//! read (`GetRangeRequest::copy`) goes through `lazy_copy`, after the
//! foreground reads counted here.
//!
//! ```text
//!  get / get_range ─▶ wait_for(version) ─▶ serves? ─▶ store.get / get_range_within ─▶ reply
//!                                            └─ no: wrong_shard_server
//! ```

use std::time::Instant;

use proto::rpc::{
    ErrorCode, ErrorReply, GetRangeReply, GetRangeRequest, GetValueReply, GetValueRequest,
};
use proto::system_keys::USER_KEYS_END;
use proto::Version;

use super::{StorageService, MAX_RANGE_LIMIT, MAX_RANGE_REPLY_BYTES};
use crate::engine::KvEngine;
use crate::versioned::ReadError;

impl<E: KvEngine> StorageService<E> {
    /// Waits until `version` is applied, up to the configured read wait.
    /// A server copying from its teammates has nothing to read yet, and
    /// one the generation leaves out holds nothing.
    async fn wait_for(&self, version: Version) -> Result<(), ErrorReply> {
        if let Some(epoch) = self.inner.generations.excluded_by() {
            return Err(ErrorReply::new(
                ErrorCode::WrongShardServer,
                format!("generation {epoch} leaves this server out of its teams"),
            ));
        }
        // Not what the copy is at: that names a teammate's own answer,
        // so two teammates rebuilding from each other would nest their
        // errors without end.
        if self.inner.rebuilding().is_some() {
            return Err(ErrorReply::new(
                ErrorCode::FutureVersion,
                format!("version {version} is not applied: rebuilding from teammates"),
            ));
        }
        let reached = tokio::time::timeout(
            self.inner.config.read_wait,
            self.inner.applied.wait_for(|a| *a >= version),
        )
        .await;
        match reached {
            Ok(_) => Ok(()),
            _ => Err(ErrorReply::new(
                ErrorCode::FutureVersion,
                format!(
                    "version {version} is not applied yet (at {})",
                    self.applied_version()
                ),
            )),
        }
    }

    /// Refuses a read this server does not answer for at `version`. A
    /// flush forgets the shard map below the version it made durable, so
    /// a version that became too old is refused as too old (the store
    /// advances before the map forgets), not as another server's keys:
    /// the client then reads at a newer version instead of looking for
    /// another server.
    ///
    /// Keys its teams own but whose copy it installed after `version`, or
    /// has not installed yet (a move's flip came before this server's copy
    /// was done: the move did not wait for it, as the generation left it
    /// out then, or a change cut up a range it had not finished), are
    /// refused as too old: this server will serve them at later versions,
    /// and its teammates serve them now.
    fn check_serves(&self, begin: &[u8], end: &[u8], version: Version) -> Result<(), ErrorReply> {
        if self.inner.owns(begin, end, version) {
            if !self.inner.adding().overlaps_missing(begin, end, version) {
                return Ok(());
            }
            return Err(ErrorReply::new(
                ErrorCode::TransactionTooOld,
                format!(
                    "this server's copy of those keys, which it was given by a move, \
                     holds them only after version {version}"
                ),
            ));
        }
        self.inner
            .store()
            .check_readable(version)
            .map_err(read_error)?;
        Err(wrong_shard(version))
    }

    pub async fn get(&self, request: GetValueRequest) -> Result<GetValueReply, ErrorReply> {
        let _in_flight = self.inner.lanes.foreground();
        let started = Instant::now();
        let result = self.get_unmeasured(request).await;
        count_read("get", started, result.is_ok());
        result
    }

    async fn get_unmeasured(&self, request: GetValueRequest) -> Result<GetValueReply, ErrorReply> {
        self.wait_for(request.version).await?;
        self.check_serves(&request.key, &request.key, request.version)?;
        let value = self
            .inner
            .store()
            .get(&request.key, request.version)
            .map_err(read_error)?;
        Ok(GetValueReply { value })
    }

    pub async fn get_range(&self, request: GetRangeRequest) -> Result<GetRangeReply, ErrorReply> {
        let (_in_flight, kind) = match request.copy {
            true => (None, "copy"),
            false => (Some(self.inner.lanes.foreground()), "get_range"),
        };
        let started = Instant::now();
        let result = self.get_range_unmeasured(request).await;
        count_read(kind, started, result.is_ok());
        result
    }

    async fn get_range_unmeasured(
        &self,
        request: GetRangeRequest,
    ) -> Result<GetRangeReply, ErrorReply> {
        if request.begin > request.end || request.end.as_ref() > USER_KEYS_END {
            return Err(ErrorReply::new(
                ErrorCode::InvalidRange,
                format!(
                    "range [{:?}, {:?}) is reversed or reaches into the system keys",
                    request.begin, request.end
                ),
            ));
        }
        self.wait_for(request.version).await?;
        self.check_serves(&request.begin, &request.end, request.version)?;
        let limit = request.limit.clamp(1, MAX_RANGE_LIMIT) as usize;
        if request.copy && !request.reverse {
            let (pairs, more) = self
                .inner
                .lanes
                .copy_read(&request.begin, limit, |from, pairs, bytes| {
                    self.inner.store().get_range_within(
                        from,
                        &request.end,
                        pairs,
                        bytes,
                        false,
                        request.version,
                    )
                })
                .await
                .map_err(read_error)?;
            return Ok(GetRangeReply { pairs, more });
        }
        let mut pairs = self
            .inner
            .store()
            .get_range_within(
                &request.begin,
                &request.end,
                limit + 1,
                MAX_RANGE_REPLY_BYTES,
                request.reverse,
                request.version,
            )
            .map_err(read_error)?;
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        // Stopped by the byte limit: there may be more (the next page says).
        let more = pairs.len() > limit || bytes >= MAX_RANGE_REPLY_BYTES;
        pairs.truncate(limit);
        Ok(GetRangeReply { pairs, more })
    }
}

/// Counts one read in the metrics; only successful reads are timed, so
/// refusals (which answer at once) do not hide slow reads.
fn count_read(kind: &'static str, started: Instant, ok: bool) {
    metrics::counter!("teamlog_storage_reads_total", "kind" => kind).increment(1);
    if ok {
        metrics::histogram!("teamlog_storage_read_latency_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
    } else {
        metrics::counter!("teamlog_storage_read_errors_total", "kind" => kind).increment(1);
    }
}

fn wrong_shard(version: Version) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::WrongShardServer,
        format!("this server does not hold those keys at {version}"),
    )
}

fn read_error(e: ReadError) -> ErrorReply {
    let code = match &e {
        ReadError::TooOld { .. } => ErrorCode::TransactionTooOld,
        ReadError::FutureVersion { .. } => ErrorCode::FutureVersion,
        _ => ErrorCode::Unknown,
    };
    ErrorReply::new(code, e.to_string())
}
