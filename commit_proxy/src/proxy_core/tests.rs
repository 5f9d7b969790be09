//! The proxy core's rules, driven event by event with no network: batching,
//! version order, tagging, metadata from other proxies and each failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proto::rpc::VersionedMetadata;
use proto::system_keys::{key_servers_key, ShardAssignment};
use proto::{BlockEntry, StorageServerId, TeamBlock};

use super::*;

type Waiter = u32;

const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

/// Three teams of two servers on three TLogs (replication 2), each server
/// with a private team `1000 + server`; keys from `m` on go to team 2. The
/// rest is `ProxyConfig::new`'s defaults.
fn default_config() -> ProxyConfig {
    let topology = crate::test_topology::sample();
    let shards = ShardMap::new([
        (Bytes::new(), ShardAssignment::to(StorageTeamId(1))),
        (
            Bytes::from_static(b"m"),
            ShardAssignment::to(StorageTeamId(2)),
        ),
    ])
    .unwrap();
    ProxyConfig::new(ProxyId(7), ADDR, vec![ADDR; 3], topology, shards)
}

/// The defaults, but eight batches may be in flight, so the tests see the
/// core pipeline them.
fn config() -> ProxyConfig {
    let mut config = default_config();
    config.max_batches_in_flight = 8;
    config
}

fn core_with(change: impl FnOnce(&mut ProxyConfig)) -> ProxyCore<Waiter> {
    let mut config = config();
    change(&mut config);
    ProxyCore::new(&config, 100)
}

fn core() -> ProxyCore<Waiter> {
    core_with(|_| {})
}

fn set(key: &str, value: &str) -> Mutation {
    Mutation::SetValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn commit(mutations: Vec<Mutation>) -> ClientCommitRequest {
    ClientCommitRequest {
        mutations,
        ..ClientCommitRequest::default()
    }
}

/// The sequencer's process handed out `(prev, version)` and resolved the
/// batch with `resolved`.
fn sequenced_as(
    prev: u64,
    version: u64,
    resolved: Result<ResolveReply, ErrorReply>,
) -> Result<SequenceReply, String> {
    Ok(SequenceReply {
        versions: GetCommitVersionReply {
            prev_version: Version(prev),
            version: Version(version),
        },
        resolved,
    })
}

/// Versions `(prev, version)`, and no other proxy's metadata to learn.
fn sequenced(prev: u64, version: u64) -> Result<SequenceReply, String> {
    sequenced_as(
        prev,
        version,
        Ok(ResolveReply {
            metadata: Vec::new(),
            conflicts: Vec::new(),
        }),
    )
}

/// The batch and request of the only `Sequence` among `commands`.
fn version_request(commands: &[Command<Waiter>]) -> (BatchId, SequenceRequest, usize) {
    let mut found: Vec<_> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Sequence {
                batch,
                request,
                commits,
                ..
            } => Some((*batch, request.clone(), *commits)),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{commands:?}");
    found.remove(0)
}

fn pushes(commands: &[Command<Waiter>]) -> Vec<(BatchId, Vec<TLogCommitRequest>)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Push { batch, requests } => Some((*batch, requests.clone())),
            _ => None,
        })
        .collect()
}

fn answers(commands: Vec<Command<Waiter>>) -> Vec<(Waiter, Result<Version, ErrorCode>)> {
    commands
        .into_iter()
        .filter_map(|c| match c {
            Command::Answer { waiter, result } => Some((waiter, result.map_err(|e| e.code))),
            _ => None,
        })
        .collect()
}

/// Every (team, mutation) the TLog requests carry, each team once however
/// many TLogs hold it.
fn team_messages(requests: &[TLogCommitRequest]) -> BTreeMap<StorageTeamId, Vec<Mutation>> {
    let mut out = BTreeMap::new();
    for data in requests.iter().flat_map(|r| &r.teams) {
        let block = TeamBlock::parse(data.data.clone()).unwrap();
        let messages = block
            .entries()
            .filter_map(|e| match e {
                BlockEntry::Message(m) => Some(m.mutation),
                _ => None,
            })
            .collect();
        out.insert(data.team, messages);
    }
    out
}

