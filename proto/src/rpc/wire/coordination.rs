//! Wire conversion of the coordinators' messages: openraft's messages as
//! opaque bytes, the coordinated registers, and a coordinator's status.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, Vector, WIPOffset};

use super::optional_bytes;
use crate::generated::rpc as fb;
use crate::rpc::{
    CoordinatedRegister, CoordinatedReply, CoordinatedWatchRequest, CoordinatedWriteRequest,
    CoordinatorStatusReply, DecodeError, Message, RecoveryReport, WatchedProcess, WorkerReport,
};

type Encoded = (fb::Payload, WIPOffset<UnionWIPOffset>);

pub(super) fn raft(fbb: &mut FlatBufferBuilder<'_>, payload: &Bytes) -> Encoded {
    let payload = Some(fbb.create_vector(payload));
    let t = fb::RaftRequest::create(fbb, &fb::RaftRequestArgs { payload });
    (fb::Payload::RaftRequest, t.as_union_value())
}

pub(super) fn raft_reply(fbb: &mut FlatBufferBuilder<'_>, payload: &Bytes) -> Encoded {
    let payload = Some(fbb.create_vector(payload));
    let t = fb::RaftReply::create(fbb, &fb::RaftReplyArgs { payload });
    (fb::Payload::RaftReply, t.as_union_value())
}

pub(super) fn read(fbb: &mut FlatBufferBuilder<'_>, name: &str) -> Encoded {
    let name = Some(fbb.create_string(name));
    let t = fb::CoordinatedReadRequest::create(fbb, &fb::CoordinatedReadRequestArgs { name });
    (fb::Payload::CoordinatedReadRequest, t.as_union_value())
}

pub(super) fn watch(fbb: &mut FlatBufferBuilder<'_>, r: &CoordinatedWatchRequest) -> Encoded {
    let name = Some(fbb.create_string(&r.name));
    let args = fb::CoordinatedWatchRequestArgs {
        name,
        seen_revision: r.seen_revision,
        wait_ms: r.wait_ms,
    };
    let t = fb::CoordinatedWatchRequest::create(fbb, &args);
    (fb::Payload::CoordinatedWatchRequest, t.as_union_value())
}

pub(super) fn write(fbb: &mut FlatBufferBuilder<'_>, r: &CoordinatedWriteRequest) -> Encoded {
    let name = Some(fbb.create_string(&r.name));
    let value = Some(fbb.create_vector(&r.value));
    let args = fb::CoordinatedWriteRequestArgs {
        name,
        expected_revision: r.expected_revision,
        value,
    };
    let t = fb::CoordinatedWriteRequest::create(fbb, &args);
    (fb::Payload::CoordinatedWriteRequest, t.as_union_value())
}

pub(super) fn reply(fbb: &mut FlatBufferBuilder<'_>, r: &CoordinatedReply) -> Encoded {
    let register = Some(register(fbb, &r.register));
    let args = fb::CoordinatedReplyArgs {
        register,
        written: r.written,
    };
    let t = fb::CoordinatedReply::create(fbb, &args);
    (fb::Payload::CoordinatedReply, t.as_union_value())
}

pub(super) fn status(fbb: &mut FlatBufferBuilder<'_>, r: &CoordinatorStatusReply) -> Encoded {
    let problem = r.problem.as_deref().map(|why| fbb.create_string(why));
    let watched: Vec<_> = r
        .watched
        .iter()
        .map(|w| {
            let args = fb::WatchedProcessArgs {
                role: Some(fbb.create_string(&w.role)),
                id: w.id,
                address: Some(fbb.create_string(&w.address)),
                failed: w.failed_for_ms.is_some(),
                failed_for_ms: w.failed_for_ms.unwrap_or(0),
            };
            fb::WatchedProcess::create(fbb, &args)
        })
        .collect();
    let watched = Some(fbb.create_vector(&watched));
    let recovery = r
        .recovery
        .as_ref()
        .map(|report| recovery_report(fbb, report));
    let args = fb::CoordinatorStatusReplyArgs {
        id: r.id,
        leader: r.leader.unwrap_or(0),
        term: r.term,
        last_applied: r.last_applied,
        problem,
        controller: r.controller.unwrap_or(0),
        watched,
        recovery,
    };
    let t = fb::CoordinatorStatusReply::create(fbb, &args);
    (fb::Payload::CoordinatorStatusReply, t.as_union_value())
}

