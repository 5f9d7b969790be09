//! Round trips of every message kind and decoding of hostile buffers.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;

use super::*;
use crate::generated::rpc as fb;

fn block(team: u64, data: &'static [u8]) -> TeamBlockData {
    TeamBlockData {
        team: StorageTeamId(team),
        data: Bytes::from_static(data),
    }
}

/// A block large enough to travel in the frame's appendix.
fn large_block(team: u64, len: usize) -> TeamBlockData {
    TeamBlockData {
        team: StorageTeamId(team),
        data: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

fn set(key: &'static [u8], value: &'static [u8]) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from_static(key),
        value: Bytes::from_static(value),
    }
}

fn clear(begin: &'static [u8], end: &'static [u8]) -> Mutation {
    Mutation::ClearRange {
        begin: Bytes::from_static(begin),
        end: Bytes::from_static(end),
    }
}

/// One message of every kind, with every field set to something other than
/// its default so that a field lost on the way shows up.
fn every_message() -> Vec<Message> {
    vec![
        Message::TLogCommit(TLogCommitRequest {
            prev_version: Version(10),
            version: Version(20),
            known_committed_version: Version(5),
            teams: vec![
                block(1, b"first"),
                block(2, b""),
                large_block(4, 3000),
                block(u64::MAX, b"\x00\xff"),
                large_block(5, 2048),
            ],
        }),
        Message::TLogCommit(TLogCommitRequest {
            prev_version: Version(0),
            version: Version(1),
            known_committed_version: Version(0),
            teams: vec![],
        }),
        Message::TLogCommitReply(TLogCommitReply {
            version: Version(20),
        }),
        Message::Peek(PeekRequest {
            team: StorageTeamId(3),
            begin: Version(77),
            max_bytes: 1 << 20,
            timeout_ms: 500,
        }),
        Message::PeekReply(PeekReply {
            blocks: vec![block(3, b"abc"), large_block(3, 5000), block(3, b"defg")],
            end: Version(100),
            popped: Version(50),
            max_known_version: Version(120),
            known_committed_version: Version(110),
            end_of_stream: true,
        }),
        Message::Pop(PopRequest {
            team: StorageTeamId(3),
            server: StorageServerId(9),
            version: Version(60),
        }),
        Message::PopReply,
        Message::Lock,
        Message::LockReply(LockReply {
            end_version: Version(99),
            known_committed_version: Version(98),
        }),
        Message::RegisterTeam(RegisterTeamRequest {
            team: StorageTeamId(4),
            servers: vec![StorageServerId(1), StorageServerId(2), StorageServerId(3)],
        }),
        Message::RegisterTeamReply,
        Message::Status,
        Message::TLogStatus(TLogStatusReply {
            durable_version: Version(1000),
            known_committed_version: Version(990),
            locked: true,
            poisoned: true,
            memory_bytes: 123,
            memory_budget: 456,
            disk_bytes: 789,
            truncation_blocker: Some(StorageTeamId(0)),
            teams: vec![
                TeamStatus {
                    team: StorageTeamId(1),
                    popped: Version(10),
                    bytes: 11,
                    servers: vec![StorageServerId(5)],
                },
                TeamStatus {
                    team: StorageTeamId(2),
                    popped: Version(20),
                    bytes: 0,
                    servers: vec![],
                },
            ],
            stalled: Some("no space for segment 7".into()),
        }),
        Message::TLogStatus(TLogStatusReply {
            durable_version: Version(1),
            known_committed_version: Version(1),
            locked: false,
            poisoned: false,
            memory_bytes: 0,
            memory_budget: 0,
            disk_bytes: 0,
            truncation_blocker: None,
            teams: vec![],
            stalled: None,
        }),
        Message::Error(ErrorReply::new(ErrorCode::TLogStopped, "locked at 99")),
        Message::Error(ErrorReply::new(ErrorCode::Timeout, "")),
        Message::Error(
            ErrorReply::new(ErrorCode::PeekBeforePopped, "popped").at_version(Version(77)),
        ),
        Message::Error(ErrorReply::new(
            ErrorCode::CommitUnknownResult,
            "tlog-2 failed",
        )),
        Message::Sequence(SequenceRequest {
            proxy: ProxyId(1),
            request_num: 77,
            transactions: vec![
                ResolveTransaction {
                    read_version: Version(9),
                    read_ranges: vec![KeyRange {
                        begin: Bytes::from_static(b"a"),
                        end: Bytes::from_static(b"b"),
                    }],
                    write_ranges: vec![],
                    metadata: vec![set(b"\xff/keyServers/a", b"1")],
                },
                ResolveTransaction::default(),
            ],
            committed: Version(14),
        }),
        Message::SequenceReply(SequenceReply {
            versions: GetCommitVersionReply {
                prev_version: Version(10),
                version: Version(15),
            },
            resolved: Ok(ResolveReply {
                metadata: vec![VersionedMetadata {
                    version: Version(12),
                    mutations: vec![clear(b"\xff/x", b"\xff/y"), set(b"\xffk", b"")],
                }],
                conflicts: vec![false, true],
            }),
        }),
        Message::SequenceReply(SequenceReply {
            versions: GetCommitVersionReply {
                prev_version: Version(15),
                version: Version(16),
            },
            resolved: Err(ErrorReply::new(
                ErrorCode::MissingPredecessor,
                "waited for 15",
            )),
        }),
        Message::ReportCommitted(ReportCommittedRequest {
            proxy: ProxyId(3),
            version: Version(15),
        }),
        Message::ReportCommittedReply,
        Message::GetReadVersion,
        Message::GetReadVersionReply(GetReadVersionReply {
            version: Version(14),
        }),
        Message::ClientCommit(ClientCommitRequest {
            mutations: vec![
                set(b"k", b"v"),
                clear(b"a", b"c"),
                Mutation::AppendIfFits {
                    key: Bytes::from_static(b"k"),
                    suffix: Bytes::from_static(b"+"),
                },
            ],
            allow_system_keys: true,
            read_version: Version(12),
            read_ranges: vec![KeyRange {
                begin: Bytes::from_static(b"\xff/keyServers/a"),
                end: Bytes::from_static(b"\xff/keyServers/b"),
            }],
        }),
        Message::ClientCommitReply(ClientCommitReply {
            version: Version(15),
        }),
        Message::GetValue(GetValueRequest {
            key: Bytes::from_static(b"k"),
            version: Version(15),
        }),
        Message::GetValueReply(GetValueReply {
            value: Some(Bytes::from_static(b"v")),
        }),
        Message::GetValueReply(GetValueReply {
            value: Some(Bytes::new()),
        }),
        Message::GetValueReply(GetValueReply { value: None }),
        Message::GetRange(GetRangeRequest {
            begin: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"z"),
            limit: 10,
            reverse: true,
            version: Version(15),
            copy: false,
        }),
        Message::GetRange(GetRangeRequest {
            begin: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"z"),
            limit: 10,
            reverse: false,
            version: Version(15),
            copy: true,
        }),
        Message::GetRangeReply(GetRangeReply {
            pairs: vec![
                (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                (Bytes::from_static(b"b"), Bytes::new()),
            ],
            more: true,
        }),
        Message::StorageStatus(StorageStatusReply {
            server: StorageServerId(7),
            applied_version: Version(20),
            durable_version: Version(10),
            oldest_readable_version: Version(10),
            committed_version: Version(21),
            window_bytes: 4096,
            teams: vec![StorageTeamId(1), StorageTeamId(3)],
            stopped: None,
            stalled: Some("no space left on the disk".into()),
            rebuilding: Some("team-1 from ss-101: 12 pairs".into()),
            adding: vec![
                AddingRangeStatus {
                    begin: Bytes::from_static(b"m"),
                    end: Bytes::from_static(b"p"),
                    installed_to: Bytes::from_static(b"n\x00"),
                    pairs_copied: 12,
                    bytes_copied: 3000,
                    ready: false,
                    problem: Some("ss-200: connection refused".into()),
                    idle_ms: 4_500,
                    size_left: Some(1 << 33),
                    size_per_sec: 40 << 20,
                },
                AddingRangeStatus {
                    begin: Bytes::from_static(b"p"),
                    end: Bytes::from_static(b"\xff"),
                    installed_to: Bytes::from_static(b"\xff"),
                    pairs_copied: 0,
                    bytes_copied: 0,
                    ready: true,
                    problem: None,
                    idle_ms: 0,
                    size_left: None,
                    size_per_sec: 0,
                },
            ],
            following_epoch: 3,
        }),
        Message::StorageStatus(StorageStatusReply {
            server: StorageServerId(8),
            applied_version: Version(20),
            durable_version: Version(10),
            oldest_readable_version: Version(10),
            committed_version: Version(21),
            window_bytes: 0,
            teams: Vec::new(),
            stopped: Some("disk full".into()),
            stalled: None,
            rebuilding: None,
            adding: Vec::new(),
            following_epoch: 0,
        }),
        Message::GetKeyLocation(GetKeyLocationRequest {
            key: Bytes::from_static(b"k"),
            version: Version(15),
        }),
        Message::GetKeyLocationReply(GetKeyLocationReply {
            begin: Bytes::from_static(b"h"),
            end: Bytes::from_static(b"p"),
            teams: vec![(
                StorageTeamId(2),
                vec![StorageServerId(200), StorageServerId(201)],
            )],
            moving_to: vec![StorageTeamId(3)],
            as_of: Version(44),
        }),
        Message::SequencerStatus(SequencerStatusReply {
            last_version: Version(40),
            committed_version: Version(38),
        }),
        Message::ProxyStatus(ProxyStatusReply {
            proxy: ProxyId(2),
            known_committed_version: Version(38),
            commits: 17,
            throttling: Some("team 3: 2 GiB not yet durable on its servers".into()),
            delaying: Some("at most 1.5 MiB/s: team 4 has 300 MiB not durable".into()),
        }),
        Message::Raft(Bytes::from_static(b"{\"vote\":1}")),
        Message::RaftReply(Bytes::from_static(b"{\"granted\":true}")),
        Message::CoordinatedRead("cluster".into()),
        Message::CoordinatedWatch(CoordinatedWatchRequest {
            name: "core_state".into(),
            seen_revision: 12,
            wait_ms: 2_000,
        }),
        Message::CoordinatedWrite(CoordinatedWriteRequest {
            name: "cluster".into(),
            expected_revision: 4,
            value: Bytes::from_static(b"epoch 5"),
        }),
        Message::CoordinatedReply(CoordinatedReply {
            register: CoordinatedRegister {
                name: "cluster".into(),
                revision: 5,
                value: Bytes::from_static(b"epoch 5"),
            },
            written: true,
        }),
        Message::CoordinatorStatus(CoordinatorStatusReply {
            id: 2,
            leader: Some(1),
            term: 3,
            last_applied: 17,
            problem: None,
            controller: Some(2),
            watched: vec![
                WatchedProcess {
                    role: "tlog".into(),
                    id: 1,
                    address: "127.0.0.1:4521".into(),
                    failed_for_ms: Some(700),
                },
                WatchedProcess {
                    role: "proxy".into(),
                    id: 2,
                    address: "127.0.0.1:4511".into(),
                    failed_for_ms: None,
                },
            ],
            recovery: None,
        }),
        Message::CoordinatorStatus(CoordinatorStatusReply {
            id: 3,
            leader: None,
            term: 4,
            last_applied: 0,
            problem: Some("no leader".into()),
            controller: None,
            watched: Vec::new(),
            recovery: Some(RecoveryReport {
                epoch: 7,
                recovering: Some("locking tlogs of generation 6".into()),
                phases: vec![
                    ("reading_core_state".into(), 3),
                    ("locking_tlogs".into(), 12),
                ],
                last_failure: None,
                workers: vec![WorkerReport {
                    address: "127.0.0.1:4600".into(),
                    silent_ms: 40,
                    roles: vec!["tlog 7/0".into(), "proxy 7/1".into()],
                }],
                generations: vec!["generation 7: versions (900, …], 3 TLogs, current".into()],
                distribution: vec!["3 shards on 2 teams".into()],
                distribution_problem: Some(
                    "the data distributor's last 3 moves did not finish: deadline".into(),
                ),
                configuration_problem: Some(
                    "the configuration excludes servers {100}, which leaves team-1 with no server"
                        .into(),
                ),
            }),
        }),
        Message::RegisterWorker(RegisterWorkerRequest {
            address: addr(4600),
            roles: vec![
                HostedRole {
                    kind: RoleKind::TLog,
                    epoch: 7,
                    id: 2,
                    address: addr(40001),
                    problem: Some("poisoned".into()),
                },
                HostedRole {
                    kind: RoleKind::Proxy,
                    epoch: 7,
                    id: 1,
                    address: "[::1]:40002".parse().unwrap(),
                    problem: None,
                },
            ],
        }),
        Message::RegisterWorkerReply,
        Message::Recruit(RecruitRequest {
            epoch: 8,
            role: Recruit::TLog {
                index: 2,
                begin: Version(900),
            },
        }),
        Message::Recruit(RecruitRequest {
            epoch: 8,
            role: Recruit::Sequencer {
                start_after: Version(900),
                floor: Version(20_000_901),
                proxies: vec![ProxyId(1), ProxyId(2)],
            },
        }),
        Message::Recruit(RecruitRequest {
            epoch: 8,
            role: Recruit::Proxy {
                id: ProxyId(2),
                sequencer: addr(40010),
                tlogs: vec![addr(40011), addr(40012)],
            },
        }),
        Message::RecruitReply(addr(40013)),
        Message::OpenCommits(8),
        Message::OpenCommitsReply,
        Message::GetClusterInfo,
        Message::ClusterInfo(ClusterInfoReply {
            epoch: 8,
            sequencer: Some(addr(40010)),
            proxies: vec![addr(40014)],
            tlogs: vec![addr(40011), addr(40012)],
            excluded_servers: vec![102, 201],
        }),
        Message::ClusterInfo(ClusterInfoReply {
            epoch: 0,
            sequencer: None,
            proxies: Vec::new(),
            tlogs: Vec::new(),
            excluded_servers: Vec::new(),
        }),
        Message::WorkerStatus(WorkerStatusReply {
            address: addr(4600),
            roles: Vec::new(),
            controller: Some(addr(4490)),
        }),
        Message::WorkerStatus(WorkerStatusReply {
            address: addr(4601),
            roles: Vec::new(),
            controller: None,
        }),
        Message::ShardMetrics(vec![
            KeyRange {
                begin: Bytes::new(),
                end: Bytes::from_static(b"m"),
            },
            KeyRange {
                begin: Bytes::from_static(b"m"),
                end: Bytes::from_static(b"\xff"),
            },
        ]),
        Message::ShardMetricsReply(vec![
            ShardMetrics {
                bytes: 115_000_000,
                write_ops_per_sec: 4_000,
                write_bytes_per_sec: 500_000,
                split_by_bytes: Some(Bytes::from_static(b"g")),
                split_by_writes: Some(Bytes::new()),
            },
            ShardMetrics::default(),
        ]),
    ]
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn every_message_kind_round_trips() {
    for (i, message) in every_message().into_iter().enumerate() {
        let envelope = Envelope {
            request_id: i as u64 * 1_000_003,
            message,
        };
        let decoded = Envelope::decode(envelope.encode().into_bytes()).unwrap();
        assert_eq!(decoded, envelope);
    }
}