/// Takes a sequenced batch to its answers, all succeeding.
fn complete(core: &mut ProxyCore<Waiter>, batch: BatchId, now: u64) -> Vec<Command<Waiter>> {
    let mut commands = core.on_pushed(batch, Ok(()), now);
    commands.extend(core.on_reported(batch, now));
    commands
}

#[test]
fn commits_that_arrive_while_versions_are_asked_for_share_the_next_batch() {
    let mut core = core();
    let (first, request, commits) =
        version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    assert_eq!(
        (request.proxy, request.request_num, commits),
        (ProxyId(7), 101, 1)
    );
    assert!(core.commit(2, commit(vec![set("b", "2")]), 1).is_empty());
    assert!(core.commit(3, commit(vec![set("c", "3")]), 2).is_empty());
    let commands = core.on_sequenced(first, sequenced(0, 10), 3);
    let pushed = pushes(&commands);
    assert!(matches!(&pushed[..], [(batch, requests)]
        if *batch == first && requests[0].version == Version(10) && requests[0].prev_version == Version(0)));
    let (second, request, commits) = version_request(&commands);
    assert_ne!(second, first);
    assert_eq!((request.request_num, commits), (102, 2));
}

#[test]
fn a_batch_takes_commits_up_to_its_byte_limit_and_at_least_one() {
    let mut core = core_with(|c| c.max_batch_bytes = 100);
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    for waiter in 2..=4 {
        assert!(core
            .commit(waiter, commit(vec![set("k", &"v".repeat(40))]), 0)
            .is_empty());
    }
    let (second, _, commits) = version_request(&core.on_sequenced(first, sequenced(0, 10), 0));
    assert_eq!(commits, 1, "two commits of 57 bytes pass 100");
    let (_, _, commits) = version_request(&core.on_sequenced(second, sequenced(10, 20), 0));
    assert_eq!(commits, 1);
    // A commit larger than the limit still forms a batch of its own.
    let mut core = core_with(|c| c.max_batch_bytes = 10);
    version_request(&core.commit(1, commit(vec![set("k", &"v".repeat(40))]), 0));
}

#[test]
fn no_more_batches_than_the_limit_are_in_flight() {
    let mut core = core_with(|c| c.max_batches_in_flight = 2);
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    assert!(core.commit(2, commit(vec![set("b", "1")]), 0).is_empty());
    let (second, ..) = version_request(&core.on_sequenced(first, sequenced(0, 10), 0));
    assert!(core.commit(3, commit(vec![set("c", "1")]), 0).is_empty());
    let commands = core.on_sequenced(second, sequenced(10, 20), 0);
    assert!(
        commands
            .iter()
            .all(|c| !matches!(c, Command::Sequence { .. })),
        "two batches are out: the third waits"
    );
    let commands = complete(&mut core, first, 0);
    let (_, _, commits) = version_request(&commands);
    assert_eq!(commits, 1, "the first batch's end frees a slot");
}

#[test]
fn by_default_commits_queue_while_a_batch_is_out_and_then_go_as_one() {
    let mut core = ProxyCore::new(&default_config(), 100);
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    let mut commands = core.on_sequenced(first, sequenced(0, 10), 0);
    for waiter in 2..=5 {
        commands.extend(core.commit(waiter, commit(vec![set("b", "2")]), 0));
    }
    assert!(
        commands
            .iter()
            .all(|c| !matches!(c, Command::Sequence { .. })),
        "{commands:?}"
    );
    // The first batch's push ends its slot: the four queued commits go at
    // once, and their call carries the first batch's report.
    let commands = core.on_pushed(first, Ok(()), 0);
    assert!(
        commands
            .iter()
            .all(|c| !matches!(c, Command::ReportCommitted { .. } | Command::Answer { .. })),
        "{commands:?}"
    );
    let (second, request, commits) = version_request(&commands);
    assert_eq!((commits, request.committed), (4, Version(10)));
    // The sequencer answering the second batch has heard the first.
    let commands = core.on_sequenced(second, sequenced(10, 20), 0);
    assert_eq!(answers(commands), vec![(1, Ok(Version(10)))]);
}

