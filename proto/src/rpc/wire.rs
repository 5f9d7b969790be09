//! Conversion between the owned messages and the generated flatbuffers code.

use std::cell::RefCell;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::{
    DecodeError, Envelope, ErrorCode, ErrorReply, KeyRange, LockReply, Message, PeekReply,
    PeekRequest, PopRequest, RegisterTeamRequest, SequenceReply, TLogCommitReply,
    TLogCommitRequest, TLogStatusReply, TeamBlockData, TeamStatus,
};
use crate::frame::FramePayload;
use crate::generated::rpc as fb;

mod appendix;
mod commit;
mod coordination;
mod distribution;
mod read;
mod workers;
use crate::types::{StorageServerId, StorageTeamId, Version};

/// Room for the tables and offsets around the payload bytes.
const ENVELOPE_OVERHEAD: usize = 256;
const PER_BLOCK_OVERHEAD: usize = 32;

/// Messages estimated at up to this many bytes are built in a builder the
/// thread keeps and then copied out, which costs less than a fresh builder's
/// own allocations; larger ones get a fresh builder whose buffer becomes the
/// frame without a copy.
const POOLED_UP_TO: usize = 4 << 10;

thread_local! {
    static POOLED: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(POOLED_UP_TO));
}

pub(super) fn encode(envelope: &Envelope) -> FramePayload {
    let estimate = estimated_len(&envelope.message);
    let mut attached = appendix::Outgoing::default();
    let pooled = if estimate <= POOLED_UP_TO {
        POOLED.with(|pooled| build_pooled(pooled, envelope, &mut attached))
    } else {
        None
    };
    let envelope = pooled.unwrap_or_else(|| {
        let mut fbb = FlatBufferBuilder::with_capacity(estimate);
        build(&mut fbb, envelope, &mut attached);
        // The builder fills its buffer from the back; hand out that tail
        // without copying it.
        let (buf, head) = fbb.collapse();
        Bytes::from(buf).slice(head..)
    });
    if attached.blocks.is_empty() {
        return FramePayload::Whole(envelope);
    }
    let mut parts = Vec::with_capacity(1 + attached.blocks.len());
    parts.push(envelope);
    parts.append(&mut attached.blocks);
    FramePayload::Parts(parts)
}

/// Builds `envelope` in the thread's builder and copies it out; `None` if
/// the builder is in use (a re-entrant call), when a fresh one must do.
fn build_pooled(
    pooled: &RefCell<FlatBufferBuilder<'static>>,
    envelope: &Envelope,
    attached: &mut appendix::Outgoing,
) -> Option<Bytes> {
    let mut fbb = pooled.try_borrow_mut().ok()?;
    fbb.reset();
    build(&mut fbb, envelope, attached);
    let head = Bytes::copy_from_slice(fbb.finished_data());
    // An estimate far off must not leave a large buffer behind.
    if head.len() > 4 * POOLED_UP_TO {
        *fbb = FlatBufferBuilder::with_capacity(POOLED_UP_TO);
    }
    Some(head)
}

/// Builds and finishes `envelope` in `fbb`, attaching its large blocks.
fn build(fbb: &mut FlatBufferBuilder<'_>, envelope: &Envelope, attached: &mut appendix::Outgoing) {
    let (payload_type, payload) = encode_message(fbb, &envelope.message, attached);
    let root = fb::Envelope::create(
        fbb,
        &fb::EnvelopeArgs {
            request_id: envelope.request_id,
            payload_type,
            payload: Some(payload),
            // Past 4 GiB the frame is refused as too large before it is sent.
            appendix: u32::try_from(attached.len).unwrap_or(u32::MAX),
        },
    );
    fbb.finish(root, None);
}

