use super::*;
use proto::rpc::TeamStatus;
use proto::{ProxyId, StorageServerId, StorageTeamId};

const NOTHING_SKIPPED: SkippedVersions = SkippedVersions(Vec::new());

fn storage_reply(applied: u64, committed: u64) -> StorageStatusReply {
    StorageStatusReply {
        server: StorageServerId(100),
        applied_version: Version(applied),
        durable_version: Version(applied / 2),
        oldest_readable_version: Version(applied / 2),
        committed_version: Version(committed),
        window_bytes: 3 << 20,
        teams: vec![StorageTeamId(1)],
        stopped: None,
        stalled: None,
        rebuilding: None,
        adding: Vec::new(),
        following_epoch: 0,
    }
}

#[test]
fn lag_uses_the_servers_committed_version_or_else_the_sequencers() {
    let own = storage_status(
        storage_reply(1_000, 2_501_000),
        Some(9_000_000),
        &NOTHING_SKIPPED,
    );
    assert_eq!(own.lag_versions, 2_500_000);
    assert!((own.lag_seconds - 2.5).abs() < 1e-9);
    let fallback = storage_status(storage_reply(1_000, 0), Some(3_000), &NOTHING_SKIPPED);
    assert_eq!(fallback.lag_versions, 2_000);
    let ahead = storage_status(storage_reply(5_000, 4_000), None, &NOTHING_SKIPPED);
    assert_eq!(ahead.lag_versions, 0);
}

#[test]
fn the_versions_a_recovery_skipped_are_no_lag() {
    // Generation 2 chains from 22_054_670; its sequencer hands out versions
    // above 32_054_670.
    let skipped = SkippedVersions(vec![(Version(22_054_670), Version(32_054_670))]);
    let waiting = storage_status(storage_reply(22_054_670, 32_054_671), None, &skipped);
    assert_eq!(waiting.lag_versions, 1);
    assert_eq!(storage_problem(&waiting), None);
    let behind = storage_status(storage_reply(15_000_000, 32_554_671), None, &skipped);
    assert_eq!(behind.lag_versions, 7_054_670 + 500_001);
    assert!(storage_problem(&behind).unwrap().starts_with("behind"));
    let after = storage_status(storage_reply(32_054_671, 32_054_681), None, &skipped);
    assert_eq!(after.lag_versions, 10);

    let chain = |last: u64, committed: u64| SequencerStatusReply {
        last_version: Version(last),
        committed_version: Version(committed),
    };
    assert_eq!(
        sequencer_problem(&chain(32_054_671, 22_054_670), &skipped),
        None
    );
    let stalled = sequencer_problem(&chain(38_000_000, 22_054_670), &skipped).unwrap();
    assert!(stalled.contains("5.9 s of versions ago"), "{stalled}");
}

