//! Wire conversion of the workers' and the cluster controller's messages.
//! Addresses travel as text; one that does not parse refuses the message.

use std::net::SocketAddr;

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use crate::generated::rpc as fb;
use crate::rpc::{
    ClusterInfoReply, DecodeError, HostedRole, Message, Recruit, RecruitRequest,
    RegisterWorkerRequest, RoleKind, WorkerStatusReply,
};
use crate::types::{ProxyId, Version};

type Encoded = (fb::Payload, WIPOffset<UnionWIPOffset>);

fn kind_to_wire(kind: RoleKind) -> fb::RoleKind {
    match kind {
        RoleKind::TLog => fb::RoleKind::TLog,
        RoleKind::Sequencer => fb::RoleKind::Sequencer,
        RoleKind::Proxy => fb::RoleKind::Proxy,
    }
}

fn addresses<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    list: &[SocketAddr],
) -> WIPOffset<Vector<'a, ForwardsUOffset<&'a str>>> {
    let texts: Vec<_> = list
        .iter()
        .map(|a| fbb.create_string(&a.to_string()))
        .collect();
    fbb.create_vector(&texts)
}

fn roles<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    list: &[HostedRole],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::HostedRole<'a>>>> {
    let roles: Vec<_> = list
        .iter()
        .map(|r| {
            let args = fb::HostedRoleArgs {
                kind: kind_to_wire(r.kind),
                epoch: r.epoch,
                id: r.id,
                address: Some(fbb.create_string(&r.address.to_string())),
                problem: r.problem.as_deref().map(|p| fbb.create_string(p)),
            };
            fb::HostedRole::create(fbb, &args)
        })
        .collect();
    fbb.create_vector(&roles)
}

pub(super) fn register_worker(
    fbb: &mut FlatBufferBuilder<'_>,
    r: &RegisterWorkerRequest,
) -> Encoded {
    let address = Some(fbb.create_string(&r.address.to_string()));
    let roles = Some(roles(fbb, &r.roles));
    let t =
        fb::RegisterWorkerRequest::create(fbb, &fb::RegisterWorkerRequestArgs { address, roles });
    (fb::Payload::RegisterWorkerRequest, t.as_union_value())
}

pub(super) fn register_worker_reply(fbb: &mut FlatBufferBuilder<'_>) -> Encoded {
    let t = fb::RegisterWorkerReply::create(fbb, &fb::RegisterWorkerReplyArgs {});
    (fb::Payload::RegisterWorkerReply, t.as_union_value())
}

pub(super) fn recruit(fbb: &mut FlatBufferBuilder<'_>, r: &RecruitRequest) -> Encoded {
    let mut args = fb::RecruitRequestArgs {
        epoch: r.epoch,
        kind: kind_to_wire(r.role.kind()),
        ..Default::default()
    };
    match &r.role {
        Recruit::TLog { index, begin } => {
            args.id = *index;
            args.version = begin.0;
        }
        Recruit::Sequencer {
            start_after,
            floor,
            proxies,
        } => {
            args.version = start_after.0;
            args.floor = floor.0;
            let ids: Vec<u64> = proxies.iter().map(|p| p.0).collect();
            args.proxies = Some(fbb.create_vector(&ids));
        }
        Recruit::Proxy {
            id,
            sequencer,
            tlogs,
        } => {
            args.id = id.0;
            args.sequencer = Some(fbb.create_string(&sequencer.to_string()));
            args.tlogs = Some(addresses(fbb, tlogs));
        }
    }
    let t = fb::RecruitRequest::create(fbb, &args);
    (fb::Payload::RecruitRequest, t.as_union_value())
}

pub(super) fn recruit_reply(fbb: &mut FlatBufferBuilder<'_>, address: &SocketAddr) -> Encoded {
    let address = Some(fbb.create_string(&address.to_string()));
    let t = fb::RecruitReply::create(fbb, &fb::RecruitReplyArgs { address });
    (fb::Payload::RecruitReply, t.as_union_value())
}

