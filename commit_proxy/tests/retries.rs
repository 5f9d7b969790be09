//! The proxy service against a scripted sequencer and scripted TLogs on
//! loopback: a one-off transient failure of any commit-path call (versions
//! and resolution, push, report) is retried and the commit goes through, at the
//! versions first handed out; a refusal is not retried. (The proxy's first,
//! empty batch goes through unscripted.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::topology::Topology;
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use proto::clock::SystemClock;
use proto::rpc::{
    ClientCommitRequest, ErrorCode, ErrorReply, GetCommitVersionReply, Message, ResolveReply,
    SequenceReply, TLogCommitReply,
};
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::transport::{serve, Responder, RpcClient, RpcError, ServerConfig, Service};
use proto::{Mutation, ProxyId, StorageServerId, StorageTeamId, Version};
use tokio::net::TcpListener;

/// How a scripted service answers the first request of a kind.
#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Answer,
    /// Drops the request unanswered after carrying it out (the caller gets
    /// `unknown`, as when a reply is lost).
    LoseReply,
    /// Refuses it as busy, without carrying it out.
    Busy,
    /// Refuses it as a poisoned TLog does (a failed fsync), until it is
    /// restarted: the next request finds it back.
    Poisoned,
    /// Refuses it for good.
    Refuse,
}

/// Answers requests, failing the first of each kind after it is armed as
/// told; counts them.
struct Scripted {
    first: BTreeMap<&'static str, First>,
    /// Set once the proxy's first, empty batch went through: the script
    /// is for the client's commits.
    armed: AtomicBool,
    calls: Mutex<BTreeMap<&'static str, u32>>,
    /// The sequencer's versions by request number: a retry gets the same.
    versions: Mutex<BTreeMap<u64, GetCommitVersionReply>>,
}