#[test]
fn a_stuck_chain_a_locked_or_poisoned_tlog_and_a_stopped_or_lagging_server_are_named() {
    let chain = |last: u64, committed: u64| SequencerStatusReply {
        last_version: Version(last),
        committed_version: Version(committed),
    };
    assert_eq!(
        sequencer_problem(&chain(5_000_000, 1_000_000), &NOTHING_SKIPPED),
        None
    );
    let stalled = sequencer_problem(&chain(7_000_000, 1_000_000), &NOTHING_SKIPPED).unwrap();
    assert!(stalled.starts_with("commit chain stalled"), "{stalled}");
    assert!(!stalled.contains("refuses"), "{stalled}");
    let refusing = sequencer_problem(&chain(11_000_000, 1_000_000), &NOTHING_SKIPPED).unwrap();
    assert!(
        refusing.ends_with("the sequencer refuses new versions until the committed version moves"),
        "{refusing}"
    );

    let tlog = |locked, poisoned| TLogStatusReply {
        durable_version: Version(1),
        known_committed_version: Version(1),
        locked,
        poisoned,
        memory_bytes: 0,
        memory_budget: 0,
        disk_bytes: 0,
        truncation_blocker: None,
        teams: Vec::new(),
        stalled: None,
    };
    assert_eq!(tlog_problem(&tlog(false, false)), None);
    assert!(tlog_problem(&tlog(true, false))
        .unwrap()
        .starts_with("locked"));
    assert!(tlog_problem(&tlog(true, true))
        .unwrap()
        .starts_with("poisoned"));
    let throttling = ProxyStatusReply {
        proxy: ProxyId(1),
        known_committed_version: Version(1),
        commits: 0,
        throttling: Some("team-3: behind".into()),
        delaying: None,
    };
    assert_eq!(
        proxy_problem(&throttling).as_deref(),
        Some("throttling, commits refused: team-3: behind")
    );
    let full = TLogStatusReply {
        stalled: Some("no space for log segment 9".into()),
        ..tlog(false, false)
    };
    assert_eq!(
        tlog_problem(&full).as_deref(),
        Some("stalled, commits wait: no space for log segment 9")
    );

    let fine = storage_status(storage_reply(1_000_000, 5_000_000), None, &NOTHING_SKIPPED);
    assert_eq!(storage_problem(&fine), None);
    let lagging = storage_status(storage_reply(1_000_000, 7_000_000), None, &NOTHING_SKIPPED);
    assert!(storage_problem(&lagging).unwrap().starts_with("behind"));
    let mut reply = storage_reply(1_000, 1_000);
    let mut full = storage_reply(1_000, 1_000);
    full.stalled = Some("no space left on the disk".into());
    assert_eq!(
        storage_problem(&storage_status(full, None, &NOTHING_SKIPPED)).as_deref(),
        Some("stalled, nothing becomes durable: no space left on the disk")
    );
    let mut rebuilding = storage_reply(1_000, 1_000);
    rebuilding.rebuilding = Some("team-1 from ss-101: 7 pairs".into());
    assert_eq!(
        storage_problem(&storage_status(rebuilding, None, &NOTHING_SKIPPED)).as_deref(),
        Some("rebuilding from its teammates, serves no reads: team-1 from ss-101: 7 pairs")
    );
    let mut held_back = storage_reply(1_000, 1_000);
    let adding = proto::rpc::AddingRangeStatus {
        begin: bytes::Bytes::from_static(b"c"),
        end: bytes::Bytes::from_static(b"h\x00"),
        installed_to: bytes::Bytes::from_static(b"d"),
        pairs_copied: 7,
        bytes_copied: 70,
        ready: false,
        problem: None,
        idle_ms: 29_999,
        size_left: Some(100),
        size_per_sec: 10,
    };
    held_back.adding = vec![adding.clone()];
    assert_eq!(
        storage_problem(&storage_status(held_back.clone(), None, &NOTHING_SKIPPED)),
        None
    );
    let mut stuck = held_back.clone();
    stuck.adding[0].idle_ms = 45_000;
    assert_eq!(
        storage_problem(&storage_status(stuck.clone(), None, &NOTHING_SKIPPED)).as_deref(),
        Some("the copy of [c, h\\x00) for a move got no page for 45 s (no versions to install its last page at, or its source too slow)")
    );
    stuck.adding[0].ready = true;
    assert_eq!(
        storage_problem(&storage_status(stuck, None, &NOTHING_SKIPPED)),
        None,
        "a ready copy waits for its flip"
    );
    held_back.adding.push(proto::rpc::AddingRangeStatus {
        problem: Some("no other server holds the range to copy it from".into()),
        ..adding
    });
    assert_eq!(
        storage_problem(&storage_status(held_back, None, &NOTHING_SKIPPED)).as_deref(),
        Some("the copy of [c, h\\x00) for a move is held back: no other server holds the range to copy it from")
    );
    reply.stopped = Some("write failed: disk full".into());
    let stopped = storage_status(reply, None, &NOTHING_SKIPPED);
    assert_eq!(
        storage_problem(&stopped).unwrap(),
        "stopped applying: write failed: disk full"
    );

    // An unhealthy process that answered keeps its status, and the
    // table says what is wrong next to it.
    let addr: SocketAddr = "127.0.0.1:4500".parse().unwrap();
    let row = process("tlog", Some(2), addr, Ok(tlog(true, false)), |r| {
        let problem = tlog_problem(&r);
        (r, problem)
    });
    assert!(!row.healthy && row.status.is_some());
    let mut text = String::new();
    render::row(&mut text, &row, render::tlog_details);
    assert!(text.contains("NO       locked: its epoch ended"), "{text}");
    assert!(text.contains("| durable 1"), "{text}");
}

