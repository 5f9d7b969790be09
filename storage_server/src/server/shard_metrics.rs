//! Answers the data distributor: the bytes held, the write rates and the
//! split keys of each key range it asks about, from the byte sample of the
//! versioned store and the write sample the apply loop feeds.
//!
//! ```text
//!  ShardMetrics([ranges]) ─▶ store.byte_sample(): bytes, split by bytes
//!                         ─▶ write_sample:       writes/s, split by writes
//!                         ◀─ ShardMetricsReply([one per range])
//! ```

use proto::rpc::{ErrorCode, ErrorReply, KeyRange, ShardMetrics, MAX_SHARD_METRICS_RANGES};
use proto::Mutation;

use super::Inner;
use crate::engine::KvEngine;
use crate::sample::WriteSample;

impl<E: KvEngine> Inner<E> {
    /// The metrics of each range, in order.
    pub(super) fn shard_metrics(
        &self,
        ranges: &[KeyRange],
    ) -> Result<Vec<ShardMetrics>, ErrorReply> {
        if ranges.len() > MAX_SHARD_METRICS_RANGES {
            return Err(ErrorReply::new(
                ErrorCode::MalformedRequest,
                format!(
                    "{} ranges asked about at once; at most {MAX_SHARD_METRICS_RANGES}",
                    ranges.len()
                ),
            ));
        }
        if let Some(r) = ranges.iter().find(|r| r.begin > r.end) {
            return Err(ErrorReply::new(
                ErrorCode::InvalidRange,
                format!("range {:?}..{:?} ends before it begins", r.begin, r.end),
            ));
        }
        let now_ms = self.now_ms();
        let store = self.store();
        let writes = self.write_sample();
        Ok(ranges
            .iter()
            .map(|r| {
                let sample = store.byte_sample();
                let rates = writes.rates(now_ms, &r.begin, &r.end);
                ShardMetrics {
                    bytes: sample.bytes(&r.begin, &r.end),
                    write_ops_per_sec: rates.ops_per_sec,
                    write_bytes_per_sec: rates.bytes_per_sec,
                    split_by_bytes: sample.split(&r.begin, &r.end).map(Into::into),
                    split_by_writes: writes.split(now_ms, &r.begin, &r.end).map(Into::into),
                }
            })
            .collect())
    }

    /// Counts one user write applied from the log.
    pub(super) fn sample_write(sample: &mut WriteSample, now_ms: u64, mutation: &Mutation) {
        sample.record(now_ms, mutation.first_key(), mutation.payload_len());
    }
}
