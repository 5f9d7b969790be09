//! `TLogSource` against scripted TLog services on loopback: failing over
//! between replicas, retrying transient refusals with backoff, giving up
//! after the bounded attempts, and mapping refusals to `SourceError`s.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cursor::{PeekSource, SourceError, TLogSource, TLogSourceConfig};
use proto::rpc::{ErrorCode, ErrorReply, Message, PeekReply};
use proto::transport::{serve, Responder, ServerConfig, Service};
use proto::{StorageTeamId, Version};
use tokio::net::TcpListener;

const TEAM: StorageTeamId = StorageTeamId(4);
/// The popped version a scripted `peek_before_popped` names.
const POPPED: Version = Version(5);

/// Answers peeks from a script of outcomes; once the script runs out,
/// with an empty reply ending at `Version(9)`.
struct ScriptedTLog {
    script: Mutex<VecDeque<Result<(), ErrorCode>>>,
    peeks: Mutex<u32>,
}

impl Service for ScriptedTLog {
    fn handle(&self, request: Message, responder: Responder) {
        let Message::Peek(_) = request else {
            responder.reply(Err(ErrorReply::new(ErrorCode::UnknownMessage, "peek only")));
            return;
        };
        *self.peeks.lock().unwrap() += 1;
        let outcome = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
        responder.reply(
            outcome
                .map(|()| {
                    Message::PeekReply(PeekReply {
                        blocks: Vec::new(),
                        end: Version(9),
                        popped: Version::ZERO,
                        max_known_version: Version(8),
                        known_committed_version: Version(8),
                        end_of_stream: false,
                    })
                })
                .map_err(|code| match code {
                    ErrorCode::PeekBeforePopped => {
                        ErrorReply::new(code, "scripted").at_version(POPPED)
                    }
                    code => ErrorReply::new(code, "scripted"),
                }),
        );
    }
}

async fn scripted(script: Vec<Result<(), ErrorCode>>) -> (SocketAddr, Arc<ScriptedTLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Arc::new(ScriptedTLog {
        script: Mutex::new(script.into()),
        peeks: Mutex::new(0),
    });
    let serving: Arc<dyn Service> = service.clone();
    tokio::spawn(serve(
        listener,
        serving,
        ServerConfig::default(),
        std::future::pending(),
    ));
    (addr, service)
}

/// An address nobody listens on.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn config(max_attempts: u32) -> TLogSourceConfig {
    TLogSourceConfig {
        long_poll: Duration::ZERO,
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        ..TLogSourceConfig::default()
    }
}

fn peeks(tlog: &ScriptedTLog) -> u32 {
    *tlog.peeks.lock().unwrap()
}

#[tokio::test]
async fn fails_over_to_a_live_replica_and_stays_there() {
    let dead = dead_address().await;
    let (live, tlog) = scripted(Vec::new()).await;
    let source = TLogSource::new(config(4)).with_team(TEAM, vec![dead, live]);
    let reply = source.peek(TEAM, Version(1), 1024).await.unwrap();
    assert_eq!(reply.end, Version(9));
    source.peek(TEAM, Version(9), 1024).await.unwrap();
    assert_eq!(
        peeks(&tlog),
        2,
        "the second peek went straight to the live replica"
    );
}

#[tokio::test]
async fn transient_refusals_are_retried_with_backoff() {
    let (addr, tlog) = scripted(vec![
        Err(ErrorCode::Overloaded),
        Err(ErrorCode::Timeout),
        Ok(()),
    ])
    .await;
    let source = TLogSource::new(config(5)).with_default_replicas(vec![addr]);
    source.peek(TEAM, Version(1), 1024).await.unwrap();
    assert_eq!(peeks(&tlog), 3);
}

#[tokio::test]
async fn gives_up_after_the_bounded_attempts() {
    let (addr, tlog) = scripted(vec![Err(ErrorCode::Overloaded); 10]).await;
    let source = TLogSource::new(config(3)).with_default_replicas(vec![addr]);
    let error = source.peek(TEAM, Version(1), 1024).await.unwrap_err();
    assert!(
        matches!(error, SourceError::Unavailable { attempts: 3, .. }),
        "{error}"
    );
    assert!(error.is_retryable());
    assert_eq!(peeks(&tlog), 3);

    let source = TLogSource::new(config(2)).with_default_replicas(vec![dead_address().await]);
    let error = source.peek(TEAM, Version(1), 1024).await.unwrap_err();
    assert!(
        matches!(error, SourceError::Unavailable { attempts: 2, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn popped_data_is_reported_at_once() {
    let (addr, tlog) = scripted(vec![Err(ErrorCode::PeekBeforePopped)]).await;
    let source = TLogSource::new(config(5)).with_default_replicas(vec![addr]);
    assert_eq!(
        source.peek(TEAM, Version(1), 1024).await,
        Err(SourceError::Popped {
            begin: Version(1),
            popped: Some(POPPED)
        })
    );
    assert_eq!(peeks(&tlog), 1);
}

#[tokio::test]
async fn a_team_no_replica_knows_is_unknown() {
    let (a, _) = scripted(vec![Err(ErrorCode::UnknownTeam); 4]).await;
    let (b, _) = scripted(vec![Err(ErrorCode::UnknownTeam); 4]).await;
    let source = TLogSource::new(config(4)).with_team(TEAM, vec![a, b]);
    assert_eq!(
        source.peek(TEAM, Version(1), 1024).await,
        Err(SourceError::UnknownTeam)
    );
    let unrouted = TLogSource::new(config(4));
    assert_eq!(
        unrouted.peek(TEAM, Version(1), 1024).await,
        Err(SourceError::UnknownTeam)
    );
}