#[test]
fn decoded_blocks_are_slices_of_the_frame() {
    let envelope = Envelope {
        request_id: 1,
        message: Message::PeekReply(PeekReply {
            blocks: vec![block(3, b"some block bytes")],
            end: Version(1),
            popped: Version(0),
            max_known_version: Version(1),
            known_committed_version: Version(0),
            end_of_stream: false,
        }),
    };
    let frame = envelope.encode().into_bytes();
    let range = frame.as_ptr_range();
    let Ok(Envelope {
        message: Message::PeekReply(reply),
        ..
    }) = Envelope::decode(frame.clone())
    else {
        panic!("not a peek reply");
    };
    assert_eq!(
        reply.blocks[0].data,
        Bytes::from_static(b"some block bytes")
    );
    assert!(range.contains(&reply.blocks[0].data.as_ptr()));
}

#[test]
fn team_block_data_converts_to_and_from_a_parsed_block() {
    let mut builder = crate::block::TeamBlockBuilder::new(StorageTeamId(6));
    builder.push_empty_version(Version(3)).unwrap();
    let parsed = TeamBlock::parse(builder.finish()).unwrap();
    let data = TeamBlockData::from(parsed.clone());
    assert_eq!(data.team, StorageTeamId(6));
    assert_eq!(data.data, *parsed.bytes());
    assert_eq!(data.parse().unwrap().last_version(), Some(Version(3)));
    assert!(block(1, b"junk").parse().is_err());
}