#[test]
fn a_pushed_batch_with_nothing_queued_behind_it_is_reported_alone() {
    let mut core = ProxyCore::new(&default_config(), 100);
    let (first, request, _) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    assert_eq!(request.committed, Version::ZERO, "nothing to report yet");
    core.on_sequenced(first, sequenced(0, 10), 0);
    let commands = core.on_pushed(first, Ok(()), 0);
    assert!(
        matches!(&commands[..], [Command::ReportCommitted { batch, request }]
            if *batch == first && request.version == Version(10)),
        "{commands:?}"
    );
    // A commit arriving while the report is out starts a batch at once:
    // the report holds no slot, and is not carried twice.
    let (second, request, _) = version_request(&core.commit(2, commit(vec![set("b", "2")]), 0));
    assert_eq!(request.committed, Version::ZERO);
    assert_eq!(
        answers(core.on_reported(first, 0)),
        vec![(1, Ok(Version(10)))]
    );
    core.on_sequenced(second, sequenced(10, 20), 0);
    assert!(core.on_sequenced(second, sequenced(10, 20), 0).is_empty());
}

#[test]
fn reports_carried_by_a_call_that_failed_go_again_alone() {
    let mut core = ProxyCore::new(&default_config(), 100);
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.on_sequenced(first, sequenced(0, 10), 0);
    core.commit(2, commit(vec![set("b", "2")]), 0);
    let (second, request, _) = version_request(&core.on_pushed(first, Ok(()), 0));
    assert_eq!(request.committed, Version(10));
    let commands = core.on_sequenced(second, Err("sequencer gone".into()), 0);
    assert!(
        commands.iter().any(|c| matches!(c,
            Command::ReportCommitted { batch, request } if *batch == first && request.version == Version(10))),
        "{commands:?}"
    );
    assert_eq!(
        answers(commands),
        vec![(2, Err(ErrorCode::Unavailable))],
        "the first batch is answered once the sequencer has heard it"
    );
    assert_eq!(
        answers(core.on_reported(first, 0)),
        vec![(1, Ok(Version(10)))]
    );
    assert!(
        answers(core.on_reported(first, 0)).is_empty(),
        "answered once"
    );
}

#[test]
fn while_others_are_in_flight_a_batch_waits_the_batch_interval() {
    let mut core = core_with(|c| c.batch_interval = Duration::from_micros(500));
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    // Nothing else in flight: the first batch did not wait.
    let commands = core.on_sequenced(first, sequenced(0, 10), 50);
    assert!(commands
        .iter()
        .all(|c| !matches!(c, Command::Sequence { .. })));
    let commands = core.commit(2, commit(vec![set("b", "1")]), 100);
    assert!(
        matches!(commands[..], [Command::WakeAt { at_us: 600 }]),
        "{commands:?}"
    );
    assert!(core.commit(3, commit(vec![set("c", "1")]), 200).is_empty());
    assert!(
        core.wake(599).is_empty(),
        "too early, and already asked for"
    );
    let (_, _, commits) = version_request(&core.wake(600));
    assert_eq!(commits, 2);
}

#[test]
fn one_batch_is_sequenced_at_a_time_so_pushes_are_in_version_order() {
    let mut core = core();
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    assert!(
        core.commit(2, commit(vec![set("b", "2")]), 0).is_empty(),
        "the second batch waits for the first one's versions"
    );
    let commands = core.on_sequenced(first, sequenced(0, 10), 0);
    let (second, ..) = version_request(&commands);
    let mut pushed = pushes(&commands);
    pushed.extend(pushes(&core.on_sequenced(second, sequenced(10, 20), 0)));
    let order: Vec<(BatchId, Version)> = pushed
        .iter()
        .map(|(batch, requests)| (*batch, requests[0].version))
        .collect();
    assert_eq!(order, vec![(first, Version(10)), (second, Version(20))]);
}