fn error_reply<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &ErrorReply,
) -> WIPOffset<fb::ErrorReply<'a>> {
    let text = fbb.create_string(&r.message);
    fb::ErrorReply::create(
        fbb,
        &fb::ErrorReplyArgs {
            code: code_to_wire(r.code),
            message: Some(text),
            version: r.version.map_or(0, |v| v.0),
            has_version: r.version.is_some(),
        },
    )
}

fn decode_error_reply(r: &fb::ErrorReply<'_>) -> ErrorReply {
    ErrorReply {
        code: code_from_wire(r.code()),
        message: r.message().unwrap_or_default().to_owned(),
        version: r.has_version().then(|| Version(r.version())),
    }
}

fn estimated_len(message: &Message) -> usize {
    let mutations = match message {
        Message::ClientCommit(r) => commit::mutations_len(&r.mutations),
        Message::Sequence(r) => r
            .transactions
            .iter()
            .map(|t| commit::mutations_len(&t.metadata))
            .sum(),
        Message::SequenceReply(SequenceReply {
            resolved: Ok(r), ..
        }) => r
            .metadata
            .iter()
            .map(|m| commit::mutations_len(&m.mutations))
            .sum(),
        _ => 0,
    };
    let blocks = match message {
        Message::TLogCommit(r) => r.teams.as_slice(),
        Message::PeekReply(r) => r.blocks.as_slice(),
        _ => &[],
    };
    ENVELOPE_OVERHEAD
        + read::payload_len(message)
        + coordination::payload_len(message)
        + workers::payload_len(message)
        + mutations
        + blocks
            .iter()
            .map(|b| inline_len(&b.data) + PER_BLOCK_OVERHEAD)
            .sum::<usize>()
}

