//! Who waits for the core's decision on a commit, lock, team
//! registration or generation begin, and how the decision reaches them.
//!
//! ```text
//!  RPC request ──▶ Waiter::Remote(Responder) ─┐
//!  in-process call ─▶ Waiter::Local(oneshot) ─┤ kept by the core until it decides
//!                                             ▼ (commits: the sync that makes them durable)
//!                      Waiter::complete(Outcome) ─▶ reply frame / oneshot
//! ```
//!
//! A network request is answered straight from the sync that decides it:
//! no task, channel or future per commit stands between the writer's report
//! and the reply.

use std::time::Instant;

use proto::rpc::{ErrorCode, ErrorReply, LockReply, Message, TLogCommitReply};
use proto::transport::Responder;
use proto::Version;
use tokio::sync::oneshot;

use crate::engine::{CoreError, LockOutcome};

/// What the core decided for a waiter.
pub enum Outcome {
    Commit(Result<Version, CoreError>),
    Lock(Result<LockOutcome, CoreError>),
    /// A team registration, or the begin of a generation: done once durable.
    Durable(Result<(), CoreError>),
}

pub enum Waiter {
    /// A caller in this process.
    Local(oneshot::Sender<Outcome>),
    /// A request from the network, answered with the outcome's reply.
    Remote {
        responder: Responder,
        received: Instant,
    },
}

impl Waiter {
    pub fn remote(responder: Responder) -> Waiter {
        Waiter::Remote {
            responder,
            received: Instant::now(),
        }
    }

    pub fn complete(self, outcome: Outcome) {
        match self {
            // The caller may have given up waiting; nothing to do then.
            Waiter::Local(sender) => drop(sender.send(outcome)),
            Waiter::Remote {
                responder,
                received,
            } => {
                if let Outcome::Commit(Ok(_)) = outcome {
                    record_commit_latency(received);
                }
                responder.reply(outcome.into_reply());
            }
        }
    }
}

impl Outcome {
    fn into_reply(self) -> Result<Message, ErrorReply> {
        match self {
            Outcome::Commit(result) => result
                .map(|version| Message::TLogCommitReply(TLogCommitReply { version }))
                .map_err(error_reply),
            Outcome::Lock(result) => result
                .map(|outcome| {
                    Message::LockReply(LockReply {
                        end_version: outcome.end_version,
                        known_committed_version: outcome.known_committed_version,
                    })
                })
                .map_err(error_reply),
            Outcome::Durable(result) => result
                .map(|()| Message::RegisterTeamReply)
                .map_err(error_reply),
        }
    }
}

/// Received → durable, for commits that succeeded.
pub fn record_commit_latency(received: Instant) {
    metrics::histogram!("teamlog_tlog_commit_latency_seconds")
        .record(received.elapsed().as_secs_f64());
}

pub fn error_reply(e: CoreError) -> ErrorReply {
    let code = match &e {
        CoreError::TLogStopped => ErrorCode::TLogStopped,
        CoreError::Poisoned => ErrorCode::Poisoned,
        CoreError::Malformed(_) => ErrorCode::MalformedRequest,
        CoreError::InvalidBlock { .. } => ErrorCode::InvalidBlock,
        CoreError::VersionConflict { .. } => ErrorCode::VersionConflict,
        CoreError::CommitTooOld { .. } => ErrorCode::CommitTooOld,
        CoreError::MissingPredecessor { .. } => ErrorCode::MissingPredecessor,
        CoreError::Overloaded => ErrorCode::Overloaded,
        CoreError::CommitTooLarge { .. } => ErrorCode::CommitTooLarge,
        CoreError::Corrupt(_) => ErrorCode::Corrupt,
        CoreError::PeekBeforePopped { .. } => ErrorCode::PeekBeforePopped,
        CoreError::UnknownTeam(_) => ErrorCode::UnknownTeam,
        CoreError::AlreadyBegun { .. } => ErrorCode::VersionConflict,
    };
    let reply = ErrorReply::new(code, e.to_string());
    match e {
        CoreError::PeekBeforePopped { popped, .. } => reply.at_version(popped),
        _ => reply,
    }
}