#[test]
fn request_and_reply_kinds_are_told_apart() {
    let requests: Vec<&str> = every_message()
        .iter()
        .filter(|m| m.is_request())
        .map(Message::name)
        .collect();
    assert_eq!(
        requests,
        vec![
            "tlog_commit",
            "tlog_commit",
            "peek",
            "pop",
            "lock",
            "register_team",
            "status",
            "sequence",
            "report_committed",
            "get_read_version",
            "client_commit",
            "get_value",
            "get_range",
            "get_range",
            "get_key_location",
            "raft",
            "coordinated_read",
            "coordinated_watch",
            "coordinated_write",
            "register_worker",
            "recruit",
            "recruit",
            "recruit",
            "open_commits",
            "get_cluster_info",
            "shard_metrics"
        ]
    );
}

#[test]
fn error_codes_display_in_snake_case() {
    assert_eq!(ErrorCode::TLogStopped.to_string(), "tlog_stopped");
    assert_eq!(
        ErrorCode::PeekBeforePopped.to_string(),
        "peek_before_popped"
    );
    assert_eq!(
        ErrorReply::new(ErrorCode::UnknownTeam, "team-4").to_string(),
        "unknown_team: team-4"
    );
}

/// An envelope whose union carries a type this code does not know.
fn envelope_with_payload_type(request_id: u64, payload_type: u8) -> Bytes {
    let mut fbb = FlatBufferBuilder::new();
    let payload = fb::PopReply::create(&mut fbb, &fb::PopReplyArgs {});
    let root = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            request_id,
            payload_type: fb::Payload(payload_type),
            payload: (payload_type != 0).then(|| payload.as_union_value()),
            appendix: 0,
        },
    );
    fbb.finish(root, None);
    Bytes::copy_from_slice(fbb.finished_data())
}