#[test]
fn every_tlog_gets_every_version_with_its_teams_blocks_and_empty_versions() {
    let mut core = core();
    let (batch, ..) =
        version_request(&core.commit(1, commit(vec![set("a", "1"), set("n", "2")]), 0));
    let pushed = pushes(&core.on_sequenced(batch, sequenced(5, 10), 0));
    let requests = &pushed[0].1;
    assert_eq!(requests.len(), 3);
    let teams_by_tlog = config().topology.teams_by_tlog();
    for (request, teams) in requests.iter().zip(&teams_by_tlog) {
        assert_eq!(
            (request.prev_version, request.version),
            (Version(5), Version(10))
        );
        let sent: Vec<StorageTeamId> = request.teams.iter().map(|t| t.team).collect();
        assert_eq!(
            &sent, teams,
            "broadcast: every team of the TLog, involved or not"
        );
    }
    let messages = team_messages(requests);
    assert_eq!(messages[&StorageTeamId(1)], vec![set("a", "1")]);
    assert_eq!(messages[&StorageTeamId(2)], vec![set("n", "2")]);
    assert!(messages[&StorageTeamId(3)].is_empty());
    assert!(messages[&StorageTeamId(1010)].is_empty());
}

#[test]
fn without_broadcast_uninvolved_teams_get_nothing_but_every_tlog_the_version() {
    let mut core = core_with(|c| c.topology.broadcast = false);
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    let requests = pushes(&core.on_sequenced(batch, sequenced(5, 10), 0))
        .remove(0)
        .1;
    assert_eq!(requests.len(), 3);
    let teams: Vec<Vec<StorageTeamId>> = requests
        .iter()
        .map(|r| r.teams.iter().map(|t| t.team).collect())
        .collect();
    let holders = cluster::placement::tlogs_for_team(StorageTeamId(1), 3, 2);
    for (i, teams) in teams.iter().enumerate() {
        let expected = if holders.contains(&i) {
            vec![StorageTeamId(1)]
        } else {
            Vec::new()
        };
        assert_eq!(teams, &expected);
    }
}

#[test]
fn a_durable_batch_is_reported_committed_before_its_clients_are_answered() {
    let mut core = core();
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.commit(2, commit(vec![set("b", "1")]), 0);
    let (second, ..) = version_request(&core.on_sequenced(batch, sequenced(0, 10), 0));
    let commands = core.on_pushed(batch, Ok(()), 0);
    assert!(
        matches!(&commands[..], [Command::ReportCommitted { request, .. }]
        if request.version == Version(10) && request.proxy == ProxyId(7))
    );
    assert_eq!(core.status().known_committed_version, Version(10));
    assert_eq!(core.status().commits, 0);
    assert_eq!(
        answers(core.on_reported(batch, 0)),
        vec![(1, Ok(Version(10)))]
    );
    assert_eq!(core.status().commits, 1);
    // The next version's pushes carry what is now known committed.
    let requests = pushes(&core.on_sequenced(second, sequenced(10, 20), 0))
        .remove(0)
        .1;
    assert!(requests
        .iter()
        .all(|r| r.known_committed_version == Version(10)));
}

#[test]
fn metadata_other_proxies_committed_earlier_reroutes_this_batch() {
    let mut core = core();
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("b", "1")]), 0));
    let moved = Mutation::SetValue {
        key: key_servers_key(b""),
        value: ShardAssignment::to(StorageTeamId(3)).encode(),
    };
    let reply = ResolveReply {
        metadata: vec![VersionedMetadata {
            version: Version(15),
            mutations: vec![moved],
        }],
        conflicts: Vec::new(),
    };
    let requests = pushes(&core.on_sequenced(batch, sequenced_as(10, 20, Ok(reply)), 0))
        .remove(0)
        .1;
    let messages = team_messages(&requests);
    assert_eq!(messages[&StorageTeamId(3)], vec![set("b", "1")]);
    assert!(messages[&StorageTeamId(1)].is_empty());
    let map_at = |v| core.shard_map_at(Version(v)).unwrap();
    assert_eq!(
        map_at(14).assignment_of(b"b"),
        &ShardAssignment::to(StorageTeamId(1))
    );
    assert_eq!(
        map_at(15).assignment_of(b"b"),
        &ShardAssignment::to(StorageTeamId(3))
    );
}