impl Scripted {
    fn new(first: &[(&'static str, First)]) -> Arc<Scripted> {
        Arc::new(Scripted {
            first: first.iter().copied().collect(),
            armed: AtomicBool::new(false),
            calls: Mutex::new(BTreeMap::new()),
            versions: Mutex::new(BTreeMap::new()),
        })
    }

    /// Counts from zero, and fails from now on as scripted.
    fn arm(&self) {
        self.calls.lock().unwrap().clear();
        self.armed.store(true, Ordering::SeqCst);
    }

    fn calls(&self, kind: &str) -> u32 {
        self.calls.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    fn answer(&self, request: &Message) -> Result<Message, ErrorReply> {
        match request {
            Message::Sequence(r) => {
                let mut versions = self.versions.lock().unwrap();
                let next = versions.len() as u64;
                let versions = *versions
                    .entry(r.request_num)
                    .or_insert(GetCommitVersionReply {
                        prev_version: Version(next * 10),
                        version: Version(next * 10 + 10),
                    });
                Ok(Message::SequenceReply(SequenceReply {
                    versions,
                    resolved: Ok(ResolveReply {
                        metadata: Vec::new(),
                        conflicts: Vec::new(),
                    }),
                }))
            }
            Message::ReportCommitted(_) => Ok(Message::ReportCommittedReply),
            Message::RegisterTeam(_) => Ok(Message::RegisterTeamReply),
            Message::TLogCommit(r) => Ok(Message::TLogCommitReply(TLogCommitReply {
                version: r.version,
            })),
            other => Err(ErrorReply::new(ErrorCode::UnknownMessage, other.name())),
        }
    }
}

impl Service for Scripted {
    fn handle(&self, request: Message, responder: Responder) {
        let kind = request.name();
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let count = calls.entry(kind).or_default();
            *count += 1;
            *count
        };
        let first = match self.armed.load(Ordering::SeqCst) {
            true => self.first.get(kind).copied().unwrap_or(First::Answer),
            false => First::Answer,
        };
        let answer = self.answer(&request);
        match (call, first) {
            (1, First::LoseReply) => drop(responder),
            (1, First::Busy) => {
                responder.reply(Err(ErrorReply::new(ErrorCode::Unavailable, "busy")))
            }
            (1, First::Poisoned) => {
                responder.reply(Err(ErrorReply::new(ErrorCode::Poisoned, "fsync failed")))
            }
            (_, First::Refuse) => {
                responder.reply(Err(ErrorReply::new(ErrorCode::VersionConflict, "refused")))
            }
            _ => responder.reply(answer),
        }
    }
}

async fn listen(service: Arc<Scripted>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service: Arc<dyn Service> = service;
    tokio::spawn(serve(
        listener,
        service,
        ServerConfig::default(),
        std::future::pending(),
    ));
    addr
}

/// One team of one server on two TLogs (both hold it).
fn topology() -> Topology {
    Topology {
        tlog_count: 2,
        replication: 2,
        broadcast: true,
        teams: [(StorageTeamId(1), vec![StorageServerId(10)])].into(),
        private_teams: [(StorageServerId(10), StorageTeamId(1010))].into(),
        metadata_team: None,
    }
}

/// A proxy over the scripted sequencer and TLogs, and a client of it.
async fn proxy(sequencer: &Arc<Scripted>, tlogs: &[Arc<Scripted>]) -> RpcClient {
    let mut tlog_addrs = Vec::new();
    for tlog in tlogs {
        tlog_addrs.push(listen(tlog.clone()).await);
    }
    let shards = ShardMap::new([(Bytes::new(), ShardAssignment::to(StorageTeamId(1)))]).unwrap();
    let config = ProxyConfig::new(
        ProxyId(1),
        listen(sequencer.clone()).await,
        tlog_addrs,
        topology(),
        shards,
    );
    let service = ProxyService::start(
        config,
        Arc::new(SystemClock::default()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // A new proxy pushes an empty batch first; the scripts are for what
    // comes after it.
    let pushed = tokio::time::timeout(Duration::from_secs(10), async {
        while sequencer.calls("report_committed") == 0 {
            tokio::task::yield_now().await;
        }
    });
    pushed.await.expect("the proxy's first push within 10 s");
    for scripted in std::iter::once(sequencer).chain(tlogs) {
        scripted.arm();
    }
    let service: Arc<dyn Service> = Arc::new(service);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        service,
        ServerConfig::default(),
        std::future::pending(),
    ));
    RpcClient::connect(addr, Default::default()).await.unwrap()
}

async fn commit(client: &RpcClient) -> Result<Message, RpcError> {
    client
        .call(Message::ClientCommit(ClientCommitRequest {
            mutations: vec![Mutation::SetValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            }],
            ..ClientCommitRequest::default()
        }))
        .await
}

#[tokio::test]
async fn a_one_off_failure_of_any_commit_path_call_is_retried() {
    for (kind, first) in [
        ("sequence", First::LoseReply),
        ("sequence", First::Busy),
        ("report_committed", First::LoseReply),
        ("tlog_commit", First::LoseReply),
        ("tlog_commit", First::Busy),
        ("tlog_commit", First::Poisoned),
    ] {
        let on_sequencer = kind != "tlog_commit";
        let script = [(kind, first)];
        let (sequencer_script, tlog_script): (&[_], &[_]) = if on_sequencer {
            (&script, &[])
        } else {
            (&[], &script)
        };
        let sequencer = Scripted::new(sequencer_script);
        let tlogs = [Scripted::new(&[]), Scripted::new(tlog_script)];
        let client = proxy(&sequencer, &tlogs).await;
        let reply = commit(&client).await;
        assert!(
            matches!(reply, Ok(Message::ClientCommitReply(ref r)) if r.version == Version(20)),
            "{kind} {first:?}: {reply:?}"
        );
        let failing = if on_sequencer { &sequencer } else { &tlogs[1] };
        assert_eq!(failing.calls(kind), 2, "{kind} {first:?}: sent again once");
        assert_eq!(tlogs[0].calls("tlog_commit"), 1, "{kind} {first:?}");
        // The next commit follows on the chain.
        let reply = commit(&client).await;
        assert!(
            matches!(reply, Ok(Message::ClientCommitReply(ref r)) if r.version == Version(30)),
            "{kind} {first:?}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_push_is_not_retried_and_leaves_the_outcome_unknown() {
    let sequencer = Scripted::new(&[]);
    let tlogs = [
        Scripted::new(&[]),
        Scripted::new(&[("tlog_commit", First::Refuse)]),
    ];
    let client = proxy(&sequencer, &tlogs).await;
    match commit(&client).await {
        Err(RpcError::Remote { code, .. }) => assert_eq!(code, ErrorCode::CommitUnknownResult),
        other => panic!("expected commit_unknown_result, got {other:?}"),
    }
    assert_eq!(tlogs[1].calls("tlog_commit"), 1);
}