fn encode_message(
    fbb: &mut FlatBufferBuilder<'_>,
    message: &Message,
    attached: &mut appendix::Outgoing,
) -> (fb::Payload, WIPOffset<UnionWIPOffset>) {
    match message {
        Message::TLogCommit(r) => {
            let teams = encode_blocks(fbb, &r.teams, attached);
            let t = fb::TLogCommitRequest::create(
                fbb,
                &fb::TLogCommitRequestArgs {
                    prev_version: r.prev_version.0,
                    version: r.version.0,
                    known_committed_version: r.known_committed_version.0,
                    teams: Some(teams),
                },
            );
            (fb::Payload::TLogCommitRequest, t.as_union_value())
        }
        Message::TLogCommitReply(r) => {
            let t = fb::TLogCommitReply::create(
                fbb,
                &fb::TLogCommitReplyArgs {
                    version: r.version.0,
                },
            );
            (fb::Payload::TLogCommitReply, t.as_union_value())
        }
        Message::Peek(r) => {
            let t = fb::PeekRequest::create(
                fbb,
                &fb::PeekRequestArgs {
                    team: r.team.0,
                    begin: r.begin.0,
                    max_bytes: r.max_bytes,
                    timeout_ms: r.timeout_ms,
                },
            );
            (fb::Payload::PeekRequest, t.as_union_value())
        }
        Message::PeekReply(r) => {
            let blocks = encode_blocks(fbb, &r.blocks, attached);
            let t = fb::PeekReply::create(
                fbb,
                &fb::PeekReplyArgs {
                    blocks: Some(blocks),
                    end: r.end.0,
                    popped: r.popped.0,
                    max_known_version: r.max_known_version.0,
                    known_committed_version: r.known_committed_version.0,
                    end_of_stream: r.end_of_stream,
                },
            );
            (fb::Payload::PeekReply, t.as_union_value())
        }
        Message::Pop(r) => {
            let t = fb::PopRequest::create(
                fbb,
                &fb::PopRequestArgs {
                    team: r.team.0,
                    server: r.server.0,
                    version: r.version.0,
                },
            );
            (fb::Payload::PopRequest, t.as_union_value())
        }
        Message::PopReply => {
            let t = fb::PopReply::create(fbb, &fb::PopReplyArgs {});
            (fb::Payload::PopReply, t.as_union_value())
        }
        Message::Lock => {
            let t = fb::LockRequest::create(fbb, &fb::LockRequestArgs {});
            (fb::Payload::LockRequest, t.as_union_value())
        }
        Message::LockReply(r) => {
            let t = fb::LockReply::create(
                fbb,
                &fb::LockReplyArgs {
                    end_version: r.end_version.0,
                    known_committed_version: r.known_committed_version.0,
                },
            );
            (fb::Payload::LockReply, t.as_union_value())
        }
        Message::RegisterTeam(r) => {
            let servers = encode_servers(fbb, &r.servers);
            let t = fb::RegisterTeamRequest::create(
                fbb,
                &fb::RegisterTeamRequestArgs {
                    team: r.team.0,
                    servers: Some(servers),
                },
            );
            (fb::Payload::RegisterTeamRequest, t.as_union_value())
        }
        Message::RegisterTeamReply => {
            let t = fb::RegisterTeamReply::create(fbb, &fb::RegisterTeamReplyArgs {});
            (fb::Payload::RegisterTeamReply, t.as_union_value())
        }
        Message::Status => {
            let t = fb::StatusRequest::create(fbb, &fb::StatusRequestArgs {});
            (fb::Payload::StatusRequest, t.as_union_value())
        }
        Message::TLogStatus(r) => {
            let teams: Vec<_> = r
                .teams
                .iter()
                .map(|team| {
                    let servers = encode_servers(fbb, &team.servers);
                    fb::TeamStatus::create(
                        fbb,
                        &fb::TeamStatusArgs {
                            team: team.team.0,
                            popped: team.popped.0,
                            bytes: team.bytes,
                            servers: Some(servers),
                        },
                    )
                })
                .collect();
            let teams = fbb.create_vector(&teams);
            let stalled = r.stalled.as_deref().map(|s| fbb.create_string(s));
            let t = fb::TLogStatusReply::create(
                fbb,
                &fb::TLogStatusReplyArgs {
                    durable_version: r.durable_version.0,
                    known_committed_version: r.known_committed_version.0,
                    locked: r.locked,
                    poisoned: r.poisoned,
                    memory_bytes: r.memory_bytes,
                    memory_budget: r.memory_budget,
                    disk_bytes: r.disk_bytes,
                    truncation_blocker: r.truncation_blocker.map_or(0, |t| t.0),
                    has_truncation_blocker: r.truncation_blocker.is_some(),
                    teams: Some(teams),
                    stalled,
                },
            );
            (fb::Payload::TLogStatusReply, t.as_union_value())
        }
        Message::Error(r) => (
            fb::Payload::ErrorReply,
            error_reply(fbb, r).as_union_value(),
        ),
        Message::Sequence(r) => commit::sequence(fbb, r),
        Message::SequenceReply(r) => commit::sequence_reply(fbb, r),
        Message::ReportCommitted(r) => commit::report_committed(fbb, r),
        Message::ReportCommittedReply => commit::report_committed_reply(fbb),
        Message::GetReadVersion => commit::get_read_version(fbb),
        Message::GetReadVersionReply(r) => commit::get_read_version_reply(fbb, r),
        Message::ClientCommit(r) => commit::client_commit(fbb, r),
        Message::ClientCommitReply(r) => commit::client_commit_reply(fbb, r),
        Message::GetValue(r) => read::get_value(fbb, r),
        Message::GetValueReply(r) => read::get_value_reply(fbb, r),
        Message::GetRange(r) => read::get_range(fbb, r),
        Message::GetRangeReply(r) => read::get_range_reply(fbb, r),
        Message::StorageStatus(r) => read::storage_status(fbb, r),
        Message::GetKeyLocation(r) => read::get_key_location(fbb, r),
        Message::GetKeyLocationReply(r) => read::get_key_location_reply(fbb, r),
        Message::SequencerStatus(r) => commit::sequencer_status(fbb, r),
        Message::ProxyStatus(r) => commit::proxy_status(fbb, r),
        Message::Raft(payload) => coordination::raft(fbb, payload),
        Message::RaftReply(payload) => coordination::raft_reply(fbb, payload),
        Message::CoordinatedRead(name) => coordination::read(fbb, name),
        Message::CoordinatedWatch(r) => coordination::watch(fbb, r),
        Message::CoordinatedWrite(r) => coordination::write(fbb, r),
        Message::CoordinatedReply(r) => coordination::reply(fbb, r),
        Message::CoordinatorStatus(r) => coordination::status(fbb, r),
        Message::RegisterWorker(r) => workers::register_worker(fbb, r),
        Message::RegisterWorkerReply => workers::register_worker_reply(fbb),
        Message::Recruit(r) => workers::recruit(fbb, r),
        Message::RecruitReply(address) => workers::recruit_reply(fbb, address),
        Message::OpenCommits(epoch) => workers::open_commits(fbb, *epoch),
        Message::OpenCommitsReply => workers::open_commits_reply(fbb),
        Message::GetClusterInfo => workers::get_cluster_info(fbb),
        Message::ClusterInfo(r) => workers::cluster_info(fbb, r),
        Message::WorkerStatus(r) => workers::worker_status(fbb, r),
        Message::ShardMetrics(ranges) => distribution::shard_metrics(fbb, ranges),
        Message::ShardMetricsReply(shards) => distribution::shard_metrics_reply(fbb, shards),
    }
}

