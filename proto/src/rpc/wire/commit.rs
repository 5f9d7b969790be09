//! Wire conversion of the commit path's messages: sequencer, resolver,
//! client commits, and the sequencer's and proxies' status. Keys and values
//! decode as slices of the frame.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::{decode_error_reply, decode_ranges, encode_ranges, error_reply, optional_bytes};
use crate::generated::rpc as fb;
use crate::rpc::{
    ClientCommitReply, ClientCommitRequest, DecodeError, GetCommitVersionReply,
    GetReadVersionReply, ProxyStatusReply, ReportCommittedRequest, ResolveReply,
    ResolveTransaction, SequenceReply, SequenceRequest, SequencerStatusReply, VersionedMetadata,
};
use crate::types::{Mutation, ProxyId, Version};

type Encoded = (fb::Payload, WIPOffset<UnionWIPOffset>);
type MutationsOffset<'a> = WIPOffset<Vector<'a, ForwardsUOffset<fb::Mutation<'a>>>>;

pub(super) fn sequence(fbb: &mut FlatBufferBuilder<'_>, r: &SequenceRequest) -> Encoded {
    let transactions: Vec<_> = r
        .transactions
        .iter()
        .map(|t| {
            let read_ranges = encode_ranges(fbb, &t.read_ranges);
            let write_ranges = encode_ranges(fbb, &t.write_ranges);
            let metadata = mutations(fbb, &t.metadata);
            let args = fb::ResolveTransactionArgs {
                read_version: t.read_version.0,
                read_ranges: Some(read_ranges),
                write_ranges: Some(write_ranges),
                metadata: Some(metadata),
            };
            fb::ResolveTransaction::create(fbb, &args)
        })
        .collect();
    let transactions = fbb.create_vector(&transactions);
    let args = fb::SequenceRequestArgs {
        proxy: r.proxy.0,
        request_num: r.request_num,
        transactions: Some(transactions),
        committed: r.committed.0,
    };
    let t = fb::SequenceRequest::create(fbb, &args);
    (fb::Payload::SequenceRequest, t.as_union_value())
}

pub(super) fn sequence_reply(fbb: &mut FlatBufferBuilder<'_>, r: &SequenceReply) -> Encoded {
    let (resolved, resolve_error) = match &r.resolved {
        Ok(reply) => (Some(resolve_reply(fbb, reply)), None),
        Err(error) => (None, Some(error_reply(fbb, error))),
    };
    let args = fb::SequenceReplyArgs {
        prev_version: r.versions.prev_version.0,
        version: r.versions.version.0,
        resolved,
        resolve_error,
    };
    let t = fb::SequenceReply::create(fbb, &args);
    (fb::Payload::SequenceReply, t.as_union_value())
}

pub(super) fn report_committed(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &ReportCommittedRequest,
) -> Encoded {
    let args = fb::ReportCommittedRequestArgs {
        proxy: r.proxy.0,
        version: r.version.0,
    };
    let t = fb::ReportCommittedRequest::create(fbb, &args);
    (fb::Payload::ReportCommittedRequest, t.as_union_value())
}

pub(super) fn report_committed_reply(fbb: &mut FlatBufferBuilder<'_>) -> Encoded {
    let t = fb::ReportCommittedReply::create(fbb, &fb::ReportCommittedReplyArgs {});
    (fb::Payload::ReportCommittedReply, t.as_union_value())
}

pub(super) fn get_read_version(fbb: &mut FlatBufferBuilder<'_>) -> Encoded {
    let t = fb::GetReadVersionRequest::create(fbb, &fb::GetReadVersionRequestArgs {});
    (fb::Payload::GetReadVersionRequest, t.as_union_value())
}

pub(super) fn get_read_version_reply(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &GetReadVersionReply,
) -> Encoded {
    let args = fb::GetReadVersionReplyArgs {
        version: r.version.0,
    };
    let t = fb::GetReadVersionReply::create(fbb, &args);
    (fb::Payload::GetReadVersionReply, t.as_union_value())
}

pub(super) fn sequencer_status(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &SequencerStatusReply,
) -> Encoded {
    let args = fb::SequencerStatusReplyArgs {
        last_version: r.last_version.0,
        committed_version: r.committed_version.0,
    };
    let t = fb::SequencerStatusReply::create(fbb, &args);
    (fb::Payload::SequencerStatusReply, t.as_union_value())
}