pub(super) fn open_commits(fbb: &mut FlatBufferBuilder<'_>, epoch: u64) -> Encoded {
    let t = fb::OpenCommitsRequest::create(fbb, &fb::OpenCommitsRequestArgs { epoch });
    (fb::Payload::OpenCommitsRequest, t.as_union_value())
}

pub(super) fn open_commits_reply(fbb: &mut FlatBufferBuilder<'_>) -> Encoded {
    let t = fb::OpenCommitsReply::create(fbb, &fb::OpenCommitsReplyArgs {});
    (fb::Payload::OpenCommitsReply, t.as_union_value())
}

pub(super) fn get_cluster_info(fbb: &mut FlatBufferBuilder<'_>) -> Encoded {
    let t = fb::GetClusterInfoRequest::create(fbb, &fb::GetClusterInfoRequestArgs {});
    (fb::Payload::GetClusterInfoRequest, t.as_union_value())
}

pub(super) fn cluster_info(fbb: &mut FlatBufferBuilder<'_>, r: &ClusterInfoReply) -> Encoded {
    let sequencer = r.sequencer.map(|s| fbb.create_string(&s.to_string()));
    let proxies = Some(addresses(fbb, &r.proxies));
    let tlogs = Some(addresses(fbb, &r.tlogs));
    let excluded_servers = Some(fbb.create_vector(&r.excluded_servers));
    let args = fb::ClusterInfoReplyArgs {
        epoch: r.epoch,
        sequencer,
        proxies,
        tlogs,
        excluded_servers,
    };
    let t = fb::ClusterInfoReply::create(fbb, &args);
    (fb::Payload::ClusterInfoReply, t.as_union_value())
}

pub(super) fn worker_status(fbb: &mut FlatBufferBuilder<'_>, r: &WorkerStatusReply) -> Encoded {
    let address = Some(fbb.create_string(&r.address.to_string()));
    let roles = Some(roles(fbb, &r.roles));
    let controller = r.controller.map(|c| fbb.create_string(&c.to_string()));
    let args = fb::WorkerStatusReplyArgs {
        address,
        roles,
        controller,
    };
    let t = fb::WorkerStatusReply::create(fbb, &args);
    (fb::Payload::WorkerStatusReply, t.as_union_value())
}