fn recovery_report<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &RecoveryReport,
) -> WIPOffset<fb::RecoveryReport<'a>> {
    let recovering = r.recovering.as_deref().map(|s| fbb.create_string(s));
    let last_failure = r.last_failure.as_deref().map(|s| fbb.create_string(s));
    let phases: Vec<_> = r
        .phases
        .iter()
        .map(|(name, ms)| {
            let name = Some(fbb.create_string(name));
            fb::PhaseTiming::create(fbb, &fb::PhaseTimingArgs { name, ms: *ms })
        })
        .collect();
    let phases = Some(fbb.create_vector(&phases));
    let workers: Vec<_> = r
        .workers
        .iter()
        .map(|w| {
            let address = Some(fbb.create_string(&w.address));
            let roles: Vec<_> = w.roles.iter().map(|role| fbb.create_string(role)).collect();
            let roles = Some(fbb.create_vector(&roles));
            let args = fb::WorkerReportArgs {
                address,
                silent_ms: w.silent_ms,
                roles,
            };
            fb::WorkerReport::create(fbb, &args)
        })
        .collect();
    let workers = Some(fbb.create_vector(&workers));
    let generations: Vec<_> = r.generations.iter().map(|g| fbb.create_string(g)).collect();
    let generations = Some(fbb.create_vector(&generations));
    let distribution: Vec<_> = r
        .distribution
        .iter()
        .map(|g| fbb.create_string(g))
        .collect();
    let distribution = Some(fbb.create_vector(&distribution));
    let distribution_problem = r
        .distribution_problem
        .as_deref()
        .map(|why| fbb.create_string(why));
    let configuration_problem = r
        .configuration_problem
        .as_deref()
        .map(|why| fbb.create_string(why));
    let args = fb::RecoveryReportArgs {
        epoch: r.epoch,
        recovering,
        phases,
        last_failure,
        workers,
        generations,
        distribution,
        distribution_problem,
        configuration_problem,
    };
    fb::RecoveryReport::create(fbb, &args)
}