#[test]
fn own_metadata_goes_to_every_servers_private_team_and_applies_at_its_version() {
    let mut core = core();
    let moved = Mutation::SetValue {
        key: key_servers_key(b"m"),
        value: ShardAssignment::to(StorageTeamId(3)).encode(),
    };
    let request = ClientCommitRequest {
        mutations: vec![moved.clone()],
        allow_system_keys: true,
        ..ClientCommitRequest::default()
    };
    let (batch, request, _) = version_request(&core.commit(1, request, 0));
    assert_eq!(
        request.transactions[0].metadata,
        vec![moved.clone()],
        "the resolver learns it"
    );
    let resolved = Ok(ResolveReply {
        metadata: Vec::new(),
        conflicts: vec![false],
    });
    let requests = pushes(&core.on_sequenced(batch, sequenced_as(10, 20, resolved), 0))
        .remove(0)
        .1;
    let messages = team_messages(&requests);
    // Every server keeps the whole map.
    for server in [10, 11, 20, 21, 30, 31] {
        assert_eq!(messages[&StorageTeamId(1000 + server)], vec![moved.clone()]);
    }
    let map_at = |v| core.shard_map_at(Version(v)).unwrap();
    assert_eq!(
        map_at(19).assignment_of(b"n"),
        &ShardAssignment::to(StorageTeamId(2))
    );
    assert_eq!(
        map_at(20).assignment_of(b"n"),
        &ShardAssignment::to(StorageTeamId(3))
    );
    // Reads at the change's own version still go where its mutations went.
    let located_at = |v| {
        core.locate(&GetKeyLocationRequest {
            key: Bytes::from_static(b"n"),
            version: Version(v),
        })
        .unwrap()
        .teams
    };
    assert_eq!(
        located_at(20),
        vec![(
            StorageTeamId(2),
            vec![StorageServerId(20), StorageServerId(21)]
        )]
    );
    assert_eq!(
        located_at(21),
        vec![(
            StorageTeamId(3),
            vec![StorageServerId(30), StorageServerId(31)]
        )]
    );
}

#[test]
fn a_commit_whose_reads_conflict_is_refused_alone_and_its_metadata_never_applies() {
    let mut core = core();
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    let moved = Mutation::SetValue {
        key: key_servers_key(b"m"),
        value: ShardAssignment::to(StorageTeamId(3)).encode(),
    };
    let conditional = ClientCommitRequest {
        mutations: vec![moved, set("b", "2")],
        allow_system_keys: true,
        read_version: Version(5),
        read_ranges: vec![proto::rpc::KeyRange {
            begin: key_servers_key(b"m"),
            end: key_servers_key(b"n"),
        }],
    };
    assert!(core.commit(2, conditional, 1).is_empty());
    assert!(core.commit(3, commit(vec![set("c", "3")]), 1).is_empty());
    let commands = core.on_sequenced(first, sequenced(0, 10), 2);
    let (second, request, commits) = version_request(&commands);
    assert_eq!(commits, 2);
    // Only the conditional commit is the resolver's business.
    assert_eq!(request.transactions.len(), 1);
    assert_eq!(request.transactions[0].read_version, Version(5));
    complete(&mut core, first, 3);
    let conflict = Ok(ResolveReply {
        metadata: Vec::new(),
        conflicts: vec![true],
    });
    let commands = core.on_sequenced(second, sequenced_as(10, 20, conflict), 4);
    let messages = team_messages(&pushes(&commands).remove(0).1);
    assert_eq!(answers(commands), vec![(2, Err(ErrorCode::NotCommitted))]);
    assert_eq!(messages[&StorageTeamId(1)], vec![set("c", "3")]);
    assert!(messages.values().flatten().all(|m| m != &set("b", "2")));
    assert_eq!(
        core.shard_map_at(Version(20)).unwrap().assignment_of(b"n"),
        &ShardAssignment::to(StorageTeamId(2)),
        "the conflicting shard-map change never applied"
    );
    assert_eq!(
        answers(complete(&mut core, second, 5)),
        vec![(3, Ok(Version(20)))]
    );
    // A resolver that answers for the wrong number of commits refuses the batch.
    let (third, ..) = version_request(&core.commit(4, commit(vec![set("d", "4")]), 6));
    let wrong = Ok(ResolveReply {
        metadata: Vec::new(),
        conflicts: vec![false],
    });
    let commands = core.on_sequenced(third, sequenced_as(20, 30, wrong), 7);
    assert_eq!(
        answers(complete(&mut core, third, 8)),
        vec![(4, Err(ErrorCode::Unavailable))]
    );
    assert!(answers(commands).is_empty());
}