#[test]
fn an_unknown_message_type_keeps_its_request_id() {
    // The first type past the schema's last, so new messages keep this test honest.
    let first_unknown = fb::Payload::ENUM_MAX + 1;
    for payload_type in [0u8, first_unknown, 200, 255] {
        assert_eq!(
            Envelope::decode(envelope_with_payload_type(42, payload_type)),
            Err(DecodeError::UnknownMessage { request_id: 42 }),
            "payload type {payload_type}"
        );
    }
}

#[test]
fn an_unknown_mutation_kind_refuses_just_that_request() {
    let mut fbb = FlatBufferBuilder::new();
    let a = fbb.create_vector(b"k");
    let mutation = fb::Mutation::create(
        &mut fbb,
        &fb::MutationArgs {
            kind: 9,
            a: Some(a),
            b: None,
        },
    );
    let mutations = fbb.create_vector(&[mutation]);
    let commit = fb::ClientCommitRequest::create(
        &mut fbb,
        &fb::ClientCommitRequestArgs {
            mutations: Some(mutations),
            allow_system_keys: false,
            read_version: 0,
            read_ranges: None,
        },
    );
    let root = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            request_id: 5,
            payload_type: fb::Payload::ClientCommitRequest,
            payload: Some(commit.as_union_value()),
            appendix: 0,
        },
    );
    fbb.finish(root, None);
    let decoded = Envelope::decode(Bytes::copy_from_slice(fbb.finished_data()));
    assert!(matches!(
        decoded,
        Err(DecodeError::InvalidContent { request_id: 5, .. })
    ));
}