pub(super) fn proxy_status(fbb: &mut FlatBufferBuilder<'_>, r: &ProxyStatusReply) -> Encoded {
    let throttling = r.throttling.as_deref().map(|why| fbb.create_string(why));
    let delaying = r.delaying.as_deref().map(|why| fbb.create_string(why));
    let args = fb::ProxyStatusReplyArgs {
        proxy: r.proxy.0,
        known_committed_version: r.known_committed_version.0,
        commits: r.commits,
        throttling,
        delaying,
    };
    let t = fb::ProxyStatusReply::create(fbb, &args);
    (fb::Payload::ProxyStatusReply, t.as_union_value())
}

fn resolve_reply<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &ResolveReply,
) -> WIPOffset<fb::ResolveReply<'a>> {
    let metadata: Vec<_> = r
        .metadata
        .iter()
        .map(|m| {
            let list = mutations(fbb, &m.mutations);
            let args = fb::VersionedMetadataArgs {
                version: m.version.0,
                mutations: Some(list),
            };
            fb::VersionedMetadata::create(fbb, &args)
        })
        .collect();
    let metadata = fbb.create_vector(&metadata);
    let conflicts = fbb.create_vector(&r.conflicts);
    let args = fb::ResolveReplyArgs {
        metadata: Some(metadata),
        conflicts: Some(conflicts),
    };
    fb::ResolveReply::create(fbb, &args)
}

pub(super) fn client_commit(fbb: &mut FlatBufferBuilder<'_>, r: &ClientCommitRequest) -> Encoded {
    let list = mutations(fbb, &r.mutations);
    let read_ranges = encode_ranges(fbb, &r.read_ranges);
    let args = fb::ClientCommitRequestArgs {
        mutations: Some(list),
        allow_system_keys: r.allow_system_keys,
        read_version: r.read_version.0,
        read_ranges: Some(read_ranges),
    };
    let t = fb::ClientCommitRequest::create(fbb, &args);
    (fb::Payload::ClientCommitRequest, t.as_union_value())
}

pub(super) fn client_commit_reply(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &ClientCommitReply,
) -> Encoded {
    let args = fb::ClientCommitReplyArgs {
        version: r.version.0,
    };
    let t = fb::ClientCommitReply::create(fbb, &args);
    (fb::Payload::ClientCommitReply, t.as_union_value())
}

/// Bytes the mutations add to an encoded message, for sizing the builder.
pub(super) fn mutations_len(list: &[Mutation]) -> usize {
    list.iter().map(|m| m.payload_len() + 32).sum()
}

fn mutations<'a>(fbb: &mut FlatBufferBuilder<'a>, list: &[Mutation]) -> MutationsOffset<'a> {
    let tables: Vec<_> = list
        .iter()
        .map(|m| {
            let (kind, a, b) = m.encode();
            let a = fbb.create_vector(a);
            let b = fbb.create_vector(b);
            let args = fb::MutationArgs {
                kind,
                a: Some(a),
                b: Some(b),
            };
            fb::Mutation::create(fbb, &args)
        })
        .collect();
    fbb.create_vector(&tables)
}

