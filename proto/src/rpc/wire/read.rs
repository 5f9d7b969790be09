//! Wire conversion of reads: storage server reads at a version, storage
//! status, and key locations. Keys and values decode as slices of the frame.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, Vector, WIPOffset};

use super::optional_bytes;
use crate::generated::rpc as fb;
use crate::rpc::{
    AddingRangeStatus, DecodeError, GetKeyLocationReply, GetKeyLocationRequest, GetRangeReply,
    GetRangeRequest, GetValueReply, GetValueRequest, Message, StorageStatusReply,
};
use crate::types::{StorageServerId, StorageTeamId, Version};

type Encoded = (fb::Payload, WIPOffset<UnionWIPOffset>);

pub(super) fn get_value(fbb: &mut FlatBufferBuilder<'_>, r: &GetValueRequest) -> Encoded {
    let key = fbb.create_vector(&r.key);
    let args = fb::GetValueRequestArgs {
        key: Some(key),
        version: r.version.0,
    };
    let t = fb::GetValueRequest::create(fbb, &args);
    (fb::Payload::GetValueRequest, t.as_union_value())
}

pub(super) fn get_value_reply(fbb: &mut FlatBufferBuilder<'_>, r: &GetValueReply) -> Encoded {
    let value = r.value.as_ref().map(|v| fbb.create_vector(v));
    let args = fb::GetValueReplyArgs {
        present: r.value.is_some(),
        value,
    };
    let t = fb::GetValueReply::create(fbb, &args);
    (fb::Payload::GetValueReply, t.as_union_value())
}

pub(super) fn get_range(fbb: &mut FlatBufferBuilder<'_>, r: &GetRangeRequest) -> Encoded {
    let begin = fbb.create_vector(&r.begin);
    let end = fbb.create_vector(&r.end);
    let args = fb::GetRangeRequestArgs {
        begin: Some(begin),
        end: Some(end),
        limit: r.limit,
        reverse: r.reverse,
        version: r.version.0,
        copy: r.copy,
    };
    let t = fb::GetRangeRequest::create(fbb, &args);
    (fb::Payload::GetRangeRequest, t.as_union_value())
}

pub(super) fn get_range_reply(fbb: &mut FlatBufferBuilder<'_>, r: &GetRangeReply) -> Encoded {
    let pairs: Vec<_> = r
        .pairs
        .iter()
        .map(|(k, v)| {
            let key = fbb.create_vector(k);
            let value = fbb.create_vector(v);
            let args = fb::KeyValueArgs {
                key: Some(key),
                value: Some(value),
            };
            fb::KeyValue::create(fbb, &args)
        })
        .collect();
    let pairs = fbb.create_vector(&pairs);
    let args = fb::GetRangeReplyArgs {
        pairs: Some(pairs),
        more: r.more,
    };
    let t = fb::GetRangeReply::create(fbb, &args);
    (fb::Payload::GetRangeReply, t.as_union_value())
}

pub(super) fn storage_status(fbb: &mut FlatBufferBuilder<'_>, r: &StorageStatusReply) -> Encoded {
    let teams: Vec<u64> = r.teams.iter().map(|t| t.0).collect();
    let teams = fbb.create_vector(&teams);
    let stopped = r.stopped.as_deref().map(|reason| fbb.create_string(reason));
    let stalled = r.stalled.as_deref().map(|reason| fbb.create_string(reason));
    let rebuilding = r.rebuilding.as_deref().map(|what| fbb.create_string(what));
    let adding: Vec<_> = r
        .adding
        .iter()
        .map(|a| {
            let begin = fbb.create_vector(&a.begin);
            let end = fbb.create_vector(&a.end);
            let installed_to = fbb.create_vector(&a.installed_to);
            let problem = a.problem.as_deref().map(|p| fbb.create_string(p));
            let args = fb::AddingRangeStatusArgs {
                begin: Some(begin),
                end: Some(end),
                installed_to: Some(installed_to),
                pairs_copied: a.pairs_copied,
                bytes_copied: a.bytes_copied,
                ready: a.ready,
                problem,
                idle_ms: a.idle_ms,
                has_size_left: a.size_left.is_some(),
                size_left: a.size_left.unwrap_or(0),
                size_per_sec: a.size_per_sec,
            };
            fb::AddingRangeStatus::create(fbb, &args)
        })
        .collect();
    let adding = fbb.create_vector(&adding);
    let args = fb::StorageStatusReplyArgs {
        server: r.server.0,
        applied_version: r.applied_version.0,
        durable_version: r.durable_version.0,
        oldest_readable_version: r.oldest_readable_version.0,
        committed_version: r.committed_version.0,
        window_bytes: r.window_bytes,
        teams: Some(teams),
        stopped,
        stalled,
        rebuilding,
        adding: Some(adding),
        following_epoch: r.following_epoch,
    };
    let t = fb::StorageStatusReply::create(fbb, &args);
    (fb::Payload::StorageStatusReply, t.as_union_value())
}

