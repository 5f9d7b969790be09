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

use super::Inner;
use crate::engine::KvEngine;

impl<E: KvEngine> Inner<E> {
    /// The metrics of each range, in order.
    pub(super) fn shard_metrics(
        &self,
        ranges: &[KeyRange],
    ) -> Result<Vec<ShardMetrics>, ErrorReply> {
        check(ranges)?;
        // Each sample under its own lock, so applies wait for neither
        // longer than its part.
        let held: Vec<(u64, Option<Vec<u8>>)> = {
            let store = self.store();
            let sample = store.byte_sample();
            ranges
                .iter()
                .map(|r| {
                    (
                        sample.bytes(&r.begin, &r.end),
                        sample.split(&r.begin, &r.end),
                    )
                })
                .collect()
        };
        let now_ms = self.now_ms();
        let writes = self.write_sample();
        Ok(ranges
            .iter()
            .zip(held)
            .map(|(r, (bytes, split_by_bytes))| {
                let taken = writes.of_range(now_ms, &r.begin, &r.end);
                ShardMetrics {
                    bytes,
                    write_ops_per_sec: taken.ops_per_sec,
                    write_bytes_per_sec: taken.bytes_per_sec,
                    split_by_bytes: split_by_bytes.map(Into::into),
                    split_by_writes: taken.split.map(Into::into),
                }
            })
            .collect())
    }
}

/// Refuses a request over `MAX_SHARD_METRICS_RANGES` ranges, or with a
/// range that ends before it begins.
fn check(ranges: &[KeyRange]) -> Result<(), ErrorReply> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn range(begin: &'static [u8], end: &'static [u8]) -> KeyRange {
        KeyRange {
            begin: Bytes::from_static(begin),
            end: Bytes::from_static(end),
        }
    }

    #[test]
    fn too_many_ranges_or_an_inverted_one_is_refused() {
        assert!(check(&[]).is_ok());
        assert!(check(&[range(b"a", b"a"), range(b"a", b"z")]).is_ok());
        let many = vec![range(b"a", b"b"); MAX_SHARD_METRICS_RANGES + 1];
        assert_eq!(check(&many).unwrap_err().code, ErrorCode::MalformedRequest);
        let inverted = [range(b"a", b"b"), range(b"z", b"a")];
        assert_eq!(check(&inverted).unwrap_err().code, ErrorCode::InvalidRange);
    }
}