type BlocksOffset<'a> = WIPOffset<Vector<'a, ForwardsUOffset<fb::TeamBlock<'a>>>>;

fn encode_blocks<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    blocks: &[TeamBlockData],
    attached: &mut appendix::Outgoing,
) -> BlocksOffset<'a> {
    let tables: Vec<_> = blocks
        .iter()
        .map(|block| {
            let args = if block.data.len() >= appendix::ATTACH_FROM {
                fb::TeamBlockArgs {
                    team: block.team.0,
                    data: None,
                    attached: attached.attach(&block.data),
                }
            } else {
                fb::TeamBlockArgs {
                    team: block.team.0,
                    data: Some(fbb.create_vector(&block.data)),
                    attached: 0,
                }
            };
            fb::TeamBlock::create(fbb, &args)
        })
        .collect();
    fbb.create_vector(&tables)
}

/// Bytes a block adds to the flatbuffer itself.
fn inline_len(block: &Bytes) -> usize {
    if block.len() >= appendix::ATTACH_FROM {
        0
    } else {
        block.len()
    }
}

fn encode_servers<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    servers: &[StorageServerId],
) -> WIPOffset<Vector<'a, u64>> {
    let ids: Vec<u64> = servers.iter().map(|s| s.0).collect();
    fbb.create_vector(&ids)
}

fn code_to_wire(code: ErrorCode) -> fb::ErrorCode {
    // `ErrorCode` is declared in the schema's order, so its discriminant is
    // the wire value (checked by a test against the generated constants).
    fb::ErrorCode(code as u16)
}

/// A code from a newer peer that this code does not know reads as `Unknown`.
fn code_from_wire(code: fb::ErrorCode) -> ErrorCode {
    ErrorCode::ALL
        .get(usize::from(code.0))
        .copied()
        .unwrap_or(ErrorCode::Unknown)
}

