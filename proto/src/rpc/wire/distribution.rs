//! Wire conversion of the data distributor's questions to storage servers:
//! the metrics of key ranges. Split keys decode as slices of the frame.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::{decode_ranges, encode_ranges, optional_bytes};
use crate::generated::rpc as fb;
use crate::rpc::{DecodeError, KeyRange, Message, ShardMetrics};

type Encoded = (fb::Payload, WIPOffset<UnionWIPOffset>);

pub(super) fn shard_metrics(fbb: &mut FlatBufferBuilder<'_>, ranges: &[KeyRange]) -> Encoded {
    let ranges = encode_ranges(fbb, ranges);
    let args = fb::ShardMetricsRequestArgs {
        ranges: Some(ranges),
    };
    let t = fb::ShardMetricsRequest::create(fbb, &args);
    (fb::Payload::ShardMetricsRequest, t.as_union_value())
}

pub(super) fn shard_metrics_reply(
    fbb: &mut FlatBufferBuilder<'_>,
    shards: &[ShardMetrics],
) -> Encoded {
    let tables: Vec<_> = shards
        .iter()
        .map(|m| {
            let split_by_bytes = m.split_by_bytes.as_ref().map(|k| fbb.create_vector(k));
            let split_by_writes = m.split_by_writes.as_ref().map(|k| fbb.create_vector(k));
            let args = fb::ShardMetricsArgs {
                bytes: m.bytes,
                write_ops_per_sec: m.write_ops_per_sec,
                write_bytes_per_sec: m.write_bytes_per_sec,
                split_by_bytes,
                split_by_writes,
            };
            fb::ShardMetrics::create(fbb, &args)
        })
        .collect();
    let shards = fbb.create_vector(&tables);
    let args = fb::ShardMetricsReplyArgs {
        shards: Some(shards),
    };
    let t = fb::ShardMetricsReply::create(fbb, &args);
    (fb::Payload::ShardMetricsReply, t.as_union_value())
}

/// Decodes the distributor's payloads; `None` for any other payload type.
pub(super) fn decode(
    frame: &Bytes,
    envelope: &fb::Envelope<'_>,
) -> Option<Result<Message, DecodeError>> {
    let request_id = envelope.request_id();
    let unknown = || DecodeError::UnknownMessage { request_id };
    let message = match envelope.payload_type() {
        fb::Payload::ShardMetricsRequest => (|| {
            let r = envelope
                .payload_as_shard_metrics_request()
                .ok_or_else(unknown)?;
            Ok(Message::ShardMetrics(decode_ranges(frame, r.ranges())?))
        })(),
        fb::Payload::ShardMetricsReply => (|| {
            let r = envelope
                .payload_as_shard_metrics_reply()
                .ok_or_else(unknown)?;
            let split = |key: Option<flatbuffers::Vector<'_, u8>>| {
                key.map(|k| optional_bytes(frame, Some(k))).transpose()
            };
            let shards = r
                .shards()
                .map(|list| {
                    list.iter()
                        .map(|m| {
                            Ok(ShardMetrics {
                                bytes: m.bytes(),
                                write_ops_per_sec: m.write_ops_per_sec(),
                                write_bytes_per_sec: m.write_bytes_per_sec(),
                                split_by_bytes: split(m.split_by_bytes())?,
                                split_by_writes: split(m.split_by_writes())?,
                            })
                        })
                        .collect::<Result<Vec<_>, DecodeError>>()
                })
                .unwrap_or(Ok(Vec::new()))?;
            Ok(Message::ShardMetricsReply(shards))
        })(),
        _ => return None,
    };
    Some(message)
}