pub(super) fn get_key_location(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &GetKeyLocationRequest,
) -> Encoded {
    let key = fbb.create_vector(&r.key);
    let args = fb::GetKeyLocationRequestArgs {
        key: Some(key),
        version: r.version.0,
    };
    let t = fb::GetKeyLocationRequest::create(fbb, &args);
    (fb::Payload::GetKeyLocationRequest, t.as_union_value())
}

pub(super) fn get_key_location_reply(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &GetKeyLocationReply,
) -> Encoded {
    let begin = fbb.create_vector(&r.begin);
    let end = fbb.create_vector(&r.end);
    let teams: Vec<_> = r
        .teams
        .iter()
        .map(|(team, servers)| {
            let ids: Vec<u64> = servers.iter().map(|s| s.0).collect();
            let servers = fbb.create_vector(&ids);
            let args = fb::TeamServersArgs {
                team: team.0,
                servers: Some(servers),
            };
            fb::TeamServers::create(fbb, &args)
        })
        .collect();
    let teams = fbb.create_vector(&teams);
    let moving_to: Vec<u64> = r.moving_to.iter().map(|t| t.0).collect();
    let moving_to = fbb.create_vector(&moving_to);
    let args = fb::GetKeyLocationReplyArgs {
        begin: Some(begin),
        end: Some(end),
        moving_to: Some(moving_to),
        teams: Some(teams),
        as_of: r.as_of.0,
    };
    let t = fb::GetKeyLocationReply::create(fbb, &args);
    (fb::Payload::GetKeyLocationReply, t.as_union_value())
}

/// Bytes the read messages add to an encoded message, for sizing the builder.
pub(super) fn payload_len(message: &Message) -> usize {
    match message {
        Message::GetValueReply(r) => r.value.as_ref().map_or(0, Bytes::len),
        Message::GetRangeReply(r) => r.pairs.iter().map(|(k, v)| k.len() + v.len() + 24).sum(),
        _ => 0,
    }
}