#[test]
fn the_table_shows_health_errors_and_teams() {
    let addr: SocketAddr = "127.0.0.1:4500".parse().unwrap();
    let status = ClusterStatus {
        healthy: false,
        processes: 5,
        unhealthy: 2,
        committed_version: Some(42),
        coordinators: vec![process("coordinator", Some(1), addr, Ok(()), |()| {
            let reply = CoordinatorStatusReply {
                id: 1,
                leader: None,
                term: 4,
                last_applied: 17,
                problem: Some("no coordinator leads".into()),
                controller: Some(2),
                watched: vec![proto::rpc::WatchedProcess {
                    role: "tlog".into(),
                    id: 1,
                    address: "127.0.0.1:4521".into(),
                    failed_for_ms: Some(1_500),
                }],
                recovery: Some(proto::rpc::RecoveryReport {
                    epoch: 4,
                    recovering: None,
                    phases: vec![("locking_tlogs".into(), 12)],
                    last_failure: None,
                    workers: vec![proto::rpc::WorkerReport {
                        address: "127.0.0.1:4600".into(),
                        silent_ms: 20,
                        roles: vec!["tlog 4/0".into()],
                    }],
                    generations: vec!["generation 4: versions (0, …], 3 TLogs, current".into()],
                    distribution: vec!["team-1: 2 shards, 80 writes/s, 1.0 MiB".into()],
                    distribution_problem: None,
                    configuration_problem: None,
                }),
            };
            let problem = reply.problem.clone();
            (reply, problem)
        })],
        sequencer: process("sequencer", None, addr, Ok(()), |()| {
            let reply = SequencerStatusReply {
                last_version: Version(43),
                committed_version: Version(42),
            };
            (reply, sequencer_problem(&reply, &NOTHING_SKIPPED))
        }),
        proxies: vec![process("proxy", Some(1), addr, Ok(()), |()| {
            let reply = ProxyStatusReply {
                proxy: ProxyId(1),
                known_committed_version: Version(42),
                commits: 9,
                throttling: None,
                delaying: Some("new commits limited to 1.0 MiB/s: team 1 is behind".into()),
            };
            (reply, None)
        })],
        tlogs: vec![process("tlog", Some(0), addr, Ok(()), |()| {
            let reply = TLogStatusReply {
                durable_version: Version(43),
                known_committed_version: Version(41),
                locked: false,
                poisoned: false,
                memory_bytes: 2048,
                memory_budget: 1 << 20,
                disk_bytes: 64 << 20,
                truncation_blocker: Some(StorageTeamId(1)),
                teams: vec![
                    TeamStatus {
                        team: StorageTeamId(1),
                        popped: Version(7),
                        bytes: 512,
                        servers: vec![StorageServerId(100), StorageServerId(101)],
                    },
                    TeamStatus {
                        team: proto::system_keys::METADATA_TEAM,
                        popped: Version(40),
                        bytes: 0,
                        servers: vec![proto::system_keys::METADATA_READER],
                    },
                ],
                stalled: None,
            };
            (reply, None)
        })],
        storage_servers: vec![process::<(), StorageStatus>(
            "storage",
            Some(100),
            addr,
            Err("connection refused".into()),
            |()| unreachable!(),
        )],
    };
    let text = render_text(&status);
    assert!(text.starts_with("3 of 5 processes healthy; committed version 42"));
    assert!(
        text.contains(
            "NO       no coordinator leads | leader none, term 4, applied 17, controller 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("controller: tlog 1 (127.0.0.1:4521) failed 1.5 s ago")
            && text.contains("controller: generation 4")
            && text.contains("last recovery: locking_tlogs 12 ms")
            && text.contains("worker 127.0.0.1:4600 (heard 20 ms ago): tlog 4/0")
            && text.contains("data distribution: team-1: 2 shards, 80 writes/s, 1.0 MiB"),
        "{text}"
    );
    assert!(text.contains("known committed 42, commits 9"), "{text}");
    // A proxy that paces commits is healthy and says why it paces.
    assert!(
        text.contains("yes      known committed 42, commits 9\n")
            && text.contains("new commits limited to 1.0 MiB/s: team 1 is behind\n"),
        "{text}"
    );
    assert!(text.contains("last 43, committed 42"), "{text}");
    assert!(
        text.contains("memory 2.0 KiB of 1.0 MiB, disk 64.0 MiB"),
        "{text}"
    );
    assert!(text.contains("truncation held back by team 1"), "{text}");
    assert!(
        text.contains("the metadata team: 0 B, popped 40, read by the controller"),
        "{text}"
    );
    assert!(
        text.contains("team 1: 512 B, popped 7, servers 100,101"),
        "{text}"
    );
    assert!(text.contains("NO       connection refused"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&status).unwrap();
    assert_eq!(json["storage_servers"][0]["healthy"], false);
    assert_eq!(
        json["storage_servers"][0]["status"],
        serde_json::Value::Null
    );
    assert_eq!(json["tlogs"][0]["status"]["teams"][0]["bytes"], 512);
    assert_eq!(
        json["tlogs"][0]["status"]["teams"][0]["servers"],
        serde_json::json!([100, 101])
    );
    assert_eq!(json["tlogs"][0]["status"]["truncation_blocker"], 1);
    assert_eq!(json["sequencer"]["status"]["last_version"], 43);
    assert_eq!(json["proxies"][0]["status"]["known_committed_version"], 42);
    assert!(json["sequencer"].get("id").is_none());
    assert_eq!(
        json["coordinators"][0]["status"]["leader"],
        serde_json::Value::Null
    );
    assert_eq!(json["coordinators"][0]["status"]["term"], 4);
    let storage = storage_status(storage_reply(1_000, 0), Some(3_000), &NOTHING_SKIPPED);
    let json = serde_json::to_value(&storage).unwrap();
    assert_eq!(json["committed_version"], 3_000);
    assert_eq!(json["lag_versions"], 2_000);
    assert_eq!(json["teams"], serde_json::json!([1]));
}

/// A coordinator that leads and hosts the controller, reporting `recovery`.
fn leading_coordinator(recovery: proto::rpc::RecoveryReport) -> CoordinatorStatusReply {
    CoordinatorStatusReply {
        id: 1,
        leader: Some(1),
        term: 2,
        last_applied: 9,
        problem: None,
        controller: Some(1),
        watched: Vec::new(),
        recovery: Some(recovery),
    }
}

#[test]
fn a_recovery_under_way_makes_its_coordinator_unhealthy() {
    let mut reply = leading_coordinator(proto::rpc::RecoveryReport::default());
    assert_eq!(coordinator_problem(&reply), None);
    reply.recovery.as_mut().unwrap().recovering =
        Some("locking_tlogs: waiting for locks from generation 3's TLogs".into());
    let problem = coordinator_problem(&reply).unwrap();
    assert!(problem.contains("recovering: locking_tlogs"), "{problem}");
    reply.recovery.as_mut().unwrap().last_failure =
        Some("the locked TLogs disagree: TLog 0 knows 20 committed".into());
    let problem = coordinator_problem(&reply).unwrap();
    assert!(
        problem.contains("abandoned: the locked TLogs disagree"),
        "{problem}"
    );
}

#[test]
fn a_copy_for_a_move_shows_what_is_left_and_when_it_should_be_done() {
    let mut adding = proto::rpc::AddingRangeStatus {
        begin: bytes::Bytes::from_static(b"c"),
        end: bytes::Bytes::from_static(b"h\x00"),
        installed_to: bytes::Bytes::from_static(b"d"),
        pairs_copied: 7_000,
        bytes_copied: (30 << 20) - 7_000 * 32,
        ready: false,
        problem: None,
        idle_ms: 0,
        size_left: Some(90 << 20),
        size_per_sec: 30 << 20,
    };
    assert_eq!(
        render::adding_line(&adding),
        "adding [c, h\\x00): 7000 pairs (30.0 MiB stored) copied, about 90.0 MiB left at 30.0 MiB/s, done in about 3 s"
    );
    adding.size_left = None;
    assert_eq!(
        render::adding_line(&adding),
        "adding [c, h\\x00): 7000 pairs (30.0 MiB stored) copied, size left unknown, 30.0 MiB/s"
    );
    adding.ready = true;
    assert_eq!(
        render::adding_line(&adding),
        "adding [c, h\\x00): copied, waits for the move to flip"
    );
}

#[test]
fn a_stuck_data_distributor_makes_its_coordinator_unhealthy() {
    let stuck = "the data distributor changed nothing in its last 4 rounds (12 s): \
                 no metrics from team team-2: no server answered";
    let mut reply = leading_coordinator(proto::rpc::RecoveryReport {
        distribution_problem: Some(stuck.into()),
        ..Default::default()
    });
    assert_eq!(coordinator_problem(&reply).as_deref(), Some(stuck));
    reply.recovery.as_mut().unwrap().distribution_problem = None;
    assert_eq!(coordinator_problem(&reply), None);
    let unfollowed = "the configuration excludes servers {100, 101}, which leaves team-1 with \
                      no server; the generation keeps them";
    reply.recovery.as_mut().unwrap().configuration_problem = Some(unfollowed.into());
    assert_eq!(coordinator_problem(&reply).as_deref(), Some(unfollowed));
}

#[test]
fn a_failed_storage_server_is_unhealthy_and_an_excluded_one_healthy() {
    let addr: SocketAddr = "127.0.0.1:4700".parse().unwrap();
    let silent = || {
        process::<(), StorageStatus>(
            "storage",
            Some(100),
            addr,
            Err("connection refused".into()),
            |()| unreachable!(),
        )
    };
    let mut excluded = silent();
    (excluded.excluded, excluded.healthy, excluded.error) = (true, true, None);
    let mut failed = silent();
    (failed.failed, failed.healthy, failed.error) = (true, false, Some(FAILED.to_owned()));
    let mut text = String::new();
    super::render::row(&mut text, &excluded, |_| String::new());
    super::render::row(&mut text, &failed, |_| String::new());
    assert!(text.contains("excluded does not answer\n"), "{text}");
    assert!(
        text.contains("FAILED   failed: left out of its teams by the controller")
            && text.contains("it is taken back once it answers | does not answer\n"),
        "{text}"
    );
    let json = serde_json::to_value(&failed).unwrap();
    assert_eq!(
        (&json["failed"], &json["healthy"], json.get("excluded")),
        (&serde_json::json!(true), &serde_json::json!(false), None)
    );
    let json = serde_json::to_value(&excluded).unwrap();
    assert_eq!(
        (&json["excluded"], json.get("failed")),
        (&serde_json::json!(true), None)
    );
}