#[test]
fn bad_commits_are_refused_at_once_and_form_no_batch() {
    let mut core = core();
    let refused = |core: &mut ProxyCore<Waiter>, request| answers(core.commit(1, request, 0));
    assert!(matches!(
        refused(&mut core, commit(Vec::new()))[..],
        [(1, Err(_))]
    ));
    let system = commit(vec![
        set("\u{7f}", "x"),
        Mutation::SetValue {
            key: Bytes::from_static(b"\xffx"),
            value: Bytes::new(),
        },
    ]);
    assert!(matches!(
        refused(&mut core, system)[..],
        [(1, Err(ErrorCode::SystemKey))]
    ));
    let unknown_team = ClientCommitRequest {
        mutations: vec![Mutation::SetValue {
            key: key_servers_key(b"q"),
            value: ShardAssignment::to(StorageTeamId(99)).encode(),
        }],
        allow_system_keys: true,
        ..ClientCommitRequest::default()
    };
    assert!(matches!(
        refused(&mut core, unknown_team)[..],
        [(1, Err(ErrorCode::MalformedRequest))]
    ));
    version_request(&core.commit(2, commit(vec![set("a", "1")]), 0));
}

#[test]
fn without_a_commit_version_the_batch_is_refused_and_the_next_one_forms() {
    let mut core = core();
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.commit(2, commit(vec![set("b", "1")]), 0);
    let commands = core.on_sequenced(first, Err("sequencer down".into()), 0);
    let (_, request, commits) = version_request(&commands);
    assert_eq!((request.request_num, commits), (102, 1));
    assert_eq!(answers(commands), vec![(1, Err(ErrorCode::Unavailable))]);
}

#[test]
fn a_failed_resolve_spends_the_version_as_an_empty_push_and_refuses_the_commits() {
    let mut core = core();
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    let resolve_error = ErrorReply::new(ErrorCode::MissingPredecessor, "waited for 10");
    let requests = pushes(&core.on_sequenced(batch, sequenced_as(10, 20, Err(resolve_error)), 0))
        .remove(0)
        .1;
    assert_eq!(requests.len(), 3, "every TLog still gets the version");
    assert!(team_messages(&requests).values().all(Vec::is_empty));
    let commands = core.on_pushed(batch, Ok(()), 0);
    assert_eq!(answers(commands), vec![(1, Err(ErrorCode::Unavailable))]);
    assert_eq!(core.status().known_committed_version, Version::ZERO);
}

#[test]
fn a_failed_push_leaves_the_outcome_unknown() {
    let mut core = core();
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.commit(2, commit(vec![set("a", "2")]), 0);
    core.on_sequenced(batch, sequenced(10, 20), 0);
    let commands = core.on_pushed(batch, Err("tlog 1: connection reset".into()), 0);
    assert_eq!(
        answers(commands),
        vec![(1, Err(ErrorCode::CommitUnknownResult))]
    );
    assert_eq!(core.status().known_committed_version, Version::ZERO);
}

#[test]
fn a_full_queue_refuses_with_overloaded() {
    let mut core = core();
    version_request(&core.commit(0, commit(vec![set("a", "1")]), 0));
    for waiter in 1..=MAX_QUEUED_COMMITS as u32 {
        assert!(core
            .commit(waiter, commit(vec![set("a", "1")]), 0)
            .is_empty());
    }
    let commands = core.commit(u32::MAX, commit(vec![set("a", "1")]), 0);
    assert_eq!(
        answers(commands),
        vec![(u32::MAX, Err(ErrorCode::Overloaded))]
    );
}

#[test]
fn stale_and_repeated_replies_change_nothing() {
    let mut core = core();
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    assert!(core.on_sequenced(batch + 1, sequenced(0, 10), 0).is_empty());
    assert_eq!(
        pushes(&core.on_sequenced(batch, sequenced(0, 10), 0)).len(),
        1
    );
    assert!(core.on_sequenced(batch, sequenced(0, 11), 0).is_empty());
    assert!(core.on_sequenced(batch, sequenced(0, 10), 0).is_empty());
    assert!(core.on_pushed(batch + 1, Ok(()), 0).is_empty());
    assert_eq!(
        answers(complete_after_push(&mut core, batch)),
        vec![(1, Ok(Version(10)))]
    );
    assert!(core.on_reported(batch, 0).is_empty(), "answered once");
}