/// Decodes the commit-path payloads; `None` for any other payload type.
pub(super) fn decode(
    frame: &Bytes,
    envelope: &fb::Envelope<'_>,
) -> Option<Result<crate::rpc::Message, DecodeError>> {
    use crate::rpc::Message;
    let request_id = envelope.request_id();
    let unknown = || DecodeError::UnknownMessage { request_id };
    let bytes = |b: Option<Vector<'_, u8>>| optional_bytes(frame, b);
    let decode_mutations = |list: Option<Vector<'_, ForwardsUOffset<fb::Mutation<'_>>>>| {
        list.map(|l| {
            l.iter()
                .map(|m| {
                    let (a, b) = (bytes(m.a())?, bytes(m.b())?);
                    let kind = m.kind();
                    Mutation::decode(kind, a, b).ok_or_else(|| DecodeError::InvalidContent {
                        request_id,
                        reason: format!("unknown mutation kind {kind}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or(Ok(Vec::new()))
    };
    let message = match envelope.payload_type() {
        fb::Payload::ReportCommittedRequest => envelope
            .payload_as_report_committed_request()
            .ok_or_else(unknown)
            .map(|r| {
                Message::ReportCommitted(ReportCommittedRequest {
                    proxy: ProxyId(r.proxy()),
                    version: Version(r.version()),
                })
            }),
        fb::Payload::ReportCommittedReply => Ok(Message::ReportCommittedReply),
        fb::Payload::GetReadVersionRequest => Ok(Message::GetReadVersion),
        fb::Payload::GetReadVersionReply => envelope
            .payload_as_get_read_version_reply()
            .ok_or_else(unknown)
            .map(|r| {
                Message::GetReadVersionReply(GetReadVersionReply {
                    version: Version(r.version()),
                })
            }),
        fb::Payload::SequencerStatusReply => envelope
            .payload_as_sequencer_status_reply()
            .ok_or_else(unknown)
            .map(|r| {
                Message::SequencerStatus(SequencerStatusReply {
                    last_version: Version(r.last_version()),
                    committed_version: Version(r.committed_version()),
                })
            }),
        fb::Payload::ProxyStatusReply => envelope
            .payload_as_proxy_status_reply()
            .ok_or_else(unknown)
            .map(|r| {
                Message::ProxyStatus(ProxyStatusReply {
                    proxy: ProxyId(r.proxy()),
                    known_committed_version: Version(r.known_committed_version()),
                    commits: r.commits(),
                    throttling: r.throttling().map(str::to_owned),
                    delaying: r.delaying().map(str::to_owned),
                })
            }),
        fb::Payload::SequenceRequest => (|| {
            let r = envelope.payload_as_sequence_request().ok_or_else(unknown)?;
            let transactions = r
                .transactions()
                .map(|l| {
                    l.iter()
                        .map(|t| {
                            Ok(ResolveTransaction {
                                read_version: Version(t.read_version()),
                                read_ranges: decode_ranges(frame, t.read_ranges())?,
                                write_ranges: decode_ranges(frame, t.write_ranges())?,
                                metadata: decode_mutations(t.metadata())?,
                            })
                        })
                        .collect::<Result<Vec<_>, DecodeError>>()
                })
                .unwrap_or(Ok(Vec::new()))?;
            Ok(Message::Sequence(SequenceRequest {
                proxy: ProxyId(r.proxy()),
                request_num: r.request_num(),
                transactions,
                committed: Version(r.committed()),
            }))
        })(),
        fb::Payload::SequenceReply => (|| {
            let r = envelope.payload_as_sequence_reply().ok_or_else(unknown)?;
            let resolved = match (r.resolved(), r.resolve_error()) {
                (Some(resolved), None) => {
                    let metadata = resolved
                        .metadata()
                        .map(|l| {
                            l.iter()
                                .map(|m| {
                                    Ok(VersionedMetadata {
                                        version: Version(m.version()),
                                        mutations: decode_mutations(m.mutations())?,
                                    })
                                })
                                .collect::<Result<Vec<_>, DecodeError>>()
                        })
                        .unwrap_or(Ok(Vec::new()))?;
                    let conflicts = resolved
                        .conflicts()
                        .map(|c| c.iter().collect())
                        .unwrap_or_default();
                    Ok(ResolveReply {
                        metadata,
                        conflicts,
                    })
                }
                (None, Some(error)) => Err(decode_error_reply(&error)),
                _ => {
                    return Err(DecodeError::InvalidContent {
                        request_id,
                        reason: "a sequence reply needs exactly one of resolved and resolve_error"
                            .to_string(),
                    })
                }
            };
            Ok(Message::SequenceReply(SequenceReply {
                versions: GetCommitVersionReply {
                    prev_version: Version(r.prev_version()),
                    version: Version(r.version()),
                },
                resolved,
            }))
        })(),
        fb::Payload::ClientCommitRequest => (|| {
            let r = envelope
                .payload_as_client_commit_request()
                .ok_or_else(unknown)?;
            Ok(Message::ClientCommit(ClientCommitRequest {
                mutations: decode_mutations(r.mutations())?,
                allow_system_keys: r.allow_system_keys(),
                read_version: Version(r.read_version()),
                read_ranges: decode_ranges(frame, r.read_ranges())?,
            }))
        })(),
        fb::Payload::ClientCommitReply => envelope
            .payload_as_client_commit_reply()
            .ok_or_else(unknown)
            .map(|r| {
                Message::ClientCommitReply(ClientCommitReply {
                    version: Version(r.version()),
                })
            }),
        _ => return None,
    };
    Some(message)
}