#[test]
fn a_sequence_reply_needs_exactly_one_of_a_resolution_and_its_error() {
    for (resolved, error) in [(false, false), (true, true)] {
        let mut fbb = FlatBufferBuilder::new();
        let resolved = resolved.then(|| {
            fb::ResolveReply::create(
                &mut fbb,
                &fb::ResolveReplyArgs {
                    metadata: None,
                    conflicts: None,
                },
            )
        });
        let resolve_error = error.then(|| {
            fb::ErrorReply::create(
                &mut fbb,
                &fb::ErrorReplyArgs {
                    code: fb::ErrorCode::Unavailable,
                    message: None,
                    version: 0,
                    has_version: false,
                },
            )
        });
        let reply = fb::SequenceReply::create(
            &mut fbb,
            &fb::SequenceReplyArgs {
                prev_version: 1,
                version: 2,
                resolved,
                resolve_error,
            },
        );
        let root = fb::Envelope::create(
            &mut fbb,
            &fb::EnvelopeArgs {
                request_id: 6,
                payload_type: fb::Payload::SequenceReply,
                payload: Some(reply.as_union_value()),
                appendix: 0,
            },
        );
        fbb.finish(root, None);
        let decoded = Envelope::decode(Bytes::copy_from_slice(fbb.finished_data()));
        assert!(
            matches!(
                decoded,
                Err(DecodeError::InvalidContent { request_id: 6, .. })
            ),
            "{decoded:?}"
        );
    }
}