fn complete_after_push(core: &mut ProxyCore<Waiter>, batch: BatchId) -> Vec<Command<Waiter>> {
    let mut commands = core.on_pushed(batch, Ok(()), 0);
    commands.extend(core.on_reported(batch, 0));
    commands
}

#[test]
fn a_shard_map_older_than_the_history_kept_is_too_old_to_locate() {
    let mut core = core_with(|c| c.shard_history = 5);
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    let reply = ResolveReply {
        metadata: vec![VersionedMetadata {
            version: Version(150),
            mutations: vec![Mutation::SetValue {
                key: key_servers_key(b"x"),
                value: ShardAssignment::to(StorageTeamId(3)).encode(),
            }],
        }],
        conflicts: Vec::new(),
    };
    core.on_sequenced(batch, sequenced_as(100, 200, Ok(reply)), 0);
    let at = |version| GetKeyLocationRequest {
        key: Bytes::from_static(b"a"),
        version: Version(version),
    };
    assert_eq!(
        core.locate(&at(10)).unwrap_err().code,
        ErrorCode::TransactionTooOld
    );
    let located = core.locate(&at(200)).unwrap();
    assert_eq!(
        (located.begin.as_ref(), located.end.as_ref()),
        (&b""[..], &b"m"[..])
    );
}

#[test]
fn commits_touching_a_throttled_team_are_refused_and_others_go_on() {
    let mut core = core();
    core.set_throttled(BTreeMap::from([(
        StorageTeamId(2),
        "its servers are behind".to_string(),
    )]));
    // "z" is in team 2's shard; a commit that also touches team 1 is
    // refused whole.
    let commands = core.commit(1, commit(vec![set("a", "1"), set("z", "2")]), 0);
    match &commands[..] {
        [Command::Answer {
            waiter: 1,
            result: Err(refusal),
        }] => {
            assert_eq!(refusal.code, ErrorCode::Overloaded);
            assert!(
                refusal.message.contains("its servers are behind"),
                "{refusal:?}"
            );
        }
        other => panic!("expected a refusal, got {} commands", other.len()),
    }
    let status = core.status();
    assert!(status
        .throttling
        .unwrap()
        .contains("its servers are behind"));
    // Team 1 alone goes on.
    version_request(&core.commit(2, commit(vec![set("a", "1")]), 0));
    core.set_throttled(BTreeMap::new());
    assert_eq!(core.status().throttling, None);
    assert!(core.commit(3, commit(vec![set("z", "2")]), 0).is_empty());
}

#[test]
fn an_idle_proxy_tells_the_tlogs_its_last_commit_committed_with_one_empty_batch() {
    let mut core = core_with(|c| c.idle_push_interval = Duration::from_millis(100));
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.on_sequenced(batch, sequenced(0, 10), 0);
    let commands = complete(&mut core, batch, 1_000);
    // The push of version 10 could only say what committed before it.
    assert!(matches!(
        commands.last(),
        Some(Command::WakeAt { at_us: 100_000 })
    ));
    assert!(core.wake(50_000).is_empty(), "woken early");
    let (empty, _, commits) = version_request(&core.wake(100_000));
    assert_eq!(commits, 0);
    let commands = core.on_sequenced(empty, sequenced(10, 20), 100_001);
    assert!(
        matches!(&commands[..], [Command::Push { .. }]),
        "{commands:?}"
    );
    let (_, requests) = &pushes(&commands)[0];
    assert!(requests
        .iter()
        .all(|r| r.known_committed_version == Version(10) && r.version == Version(20)));
    let mut after = core.on_pushed(empty, Ok(()), 100_002);
    after.extend(core.on_reported(empty, 100_002));
    // An empty batch needs no telling: nothing more is asked for.
    assert!(
        after.iter().all(|c| !matches!(
            c,
            Command::WakeAt { .. } | Command::Sequence { .. } | Command::Answer { .. }
        )),
        "{after:?}"
    );
    assert!(core.wake(1_000_000).is_empty());
}