pub(super) fn decode(frame: Bytes) -> Result<Envelope, DecodeError> {
    let envelope = fb::root_as_envelope(&frame)?;
    let request_id = envelope.request_id();
    let mut attached = appendix::Incoming::of(&frame, envelope.appendix(), request_id)?;
    let unknown = DecodeError::UnknownMessage { request_id };
    // The verifier has checked that a typed union has a value, so a missing
    // one only comes with a type this code does not know.
    let message = match envelope.payload_type() {
        fb::Payload::TLogCommitRequest => {
            let r = envelope.payload_as_tlog_commit_request().ok_or(unknown)?;
            Message::TLogCommit(TLogCommitRequest {
                prev_version: Version(r.prev_version()),
                version: Version(r.version()),
                known_committed_version: Version(r.known_committed_version()),
                teams: decode_blocks(&frame, r.teams(), &mut attached)?,
            })
        }
        fb::Payload::TLogCommitReply => {
            let r = envelope.payload_as_tlog_commit_reply().ok_or(unknown)?;
            Message::TLogCommitReply(TLogCommitReply {
                version: Version(r.version()),
            })
        }
        fb::Payload::PeekRequest => {
            let r = envelope.payload_as_peek_request().ok_or(unknown)?;
            Message::Peek(PeekRequest {
                team: StorageTeamId(r.team()),
                begin: Version(r.begin()),
                max_bytes: r.max_bytes(),
                timeout_ms: r.timeout_ms(),
            })
        }
        fb::Payload::PeekReply => {
            let r = envelope.payload_as_peek_reply().ok_or(unknown)?;
            Message::PeekReply(PeekReply {
                blocks: decode_blocks(&frame, r.blocks(), &mut attached)?,
                end: Version(r.end()),
                popped: Version(r.popped()),
                max_known_version: Version(r.max_known_version()),
                known_committed_version: Version(r.known_committed_version()),
                end_of_stream: r.end_of_stream(),
            })
        }
        fb::Payload::PopRequest => {
            let r = envelope.payload_as_pop_request().ok_or(unknown)?;
            Message::Pop(PopRequest {
                team: StorageTeamId(r.team()),
                server: StorageServerId(r.server()),
                version: Version(r.version()),
            })
        }
        fb::Payload::PopReply => Message::PopReply,
        fb::Payload::LockRequest => Message::Lock,
        fb::Payload::LockReply => {
            let r = envelope.payload_as_lock_reply().ok_or(unknown)?;
            Message::LockReply(LockReply {
                end_version: Version(r.end_version()),
                known_committed_version: Version(r.known_committed_version()),
            })
        }
        fb::Payload::RegisterTeamRequest => {
            let r = envelope.payload_as_register_team_request().ok_or(unknown)?;
            Message::RegisterTeam(RegisterTeamRequest {
                team: StorageTeamId(r.team()),
                servers: decode_servers(r.servers()),
            })
        }
        fb::Payload::RegisterTeamReply => Message::RegisterTeamReply,
        fb::Payload::StatusRequest => Message::Status,
        fb::Payload::TLogStatusReply => {
            let r = envelope.payload_as_tlog_status_reply().ok_or(unknown)?;
            let teams = r
                .teams()
                .map(|teams| {
                    teams
                        .iter()
                        .map(|t| TeamStatus {
                            team: StorageTeamId(t.team()),
                            popped: Version(t.popped()),
                            bytes: t.bytes(),
                            servers: decode_servers(t.servers()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Message::TLogStatus(TLogStatusReply {
                durable_version: Version(r.durable_version()),
                known_committed_version: Version(r.known_committed_version()),
                locked: r.locked(),
                poisoned: r.poisoned(),
                memory_bytes: r.memory_bytes(),
                memory_budget: r.memory_budget(),
                disk_bytes: r.disk_bytes(),
                truncation_blocker: r
                    .has_truncation_blocker()
                    .then(|| StorageTeamId(r.truncation_blocker())),
                teams,
                stalled: r.stalled().map(str::to_string),
            })
        }
        fb::Payload::ErrorReply => {
            let r = envelope.payload_as_error_reply().ok_or(unknown)?;
            Message::Error(decode_error_reply(&r))
        }
        _ => match commit::decode(&frame, &envelope)
            .or_else(|| read::decode(&frame, &envelope))
            .or_else(|| distribution::decode(&frame, &envelope))
            .or_else(|| coordination::decode(&frame, &envelope))
            .or_else(|| workers::decode(&envelope))
        {
            Some(message) => message?,
            None => return Err(unknown),
        },
    };
    attached.finish()?;
    Ok(Envelope {
        request_id,
        message,
    })
}

fn decode_blocks(
    frame: &Bytes,
    blocks: Option<Vector<'_, ForwardsUOffset<fb::TeamBlock<'_>>>>,
    attached: &mut appendix::Incoming<'_>,
) -> Result<Vec<TeamBlockData>, DecodeError> {
    let Some(blocks) = blocks else {
        return Ok(Vec::new());
    };
    blocks
        .iter()
        .map(|block| {
            let data = match (block.data(), block.attached()) {
                (None, 0) => Bytes::new(),
                (Some(data), 0) => subslice(frame, data.bytes())?,
                (None, len) => attached.take(len)?,
                (Some(_), _) => return Err(attached.invalid("a block both inline and attached")),
            };
            Ok(TeamBlockData {
                team: StorageTeamId(block.team()),
                data,
            })
        })
        .collect()
}

/// Key ranges as a vector of tables.
pub(super) fn encode_ranges<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    list: &[KeyRange],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::KeyRange<'a>>>> {
    let tables: Vec<_> = list
        .iter()
        .map(|r| {
            let begin = fbb.create_vector(&r.begin);
            let end = fbb.create_vector(&r.end);
            let args = fb::KeyRangeArgs {
                begin: Some(begin),
                end: Some(end),
            };
            fb::KeyRange::create(fbb, &args)
        })
        .collect();
    fbb.create_vector(&tables)
}

/// Key ranges from a vector of tables; absent reads as none.
pub(super) fn decode_ranges(
    frame: &Bytes,
    list: Option<Vector<'_, ForwardsUOffset<fb::KeyRange<'_>>>>,
) -> Result<Vec<KeyRange>, DecodeError> {
    list.map(|l| {
        l.iter()
            .map(|r| {
                Ok(KeyRange {
                    begin: optional_bytes(frame, r.begin())?,
                    end: optional_bytes(frame, r.end())?,
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()
    })
    .unwrap_or(Ok(Vec::new()))
}

/// An optional byte vector of the frame as a slice of it; absent reads as
/// empty.
fn optional_bytes(frame: &Bytes, bytes: Option<Vector<'_, u8>>) -> Result<Bytes, DecodeError> {
    match bytes {
        Some(v) => subslice(frame, v.bytes()),
        None => Ok(Bytes::new()),
    }
}

/// `Bytes::slice_ref` without its panic: the verifier guarantees that `sub`
/// lies inside `frame`, and this keeps that guarantee from being a panic
/// path should it ever fail.
fn subslice(frame: &Bytes, sub: &[u8]) -> Result<Bytes, DecodeError> {
    if sub.is_empty() {
        return Ok(Bytes::new());
    }
    let start = (sub.as_ptr() as usize).checked_sub(frame.as_ptr() as usize);
    match start {
        Some(start) if start <= frame.len() && sub.len() <= frame.len() - start => {
            Ok(frame.slice(start..start + sub.len()))
        }
        _ => Err(DecodeError::InvalidFlatbuffer(
            flatbuffers::InvalidFlatbuffer::RangeOutOfBounds {
                range: 0..sub.len(),
                error_trace: Default::default(),
            },
        )),
    }
}

fn decode_servers(servers: Option<Vector<'_, u64>>) -> Vec<StorageServerId> {
    servers
        .map(|ids| ids.iter().map(StorageServerId).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_the_schema_values_of_the_same_name() {
        for code in ErrorCode::ALL {
            let wire = code_to_wire(code);
            assert_eq!(wire.variant_name(), Some(format!("{code:?}").as_str()));
            assert_eq!(code_from_wire(wire), code);
        }
        assert_eq!(code_from_wire(fb::ErrorCode(999)), ErrorCode::Unknown);
    }
}
