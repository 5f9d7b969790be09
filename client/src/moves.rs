//! Moving a key range to another storage team while the cluster serves it:
//! one metadata commit starts the move, the destination's servers copy the
//! range and follow its new mutations, and a second commit flips the map.
//!
//! ```text
//!  read the map over [begin, end) ─▶ refuse shards already moving
//!  commit: \xff/keyServers/<piece> = {src S, dest T} (and split at end)
//!     proxies tag the range to S and T; T's servers copy it from S
//!  poll T's servers: every piece copied and durable on each ─▶
//!  commit: \xff/keyServers/<piece> = {src T}; S's servers drop it
//!  not ready within the deadline ─▶ commit {src S} back: cancelled
//! ```
//!
//! While waiting, the start is committed again now and then: a copied
//! page is installed and flushed only as versions move, and an idle
//! cluster makes none. One mover at a time: two moves of one range at
//! once are not guarded against.

use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use proto::rpc::{ErrorCode, GetKeyLocationReply, Message};
use proto::system_keys::{key_servers_key, ShardAssignment, USER_KEYS_END};
use proto::{Mutation, StorageServerId, StorageTeamId, Version};

use crate::{Client, ClientError};

/// How often the destination's servers are asked how far they are.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the start is committed again while the copy goes on.
const NUDGE_INTERVAL: Duration = Duration::from_millis(100);
/// How long one of the move's commits is tried again before the move
/// gives up with the last error.
const COMMIT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("invalid range: {0}")]
    InvalidRange(String),
    #[error("{0} is not a team of this cluster")]
    UnknownTeam(StorageTeamId),
    /// A shard of the range is being moved already; wait for that move.
    #[error("the shard at {begin:?} is already moving to {to:?}")]
    AlreadyMoving {
        begin: Bytes,
        to: Vec<StorageTeamId>,
    },
    /// The destination did not copy the range within the deadline; the
    /// move was taken back and the range stays where it was.
    #[error("cancelled: the copy was not done within {deadline:?} ({why})")]
    Cancelled { deadline: Duration, why: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One piece of the range: a shard clipped to it, with its source teams.
#[derive(Clone, Debug)]
struct Piece {
    begin: Bytes,
    end: Bytes,
    src: Vec<StorageTeamId>,
}

/// How a destination server stands, as the move last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerProgress {
    pub server: StorageServerId,
    pub pairs_copied: u64,
    pub bytes_copied: u64,
    /// Every piece is copied and durable there.
    pub ready: bool,
    /// What holds it back, when something does.
    pub problem: Option<String>,
}

/// A finished move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The version that started the move (none when nothing had to move).
    pub started: Option<Version>,
    /// The version from which the destination answers for the range.
    pub flipped: Option<Version>,
    pub servers: Vec<ServerProgress>,
}