#[test]
fn a_stopping_proxy_refuses_new_commits_and_settles_after_telling_the_tlogs() {
    let mut core = core_with(|c| c.idle_push_interval = Duration::from_millis(100));
    assert!(core.is_settled());
    let (batch, ..) = version_request(&core.commit(1, commit(vec![set("a", "1")]), 0));
    core.stop_taking_commits();
    let refused = answers(core.commit(2, commit(vec![set("b", "2")]), 1));
    assert!(
        matches!(refused[..], [(2, Err(ErrorCode::Unavailable))]),
        "{refused:?}"
    );
    assert!(!core.is_settled(), "a batch is in flight");
    core.on_sequenced(batch, sequenced(0, 10), 2);
    complete(&mut core, batch, 1_000);
    assert!(
        !core.is_settled(),
        "the TLogs do not know version 10 committed"
    );
    let (empty, ..) = version_request(&core.wake(100_000));
    core.on_sequenced(empty, sequenced(10, 20), 100_001);
    complete(&mut core, empty, 100_002);
    assert!(core.is_settled());
}

#[test]
fn a_paced_proxy_holds_queued_commits_until_the_pace_allows_and_refuses_none() {
    // No idle push wakes the core in between.
    let mut core = core_with(|c| c.idle_push_interval = Duration::from_secs(3600));
    let (start, ..) = version_request(&core.start(0));
    core.on_sequenced(start, sequenced(0, 5), 0);
    complete(&mut core, start, 0);
    let pace = Pace {
        bytes_per_second: 1000,
        why: "team-1 is behind".into(),
    };
    assert!(core.set_pace(Some(pace), 0).is_empty(), "nothing queued");
    assert!(core
        .status()
        .delaying
        .is_some_and(|d| d.contains("limited to 1000 B/s: team-1 is behind")));
    let value = "v".repeat(400);
    let (first, ..) = version_request(&core.commit(1, commit(vec![set("a", &value)]), 0));
    let spent = core.released_bytes();
    assert!(spent > 400);
    core.on_sequenced(first, sequenced(5, 10), 0);
    complete(&mut core, first, 0);
    // The first batch spent the credit: the next waits for it to come back.
    let due = spent * 1000;
    let commands = core.commit(2, commit(vec![set("b", &value)]), 1);
    assert!(
        matches!(commands[..], [Command::WakeAt { at_us }] if at_us == due),
        "{commands:?}"
    );
    assert!(core.commit(3, commit(vec![set("c", "1")]), 2).is_empty());
    assert!(core.wake(due - 1).is_empty(), "too early");
    let (second, _, commits) = version_request(&core.wake(due));
    assert_eq!(commits, 2, "what waited goes in one batch");
    core.on_sequenced(second, sequenced(10, 20), due);
    let answered = answers(complete(&mut core, second, due));
    assert_eq!(answered, [(2, Ok(Version(20))), (3, Ok(Version(20)))]);

    // Lifting the limit lets a waiting commit go at once.
    assert!(matches!(
        core.commit(4, commit(vec![set("d", &value)]), due + 1)[..],
        [Command::WakeAt { .. }]
    ));
    version_request(&core.set_pace(None, due + 2));
    assert_eq!(core.status().delaying, None);
}

#[test]
fn a_new_proxy_pushes_an_empty_batch_at_once_and_again_until_one_goes_through() {
    let interval = Duration::from_millis(100);
    let mut core = core_with(|c| c.idle_push_interval = interval);
    let interval_us = interval.as_micros() as u64;
    // The first: at once, before any commit.
    let (first, _, commits) = version_request(&core.start(0));
    assert_eq!(commits, 0);
    // The sequencer is not open yet: tried again after the interval.
    let commands = core.on_sequenced(first, Err("not open".into()), 10);
    assert!(
        matches!(commands[..], [Command::WakeAt { at_us }] if at_us == interval_us),
        "{commands:?}"
    );
    assert!(core.wake(interval_us - 1).is_empty());
    let (again, ..) = version_request(&core.wake(interval_us));
    core.on_sequenced(again, sequenced(0, 7), interval_us);
    complete(&mut core, again, interval_us);
    assert_eq!(core.status().known_committed_version, Version(7));
    // Pushed once, with nothing to tell: an idle proxy stays quiet.
    assert!(core.wake(10 * interval_us).is_empty());
}