#[test]
fn garbage_is_an_invalid_flatbuffer() {
    for frame in [&b""[..], b"\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff"] {
        assert!(matches!(
            Envelope::decode(Bytes::copy_from_slice(frame)),
            Err(DecodeError::InvalidFlatbuffer(_))
        ));
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(Bytes::from(bytes));
    }

    #[test]
    fn corrupted_messages_never_panic(
        which in 0usize..16,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let messages = every_message();
        let message = messages[which % messages.len()].clone();
        let mut bytes = Envelope { request_id: 7, message }.encode().into_bytes().to_vec();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(decoded) = Envelope::decode(Bytes::from(bytes)) {
            // Whatever decodes must encode and decode to itself again.
            prop_assert_eq!(Envelope::decode(decoded.encode().into_bytes()), Ok(decoded));
        }
    }
}

#[test]
fn a_recruit_naming_no_address_or_an_unknown_role_is_refused() {
    let recruit = |kind: u8, sequencer: &str| {
        let mut fbb = FlatBufferBuilder::new();
        let sequencer = fbb.create_string(sequencer);
        let payload = fb::RecruitRequest::create(
            &mut fbb,
            &fb::RecruitRequestArgs {
                epoch: 3,
                kind: fb::RoleKind(kind),
                sequencer: Some(sequencer),
                ..Default::default()
            },
        );
        let root = fb::Envelope::create(
            &mut fbb,
            &fb::EnvelopeArgs {
                request_id: 9,
                payload_type: fb::Payload::RecruitRequest,
                payload: Some(payload.as_union_value()),
                appendix: 0,
            },
        );
        fbb.finish(root, None);
        Envelope::decode(Bytes::copy_from_slice(fbb.finished_data()))
    };
    for (kind, sequencer) in [(2, "not an address"), (2, ""), (7, "127.0.0.1:1")] {
        assert!(
            matches!(
                recruit(kind, sequencer),
                Err(DecodeError::InvalidContent { request_id: 9, .. })
            ),
            "kind {kind}, sequencer {sequencer:?}"
        );
    }
    assert!(recruit(2, "127.0.0.1:1").is_ok());
}