fn decode_recovery_report(r: fb::RecoveryReport<'_>) -> RecoveryReport {
    RecoveryReport {
        epoch: r.epoch(),
        recovering: r.recovering().map(str::to_owned),
        phases: r
            .phases()
            .map(|list| {
                list.iter()
                    .map(|p| (p.name().unwrap_or_default().to_owned(), p.ms()))
                    .collect()
            })
            .unwrap_or_default(),
        last_failure: r.last_failure().map(str::to_owned),
        workers: r
            .workers()
            .map(|list| {
                list.iter()
                    .map(|w| WorkerReport {
                        address: w.address().unwrap_or_default().to_owned(),
                        silent_ms: w.silent_ms(),
                        roles: w
                            .roles()
                            .map(|roles| roles.iter().map(str::to_owned).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        generations: r
            .generations()
            .map(|list| list.iter().map(str::to_owned).collect())
            .unwrap_or_default(),
        distribution: r
            .distribution()
            .map(|list| list.iter().map(str::to_owned).collect())
            .unwrap_or_default(),
        distribution_problem: r.distribution_problem().map(str::to_owned),
        configuration_problem: r.configuration_problem().map(str::to_owned),
    }
}

fn register<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &CoordinatedRegister,
) -> WIPOffset<fb::CoordinatedRegister<'a>> {
    let name = Some(fbb.create_string(&r.name));
    let value = Some(fbb.create_vector(&r.value));
    let args = fb::CoordinatedRegisterArgs {
        name,
        revision: r.revision,
        value,
    };
    fb::CoordinatedRegister::create(fbb, &args)
}

/// The bytes the coordinators' messages carry, for the encoder's estimate.
pub(super) fn payload_len(message: &Message) -> usize {
    match message {
        Message::Raft(payload) | Message::RaftReply(payload) => payload.len(),
        Message::CoordinatedRead(name) => name.len(),
        Message::CoordinatedWatch(r) => r.name.len(),
        Message::CoordinatedWrite(r) => r.name.len() + r.value.len(),
        Message::CoordinatedReply(r) => r.register.name.len() + r.register.value.len(),
        _ => 0,
    }
}

/// Decodes the coordinators' payloads; `None` for any other payload type.
pub(super) fn decode(
    frame: &Bytes,
    envelope: &fb::Envelope<'_>,
) -> Option<Result<Message, DecodeError>> {
    let request_id = envelope.request_id();
    let unknown = || DecodeError::UnknownMessage { request_id };
    let bytes = |b: Option<Vector<'_, u8>>| optional_bytes(frame, b);
    let message = match envelope.payload_type() {
        fb::Payload::RaftRequest => (|| {
            let r = envelope.payload_as_raft_request().ok_or_else(unknown)?;
            Ok(Message::Raft(bytes(r.payload())?))
        })(),
        fb::Payload::RaftReply => (|| {
            let r = envelope.payload_as_raft_reply().ok_or_else(unknown)?;
            Ok(Message::RaftReply(bytes(r.payload())?))
        })(),
        fb::Payload::CoordinatedReadRequest => (|| {
            let r = envelope
                .payload_as_coordinated_read_request()
                .ok_or_else(unknown)?;
            Ok(Message::CoordinatedRead(
                r.name().unwrap_or_default().to_owned(),
            ))
        })(),
        fb::Payload::CoordinatedWatchRequest => (|| {
            let r = envelope
                .payload_as_coordinated_watch_request()
                .ok_or_else(unknown)?;
            Ok(Message::CoordinatedWatch(CoordinatedWatchRequest {
                name: r.name().unwrap_or_default().to_owned(),
                seen_revision: r.seen_revision(),
                wait_ms: r.wait_ms(),
            }))
        })(),
        fb::Payload::CoordinatedWriteRequest => (|| {
            let r = envelope
                .payload_as_coordinated_write_request()
                .ok_or_else(unknown)?;
            Ok(Message::CoordinatedWrite(CoordinatedWriteRequest {
                name: r.name().unwrap_or_default().to_owned(),
                expected_revision: r.expected_revision(),
                value: bytes(r.value())?,
            }))
        })(),
        fb::Payload::CoordinatedReply => (|| {
            let r = envelope
                .payload_as_coordinated_reply()
                .ok_or_else(unknown)?;
            let register = match r.register() {
                Some(g) => CoordinatedRegister {
                    name: g.name().unwrap_or_default().to_owned(),
                    revision: g.revision(),
                    value: bytes(g.value())?,
                },
                None => CoordinatedRegister::default(),
            };
            Ok(Message::CoordinatedReply(CoordinatedReply {
                register,
                written: r.written(),
            }))
        })(),
        fb::Payload::CoordinatorStatusReply => envelope
            .payload_as_coordinator_status_reply()
            .ok_or_else(unknown)
            .map(|r| {
                Message::CoordinatorStatus(CoordinatorStatusReply {
                    id: r.id(),
                    leader: (r.leader() != 0).then(|| r.leader()),
                    term: r.term(),
                    last_applied: r.last_applied(),
                    problem: r.problem().map(str::to_owned),
                    controller: (r.controller() != 0).then(|| r.controller()),
                    watched: r
                        .watched()
                        .map(|list| {
                            list.iter()
                                .map(|w| WatchedProcess {
                                    role: w.role().unwrap_or_default().to_owned(),
                                    id: w.id(),
                                    address: w.address().unwrap_or_default().to_owned(),
                                    failed_for_ms: w.failed().then(|| w.failed_for_ms()),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    recovery: r.recovery().map(decode_recovery_report),
                })
            }),
        _ => return None,
    };
    Some(message)
}