impl Client {
    /// Moves `[begin, end)` to team `to`, online, and returns once the map
    /// has flipped; `progress` hears how the copy stands after each poll.
    /// Gives up and takes the move back when the copy is not done within
    /// `deadline`.
    pub async fn move_range(
        &self,
        begin: Bytes,
        end: Bytes,
        to: StorageTeamId,
        deadline: Duration,
        mut progress: impl FnMut(&[ServerProgress]),
    ) -> Result<MoveOutcome, MoveError> {
        if begin >= end || end.as_ref() > USER_KEYS_END {
            return Err(MoveError::InvalidRange(format!(
                "[{begin:?}, {end:?}) is empty, reversed or reaches into the system keys"
            )));
        }
        let destination = self
            .teams
            .get(&to)
            .cloned()
            .ok_or(MoveError::UnknownTeam(to))?;
        let (pieces, split_at_end) = self.pieces(&begin, &end, to).await?;
        let pieces: Vec<Piece> = pieces.into_iter().filter(|p| p.src != [to]).collect();
        if pieces.is_empty() {
            return Ok(MoveOutcome {
                started: None,
                flipped: None,
                servers: Vec::new(),
            });
        }
        let mut start = with_destination(&pieces, vec![to]);
        start.extend(split_at_end);
        let started = self.commit_idempotent(start.clone()).await?;
        let waited = tokio::time::timeout(
            deadline,
            self.wait_until_copied(&pieces, &destination, &start, &mut progress),
        )
        .await;
        match waited {
            Ok(Ok(servers)) => {
                let flip = pieces
                    .iter()
                    .map(|p| assign(&p.begin, ShardAssignment::to(to)))
                    .collect();
                let flipped = self.commit_idempotent(flip).await?;
                Ok(MoveOutcome {
                    started: Some(started),
                    flipped: Some(flipped),
                    servers,
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.commit_idempotent(with_destination(&pieces, Vec::new()))
                    .await?;
                let why = self
                    .progress_of(&pieces, &destination)
                    .await
                    .iter()
                    .filter(|s| !s.ready)
                    .map(|s| {
                        let problem = s.problem.as_deref().unwrap_or("copying");
                        format!("{}: {problem}", s.server)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(MoveError::Cancelled { deadline, why })
            }
        }
    }

    /// The shards over `[begin, end)`, clipped to it, and the change that
    /// splits the shard at `end` when `end` falls inside one (both sides
    /// keep its assignment). A shard moving to `to` already is one an
    /// interrupted move of it left: this move takes it over.
    async fn pieces(
        &self,
        begin: &Bytes,
        end: &Bytes,
        to: StorageTeamId,
    ) -> Result<(Vec<Piece>, Option<Mutation>), MoveError> {
        let version = self.read_version().await?;
        let moving_elsewhere = |shard: &GetKeyLocationReply| {
            if shard.moving_to.is_empty() || shard.moving_to == [to] {
                Ok(())
            } else {
                Err(MoveError::AlreadyMoving {
                    begin: shard.begin.clone(),
                    to: shard.moving_to.clone(),
                })
            }
        };
        let mut pieces = Vec::new();
        let mut key = begin.clone();
        while key < *end {
            let shard = self.shard_at(&key, version).await?;
            moving_elsewhere(&shard)?;
            let piece_end = shard.end.clone().min(end.clone());
            pieces.push(Piece {
                begin: key.clone(),
                end: piece_end.clone(),
                src: source_teams(&shard),
            });
            key = piece_end;
        }
        let mut split = None;
        if end.as_ref() < USER_KEYS_END {
            let shard = self.shard_at(end, version).await?;
            moving_elsewhere(&shard)?;
            if shard.begin != *end {
                let assignment = ShardAssignment {
                    src: source_teams(&shard),
                    dest: shard.moving_to,
                };
                split = Some(assign(end, assignment));
            }
        }
        Ok((pieces, split))
    }

    /// Takes back the moves under way in the shards `[begin, end)`
    /// touches, whole: each goes back to its source teams alone, and the
    /// destinations drop what they copied. For a move whose driver is
    /// gone; returns how many shards were moving.
    pub async fn cancel_moves(&self, begin: Bytes, end: Bytes) -> Result<usize, MoveError> {
        if begin >= end || end.as_ref() > USER_KEYS_END {
            return Err(MoveError::InvalidRange(format!(
                "[{begin:?}, {end:?}) is empty, reversed or reaches into the system keys"
            )));
        }
        let version = self.read_version().await?;
        let mut back = Vec::new();
        let mut key = begin;
        while key < end {
            let shard = self.shard_at(&key, version).await?;
            if !shard.moving_to.is_empty() {
                let assignment = ShardAssignment {
                    src: source_teams(&shard),
                    dest: Vec::new(),
                };
                back.push(assign(&shard.begin, assignment));
            }
            key = shard.end;
        }
        let cancelled = back.len();
        if cancelled > 0 {
            self.commit_idempotent(back).await?;
        }
        Ok(cancelled)
    }

    /// Commits shard-map changes that may be committed again harmlessly:
    /// an unknown result, or a cluster too busy or between generations
    /// (its proxies refusing or gone), is answered by committing them
    /// again, for up to `COMMIT_PATIENCE`.
    async fn commit_idempotent(&self, mutations: Vec<Mutation>) -> Result<Version, ClientError> {
        (|| self.commit_system(mutations.clone()))
            .retry(cluster::retry::backoff(COMMIT_PATIENCE))
            .when(|e| {
                matches!(
                    e,
                    ClientError::UnknownResult(_)
                        | ClientError::Unavailable(_)
                        | ClientError::Refused {
                            code: ErrorCode::Overloaded | ErrorCode::Unavailable,
                            ..
                        }
                )
            })
            .notify(|e, _| tracing::debug!(error = %e, "a move's commit did not go through; committing it again"))
            .await
    }

    /// Waits until every destination server has every piece copied and
    /// durable, committing the start again now and then.
    async fn wait_until_copied(
        &self,
        pieces: &[Piece],
        destination: &[StorageServerId],
        start: &[Mutation],
        progress: &mut impl FnMut(&[ServerProgress]),
    ) -> Result<Vec<ServerProgress>, MoveError> {
        let mut last_nudge = tokio::time::Instant::now();
        loop {
            let servers = self.progress_of(pieces, destination).await;
            progress(&servers);
            if servers.iter().all(|s| s.ready) {
                return Ok(servers);
            }
            if last_nudge.elapsed() >= NUDGE_INTERVAL {
                self.commit_idempotent(start.to_vec()).await?;
                last_nudge = tokio::time::Instant::now();
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// How each destination server stands with the pieces. A server that
    /// is in a piece's source team holds it already.
    async fn progress_of(
        &self,
        pieces: &[Piece],
        destination: &[StorageServerId],
    ) -> Vec<ServerProgress> {
        let mut servers = Vec::new();
        for id in destination {
            let mut standing = ServerProgress {
                server: *id,
                pairs_copied: 0,
                bytes_copied: 0,
                ready: false,
                problem: None,
            };
            let status = match self.servers.get(id) {
                Some(peer) => peer
                    .call(|c| async move { c.call(Message::Status).await })
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("not in the cluster file".to_owned()),
            };
            match status {
                Ok(Message::StorageStatus(status)) => {
                    let mut ready = true;
                    for piece in pieces {
                        let holds = piece
                            .src
                            .iter()
                            .any(|team| self.teams.get(team).is_some_and(|s| s.contains(id)));
                        let adding = status
                            .adding
                            .iter()
                            .find(|a| a.begin <= piece.begin && piece.end <= a.end);
                        match adding {
                            _ if holds => {}
                            Some(a) => {
                                standing.pairs_copied += a.pairs_copied;
                                standing.bytes_copied += a.bytes_copied;
                                ready &= a.ready;
                                if a.problem.is_some() {
                                    standing.problem = a.problem.clone();
                                }
                            }
                            None => ready = false,
                        }
                    }
                    if let Some(stopped) = status.stopped {
                        standing.problem = Some(format!("stopped applying: {stopped}"));
                    }
                    standing.ready = ready;
                }
                Ok(other) => standing.problem = Some(format!("answered {}", other.name())),
                Err(e) => standing.problem = Some(e),
            }
            servers.push(standing);
        }
        servers
    }
}

/// Each piece kept on its source teams, moving to `dest` (none: staying).
fn with_destination(pieces: &[Piece], dest: Vec<StorageTeamId>) -> Vec<Mutation> {
    pieces
        .iter()
        .map(|p| {
            let assignment = ShardAssignment {
                src: p.src.clone(),
                dest: dest.clone(),
            };
            assign(&p.begin, assignment)
        })
        .collect()
}

/// The teams a shard is read from: its source teams.
fn source_teams(shard: &GetKeyLocationReply) -> Vec<StorageTeamId> {
    shard.teams.iter().map(|(team, _)| *team).collect()
}

fn assign(begin: &Bytes, assignment: ShardAssignment) -> Mutation {
    Mutation::SetValue {
        key: key_servers_key(begin),
        value: assignment.encode(),
    }
}