/// Decodes these payloads; `None` for any other payload type.
pub(super) fn decode(envelope: &fb::Envelope<'_>) -> Option<Result<Message, DecodeError>> {
    let request_id = envelope.request_id();
    let unknown = || DecodeError::UnknownMessage { request_id };
    let invalid = |reason: String| DecodeError::InvalidContent { request_id, reason };
    let address = |text: Option<&str>, what: &str| -> Result<SocketAddr, DecodeError> {
        let text = text.unwrap_or_default();
        text.parse()
            .map_err(|_| invalid(format!("{what} {text:?} is not an address")))
    };
    let address_list = |list: Option<Vector<'_, ForwardsUOffset<&str>>>,
                        what: &str|
     -> Result<Vec<SocketAddr>, DecodeError> {
        list.map(|l| l.iter().map(|a| address(Some(a), what)).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    };
    let kind = |k: fb::RoleKind| match k {
        fb::RoleKind::TLog => Ok(RoleKind::TLog),
        fb::RoleKind::Sequencer => Ok(RoleKind::Sequencer),
        fb::RoleKind::Proxy => Ok(RoleKind::Proxy),
        other => Err(invalid(format!("unknown role kind {}", other.0))),
    };
    let role_list = |list: Option<Vector<'_, ForwardsUOffset<fb::HostedRole<'_>>>>| -> Result<Vec<HostedRole>, DecodeError> {
        list.map(|l| {
            l.iter()
                .map(|r| {
                    Ok(HostedRole {
                        kind: kind(r.kind())?,
                        epoch: r.epoch(),
                        id: r.id(),
                        address: address(r.address(), "role address")?,
                        problem: r.problem().map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_else(|| Ok(Vec::new()))
    };
    let message = match envelope.payload_type() {
        fb::Payload::RegisterWorkerRequest => (|| {
            let r = envelope
                .payload_as_register_worker_request()
                .ok_or_else(unknown)?;
            Ok(Message::RegisterWorker(RegisterWorkerRequest {
                address: address(r.address(), "worker address")?,
                roles: role_list(r.roles())?,
            }))
        })(),
        fb::Payload::RegisterWorkerReply => Ok(Message::RegisterWorkerReply),
        fb::Payload::RecruitRequest => (|| {
            let r = envelope.payload_as_recruit_request().ok_or_else(unknown)?;
            let role = match kind(r.kind())? {
                RoleKind::TLog => Recruit::TLog {
                    index: r.id(),
                    begin: Version(r.version()),
                },
                RoleKind::Sequencer => Recruit::Sequencer {
                    start_after: Version(r.version()),
                    floor: Version(r.floor()),
                    proxies: r
                        .proxies()
                        .map(|p| p.iter().map(ProxyId).collect())
                        .unwrap_or_default(),
                },
                RoleKind::Proxy => Recruit::Proxy {
                    id: ProxyId(r.id()),
                    sequencer: address(r.sequencer(), "sequencer")?,
                    tlogs: address_list(r.tlogs(), "tlog")?,
                },
            };
            Ok(Message::Recruit(RecruitRequest {
                epoch: r.epoch(),
                role,
            }))
        })(),
        fb::Payload::RecruitReply => (|| {
            let r = envelope.payload_as_recruit_reply().ok_or_else(unknown)?;
            Ok(Message::RecruitReply(address(
                r.address(),
                "recruited role",
            )?))
        })(),
        fb::Payload::OpenCommitsRequest => envelope
            .payload_as_open_commits_request()
            .ok_or_else(unknown)
            .map(|r| Message::OpenCommits(r.epoch())),
        fb::Payload::OpenCommitsReply => Ok(Message::OpenCommitsReply),
        fb::Payload::GetClusterInfoRequest => Ok(Message::GetClusterInfo),
        fb::Payload::ClusterInfoReply => (|| {
            let r = envelope
                .payload_as_cluster_info_reply()
                .ok_or_else(unknown)?;
            Ok(Message::ClusterInfo(ClusterInfoReply {
                epoch: r.epoch(),
                sequencer: r
                    .sequencer()
                    .map(|s| address(Some(s), "sequencer"))
                    .transpose()?,
                proxies: address_list(r.proxies(), "proxy")?,
                tlogs: address_list(r.tlogs(), "tlog")?,
                excluded_servers: r
                    .excluded_servers()
                    .map(|ids| ids.iter().collect())
                    .unwrap_or_default(),
            }))
        })(),
        fb::Payload::WorkerStatusReply => (|| {
            let r = envelope
                .payload_as_worker_status_reply()
                .ok_or_else(unknown)?;
            Ok(Message::WorkerStatus(WorkerStatusReply {
                address: address(r.address(), "worker address")?,
                roles: role_list(r.roles())?,
                controller: r
                    .controller()
                    .map(|c| address(Some(c), "controller"))
                    .transpose()?,
            }))
        })(),
        _ => return None,
    };
    Some(message)
}

/// Text the messages carry, for the encoder's estimate.
pub(super) fn payload_len(message: &Message) -> usize {
    const ADDRESS: usize = 48;
    let roles = |roles: &[HostedRole]| -> usize {
        roles
            .iter()
            .map(|r| ADDRESS + 64 + r.problem.as_ref().map_or(0, String::len))
            .sum()
    };
    match message {
        Message::RegisterWorker(r) => ADDRESS + roles(&r.roles),
        Message::WorkerStatus(r) => ADDRESS + roles(&r.roles),
        Message::Recruit(RecruitRequest {
            role: Recruit::Proxy { tlogs, .. },
            ..
        }) => ADDRESS * (1 + tlogs.len()),
        Message::Recruit(RecruitRequest {
            role: Recruit::Sequencer { proxies, .. },
            ..
        }) => proxies.len() * 8,
        Message::ClusterInfo(r) => ADDRESS * (1 + r.proxies.len() + r.tlogs.len()),
        _ => 0,
    }
}