/// Decodes the read payloads; `None` for any other payload type.
pub(super) fn decode(
    frame: &Bytes,
    envelope: &fb::Envelope<'_>,
) -> Option<Result<Message, DecodeError>> {
    let request_id = envelope.request_id();
    let unknown = || DecodeError::UnknownMessage { request_id };
    let bytes = |b: Option<Vector<'_, u8>>| optional_bytes(frame, b);
    let message = match envelope.payload_type() {
        fb::Payload::GetValueRequest => (|| {
            let r = envelope
                .payload_as_get_value_request()
                .ok_or_else(unknown)?;
            Ok(Message::GetValue(GetValueRequest {
                key: bytes(r.key())?,
                version: Version(r.version()),
            }))
        })(),
        fb::Payload::GetValueReply => (|| {
            let r = envelope.payload_as_get_value_reply().ok_or_else(unknown)?;
            let value = if r.present() {
                Some(bytes(r.value())?)
            } else {
                None
            };
            Ok(Message::GetValueReply(GetValueReply { value }))
        })(),
        fb::Payload::GetRangeRequest => (|| {
            let r = envelope
                .payload_as_get_range_request()
                .ok_or_else(unknown)?;
            Ok(Message::GetRange(GetRangeRequest {
                begin: bytes(r.begin())?,
                end: bytes(r.end())?,
                limit: r.limit(),
                reverse: r.reverse(),
                version: Version(r.version()),
                copy: r.copy(),
            }))
        })(),
        fb::Payload::GetRangeReply => (|| {
            let r = envelope.payload_as_get_range_reply().ok_or_else(unknown)?;
            let pairs = match r.pairs() {
                Some(list) => list
                    .iter()
                    .map(|kv| Ok((bytes(kv.key())?, bytes(kv.value())?)))
                    .collect::<Result<Vec<_>, DecodeError>>()?,
                None => Vec::new(),
            };
            Ok(Message::GetRangeReply(GetRangeReply {
                pairs,
                more: r.more(),
            }))
        })(),
        fb::Payload::StorageStatusReply => (|| {
            let r = envelope
                .payload_as_storage_status_reply()
                .ok_or_else(unknown)?;
            let adding = match r.adding() {
                Some(list) => list
                    .iter()
                    .map(|a| {
                        Ok(AddingRangeStatus {
                            begin: bytes(a.begin())?,
                            end: bytes(a.end())?,
                            installed_to: bytes(a.installed_to())?,
                            pairs_copied: a.pairs_copied(),
                            bytes_copied: a.bytes_copied(),
                            ready: a.ready(),
                            problem: a.problem().map(str::to_owned),
                            idle_ms: a.idle_ms(),
                            size_left: a.has_size_left().then(|| a.size_left()),
                            size_per_sec: a.size_per_sec(),
                        })
                    })
                    .collect::<Result<Vec<_>, DecodeError>>()?,
                None => Vec::new(),
            };
            Ok(Message::StorageStatus(StorageStatusReply {
                server: StorageServerId(r.server()),
                applied_version: Version(r.applied_version()),
                durable_version: Version(r.durable_version()),
                oldest_readable_version: Version(r.oldest_readable_version()),
                committed_version: Version(r.committed_version()),
                window_bytes: r.window_bytes(),
                teams: r
                    .teams()
                    .map(|t| t.iter().map(StorageTeamId).collect())
                    .unwrap_or_default(),
                stopped: r.stopped().map(str::to_owned),
                stalled: r.stalled().map(str::to_owned),
                rebuilding: r.rebuilding().map(str::to_owned),
                adding,
                following_epoch: r.following_epoch(),
            }))
        })(),
        fb::Payload::GetKeyLocationRequest => (|| {
            let r = envelope
                .payload_as_get_key_location_request()
                .ok_or_else(unknown)?;
            Ok(Message::GetKeyLocation(GetKeyLocationRequest {
                key: bytes(r.key())?,
                version: Version(r.version()),
            }))
        })(),
        fb::Payload::GetKeyLocationReply => (|| {
            let r = envelope
                .payload_as_get_key_location_reply()
                .ok_or_else(unknown)?;
            let teams = r
                .teams()
                .map(|list| {
                    list.iter()
                        .map(|t| (StorageTeamId(t.team()), decode_servers(t.servers())))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Message::GetKeyLocationReply(GetKeyLocationReply {
                begin: bytes(r.begin())?,
                end: bytes(r.end())?,
                teams,
                moving_to: r
                    .moving_to()
                    .map(|t| t.iter().map(StorageTeamId).collect())
                    .unwrap_or_default(),
                as_of: Version(r.as_of()),
            }))
        })(),
        _ => return None,
    };
    Some(message)
}

fn decode_servers(servers: Option<Vector<'_, u64>>) -> Vec<StorageServerId> {
    servers
        .map(|ids| ids.iter().map(StorageServerId).collect())
        .unwrap_or_default()
}
