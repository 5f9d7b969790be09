//! Moving a key range to another storage team while the cluster serves it:
//! one metadata commit starts the move, the destination's servers copy the
//! range and follow its new mutations, and a second commit flips the map.
//!
//! ```text
//!  read the map over [begin, end) ─▶ refuse shards already moving elsewhere
//!  commit: \xff/keyServers/<piece> = {src S, dest T} (and split at end)
//!     proxies tag the range to S and T; T's servers copy it from S
//!  poll T's servers: every piece copied and durable on each ─▶
//!  commit: \xff/keyServers/<piece> = {src T}; S's servers drop it
//!  not ready within the deadline ─▶ commit {src S} back: cancelled
//! ```
//!
//! Every commit of a move is decided on the shard map as just read, and
//! is conditional on it: the resolver refuses it (`not_committed`) when
//! the map over the range changed since, and the mover reads again and
//! decides again. So two movers, or a mover and a cancel, never act on a
//! map the other already changed: a move whose shards were taken back or
//! sent elsewhere meanwhile ends as [`MoveError::Superseded`], and one
//! flipped by another mover ends flipped. A mover that has just written
//! the map knows it as of its own commit, and makes its next commit
//! conditional on that without reading it again; only a conflict sends
//! it back to reading. While waiting, the start is committed again now
//! and then: a copied page is installed and flushed only as versions
//! move, and an idle cluster makes none.

use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use proto::rpc::{ErrorCode, GetKeyLocationReply, KeyRange, Message};
use proto::system_keys::{key_servers_key, ShardAssignment, USER_KEYS_END};
use proto::{key_after, Mutation, StorageServerId, StorageTeamId, Version};

use crate::{Client, ClientError};

mod boundaries;

/// How often the destination's servers are asked how far they are.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the start is committed again while the copy goes on.
const NUDGE_INTERVAL: Duration = Duration::from_millis(100);
/// How long one of the move's commits is tried again (after a transient
/// failure, or a change of the map it was decided on) before the move
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
    /// Someone else changed the shard map under the move (took it back,
    /// or moved a shard elsewhere): this mover left it as it found it.
    #[error("the shard map changed under the move: {0}")]
    Superseded(String),
    /// Two shards a merge was asked to join cannot be: they are not
    /// neighbours as named, or are held by different teams.
    #[error("not merged: {0}")]
    NotMergeable(String),
    /// The current generation leaves every server of the destination team
    /// out: none would copy the range, so none would hold it after the flip.
    #[error(
        "every server of {0} is left out of the current generation; nothing would copy the range"
    )]
    TeamLeftOut(StorageTeamId),
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
    /// The stored size still to copy (keys, values and a per-pair
    /// overhead), by the sources' byte samples; `None` while some piece
    /// has no estimate yet.
    pub size_left: Option<u64>,
    /// The stored size copied a second, over the last few seconds.
    pub size_per_sec: u64,
    /// Every piece is copied and durable there.
    pub ready: bool,
    /// What holds it back, when something does.
    pub problem: Option<String>,
}

impl std::fmt::Display for ServerProgress {
    /// `ss-200: ready` or `ss-200: 3400 pairs (12.0 MiB stored) copied,
    /// about 80.0 MiB left at 40.0 MiB/s, done in about 2 s`, with what
    /// holds it back if something does.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ready {
            return write!(f, "{}: ready", self.server);
        }
        let progress = proto::units::copy_progress(
            self.pairs_copied,
            self.bytes_copied,
            self.size_left,
            self.size_per_sec,
        );
        write!(f, "{}: {progress}", self.server)?;
        match &self.problem {
            Some(problem) => write!(f, "; {problem}"),
            None => Ok(()),
        }
    }
}

/// A finished move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The version that started the move (none when nothing had to move).
    pub started: Option<Version>,
    /// A version from which the destination answers for the range.
    pub flipped: Option<Version>,
    pub servers: Vec<ServerProgress>,
}

/// The shard map over a range, as one read saw it.
struct MapView {
    /// The shards over the range, in key order, as the proxies gave them.
    shards: Vec<GetKeyLocationReply>,
    /// The shard holding the range's end, when that is a user key.
    at_end: Option<GetKeyLocationReply>,
    /// Every change up to this version is in the view.
    as_of: Version,
    /// The shard-map keys the view depends on.
    watched: KeyRange,
}

impl MapView {
    /// The shards over `[begin, end)`, clipped to it.
    fn pieces(&self, begin: &Bytes, end: &Bytes) -> Vec<(Piece, Vec<StorageTeamId>)> {
        self.shards
            .iter()
            .map(|shard| {
                let piece = Piece {
                    begin: shard.begin.clone().max(begin.clone()),
                    end: shard.end.clone().min(end.clone()),
                    src: source_teams(shard),
                };
                (piece, shard.moving_to.clone())
            })
            .collect()
    }

    /// Where a planned piece stands now.
    fn standing(&self, piece: &Piece, to: StorageTeamId) -> Standing {
        let shard = self
            .shards
            .iter()
            .find(|s| s.begin <= piece.begin && piece.begin < s.end);
        match shard {
            Some(s) if s.end < piece.end => Standing::Changed(format!(
                "the shard at {:?} was split at {:?}",
                piece.begin, s.end
            )),
            Some(s) if source_teams(s) == piece.src && s.moving_to == [to] => Standing::Moving,
            Some(s) if source_teams(s) == [to] && s.moving_to.is_empty() => Standing::Flipped,
            Some(s) => Standing::Changed(format!(
                "the shard at {:?} is now on {:?}, moving to {:?}",
                s.begin,
                source_teams(s),
                s.moving_to
            )),
            None => Standing::Changed(format!("no shard holds {:?}", piece.begin)),
        }
    }

    fn known(&self) -> Known {
        Known {
            as_of: self.as_of,
            watched: self.watched.clone(),
        }
    }

    /// `mutations` while every planned piece is still moving to `to`;
    /// nothing once they all flipped; superseded when the map changed
    /// otherwise.
    fn while_moving(
        &self,
        plan: &[Piece],
        to: StorageTeamId,
        mutations: &[Mutation],
    ) -> Result<Option<Vec<Mutation>>, MoveError> {
        match self.plan_standing(plan, to) {
            Standing::Moving => Ok(Some(mutations.to_vec())),
            Standing::Flipped => Ok(None),
            Standing::Changed(why) => Err(MoveError::Superseded(why)),
        }
    }

    /// Where every planned piece stands: all moving, all flipped, or the
    /// first change found.
    fn plan_standing(&self, plan: &[Piece], to: StorageTeamId) -> Standing {
        let all: Vec<Standing> = plan.iter().map(|p| self.standing(p, to)).collect();
        if all.iter().all(|s| *s == Standing::Moving) {
            return Standing::Moving;
        }
        if all.iter().all(|s| *s == Standing::Flipped) {
            return Standing::Flipped;
        }
        all.into_iter()
            .find(|s| matches!(s, Standing::Changed(_)))
            .unwrap_or_else(|| Standing::Changed("part of the move was flipped".to_owned()))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// `{src S, dest T}`, as the move started it.
    Moving,
    /// `{src T}`: the move is done.
    Flipped,
    Changed(String),
}

/// The shard map over a move's range as the mover knows it: unchanged
/// since `as_of` but for what the mover itself wrote at that version.
#[derive(Clone)]
struct Known {
    as_of: Version,
    watched: KeyRange,
}

/// What a decision on a view came to.
enum Decided {
    /// Committed at this version.
    Committed(Version),
    /// Nothing had to change; the view was as of this version.
    AlreadySo(Version),
}

/// How waiting for the destination's copy ended.
enum Copied {
    /// Every destination server is ready: the mover flips the map.
    Ready(Vec<ServerProgress>),
    /// Another mover flipped the map; it was seen so as of this version.
    FlippedByAnother(Version),
}

impl Decided {
    fn version(&self) -> Version {
        match self {
            Decided::Committed(v) | Decided::AlreadySo(v) => *v,
        }
    }
}

impl Client {
    /// Moves `[begin, end)` to team `to`, online, and returns once the map
    /// has flipped; `progress` hears how the copy stands after each poll.
    /// Gives up and takes the move back when the copy is not done within
    /// `deadline`. A range moving to `to` already (a move whose mover
    /// died) is taken over.
    pub async fn move_range(
        &self,
        begin: Bytes,
        end: Bytes,
        to: StorageTeamId,
        deadline: Duration,
        mut progress: impl FnMut(&[ServerProgress]),
    ) -> Result<MoveOutcome, MoveError> {
        check_range(&begin, &end)?;
        let mut destination = self
            .teams
            .get(&to)
            .cloned()
            .ok_or(MoveError::UnknownTeam(to))?;
        // A server the generation leaves out copies nothing: the move waits
        // for the others.
        let excluded = self.path.route().await?.excluded.clone();
        destination.retain(|server| !excluded.contains(server));
        if destination.is_empty() {
            return Err(MoveError::TeamLeftOut(to));
        }
        let mut plan = Vec::new();
        let (started, mut known) = self
            .commit_on_view(&begin, &end, None, |view| {
                plan.clear();
                for (piece, moving_to) in view.pieces(&begin, &end) {
                    if !moving_to.is_empty() && moving_to != [to] {
                        return Err(MoveError::AlreadyMoving {
                            begin: piece.begin,
                            to: moving_to,
                        });
                    }
                    if piece.src != [to] {
                        plan.push(piece);
                    }
                }
                if plan.is_empty() {
                    return Ok(None);
                }
                let mut start = with_destination(&plan, vec![to]);
                start.extend(split_at(view.at_end.as_ref(), &end));
                Ok(Some(start))
            })
            .await?;
        let Decided::Committed(started) = started else {
            return Ok(MoveOutcome {
                started: None,
                flipped: None,
                servers: Vec::new(),
            });
        };
        let waited = tokio::time::timeout(
            deadline,
            self.wait_until_copied(
                (&begin, &end),
                started,
                &plan,
                (to, &destination),
                &mut known,
                &mut progress,
            ),
        )
        .await;
        match waited {
            Ok(Ok(Copied::FlippedByAnother(flipped))) => Ok(MoveOutcome {
                started: Some(started),
                flipped: Some(flipped),
                servers: self.progress_of(&plan, &destination, started).await,
            }),
            Ok(Ok(Copied::Ready(servers))) => {
                let flip = plan
                    .iter()
                    .map(|p| assign(&p.begin, ShardAssignment::to(to)))
                    .collect::<Vec<_>>();
                let known = Some((known, flip.clone()));
                let (flipped, _) = self
                    .commit_on_view(&begin, &end, known, |view| {
                        view.while_moving(&plan, to, &flip)
                    })
                    .await?;
                Ok(MoveOutcome {
                    started: Some(started),
                    flipped: Some(flipped.version()),
                    servers,
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                // The timeout may have cut a nudge short: what the mover
                // knows may be older than the map, so it reads it.
                let back = with_destination(&plan, Vec::new());
                let (taken_back, _) = self
                    .commit_on_view(&begin, &end, None, |view| {
                        view.while_moving(&plan, to, &back)
                    })
                    .await?;
                if let Decided::AlreadySo(flipped) = taken_back {
                    // Another mover flipped it meanwhile: the range moved.
                    return Ok(MoveOutcome {
                        started: Some(started),
                        flipped: Some(flipped),
                        servers: self.progress_of(&plan, &destination, started).await,
                    });
                }
                let why = self
                    .progress_of(&plan, &destination, started)
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

    /// Takes back the moves under way in the shards `[begin, end)`
    /// touches, whole: each goes back to its source teams alone, and the
    /// destinations drop what they copied. For a move whose driver is
    /// gone; returns how many shards were moving.
    pub async fn cancel_moves(&self, begin: Bytes, end: Bytes) -> Result<usize, MoveError> {
        check_range(&begin, &end)?;
        let mut cancelled = 0;
        self.commit_on_view(&begin, &end, None, |view| {
            let back: Vec<Mutation> = view
                .shards
                .iter()
                .filter(|shard| !shard.moving_to.is_empty())
                .map(|shard| {
                    let assignment = ShardAssignment {
                        src: source_teams(shard),
                        dest: Vec::new(),
                    };
                    assign(&shard.begin, assignment)
                })
                .collect();
            cancelled = back.len();
            Ok((!back.is_empty()).then_some(back))
        })
        .await?;
        Ok(cancelled)
    }

    /// The shard map over `[begin, end)` and at `end`, read at one read
    /// version.
    async fn view(&self, begin: &Bytes, end: &Bytes) -> Result<MapView, ClientError> {
        let version = self.read_version().await?;
        let mut shards: Vec<GetKeyLocationReply> = Vec::new();
        let mut key = begin.clone();
        while key < *end {
            let shard = self.key_location(&key, version).await?;
            key = shard.end.clone();
            shards.push(shard);
        }
        let at_end = match end.as_ref() < USER_KEYS_END {
            true => Some(self.key_location(end, version).await?),
            false => None,
        };
        let as_of = shards
            .iter()
            .chain(&at_end)
            .map(|s| s.as_of)
            .min()
            .unwrap_or(version);
        let first = shards.first().map_or(begin, |s| &s.begin);
        let watched = KeyRange {
            begin: key_servers_key(first),
            end: key_after(&key_servers_key(end)),
        };
        Ok(MapView {
            shards,
            at_end,
            as_of,
            watched,
        })
    }

    /// Reads the map over `[begin, end)`, lets `decide` say what to commit
    /// on it (nothing: it is as wanted already), and commits that on the
    /// condition that the map there did not change since the read; when
    /// it did, reads and decides again, for up to `COMMIT_PATIENCE`.
    /// With `known`, first commits the mutations given with it on the map
    /// as known, reading only if that conflicts. Returns what it came to
    /// and the map as now known.
    async fn commit_on_view(
        &self,
        begin: &Bytes,
        end: &Bytes,
        known: Option<(Known, Vec<Mutation>)>,
        mut decide: impl FnMut(&MapView) -> Result<Option<Vec<Mutation>>, MoveError>,
    ) -> Result<(Decided, Known), MoveError> {
        if let Some((known, mutations)) = known {
            match self.commit_if_unchanged(mutations, &known).await {
                Ok(version) => {
                    let now = Known {
                        as_of: version,
                        ..known
                    };
                    return Ok((Decided::Committed(version), now));
                }
                Err(ClientError::Refused {
                    code: ErrorCode::NotCommitted,
                    ..
                }) => tracing::debug!("the shard map changed since the mover wrote it; reading it"),
                Err(e) => return Err(e.into()),
            }
        }
        let patience = tokio::time::Instant::now() + COMMIT_PATIENCE;
        loop {
            let view = match self.view(begin, end).await {
                Ok(view) => view,
                Err(e) if transient(&e) && tokio::time::Instant::now() < patience => {
                    tracing::debug!(error = %e, "the shard map could not be read; reading it again");
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(mutations) = decide(&view)? else {
                return Ok((Decided::AlreadySo(view.as_of), view.known()));
            };
            match self.commit_if_unchanged(mutations, &view.known()).await {
                Ok(version) => {
                    let now = Known {
                        as_of: version,
                        watched: view.watched,
                    };
                    return Ok((Decided::Committed(version), now));
                }
                Err(ClientError::Refused {
                    code: ErrorCode::NotCommitted,
                    ..
                }) if tokio::time::Instant::now() < patience => {
                    tracing::debug!(
                        "the shard map changed under a move's commit; reading it again"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Commits shard-map changes decided on the map as `known`, if it is
    /// unchanged since; a [`transient`] failure is answered by committing
    /// again, for up to `COMMIT_PATIENCE` (one whose result was unknown
    /// but took conflicts with itself, and the caller reads again). The
    /// patience bounds the time since the first attempt, not only the
    /// delays between attempts: against a stalled cluster one attempt may
    /// take the commit path's whole retry window.
    async fn commit_if_unchanged(
        &self,
        mutations: Vec<Mutation>,
        known: &Known,
    ) -> Result<Version, ClientError> {
        let read_ranges = vec![known.watched.clone()];
        let patience = tokio::time::Instant::now() + COMMIT_PATIENCE;
        (|| self.commit_system_if_unchanged(mutations.clone(), known.as_of, read_ranges.clone()))
            .retry(cluster::retry::backoff(COMMIT_PATIENCE))
            .when(|e| transient(e) && tokio::time::Instant::now() < patience)
            .notify(|e, _| tracing::debug!(error = %e, "a move's commit did not go through; committing it again"))
            .await
    }

    /// Waits until every destination server has every piece copied and
    /// durable, committing the start again now and then while the map
    /// still shows the move, or until a nudge finds the move flipped by
    /// another mover. The start is committed on the map as known only
    /// while that map shows the move: a map read that shows it flipped
    /// must not be followed by the start, which would take the range back
    /// to its old source.
    async fn wait_until_copied(
        &self,
        (begin, end): (&Bytes, &Bytes),
        started: Version,
        plan: &[Piece],
        (to, destination): (StorageTeamId, &[StorageServerId]),
        known: &mut Known,
        progress: &mut impl FnMut(&[ServerProgress]),
    ) -> Result<Copied, MoveError> {
        let start = with_destination(plan, vec![to]);
        let mut last_nudge = tokio::time::Instant::now();
        loop {
            let servers = self.progress_of(plan, destination, started).await;
            progress(&servers);
            if servers.iter().all(|s| s.ready) {
                return Ok(Copied::Ready(servers));
            }
            if last_nudge.elapsed() >= NUDGE_INTERVAL {
                let first = Some((known.clone(), start.clone()));
                let (decided, now) = self
                    .commit_on_view(begin, end, first, |view| {
                        view.while_moving(plan, to, &start)
                    })
                    .await?;
                if let Decided::AlreadySo(flipped) = decided {
                    return Ok(Copied::FlippedByAnother(flipped));
                }
                *known = now;
                last_nudge = tokio::time::Instant::now();
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// How each destination server stands with the pieces. A server that
    /// is in a piece's source team holds it already. One that has not
    /// applied the move's start (committed at `started`) is not ready,
    /// whatever it says of ranges it was adding before: the start may
    /// have cut those into new ranges it copies afresh.
    async fn progress_of(
        &self,
        pieces: &[Piece],
        destination: &[StorageServerId],
        started: Version,
    ) -> Vec<ServerProgress> {
        let mut servers = Vec::new();
        for id in destination {
            let mut standing = ServerProgress {
                server: *id,
                pairs_copied: 0,
                bytes_copied: 0,
                size_left: None,
                size_per_sec: 0,
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
                    // Known once every piece being added has an estimate.
                    standing.size_left = Some(0);
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
                                standing.size_left = standing
                                    .size_left
                                    .zip(a.size_left)
                                    .map(|(sum, left)| sum + left);
                                standing.size_per_sec += a.size_per_sec;
                                ready &= a.ready;
                                if a.problem.is_some() {
                                    standing.problem = a.problem.clone();
                                }
                            }
                            None => {
                                ready = false;
                                standing.size_left = None;
                            }
                        }
                    }
                    if status.applied_version < started {
                        ready = false;
                        standing.problem = Some(format!(
                            "has not applied the move's start at {started} yet (applied {})",
                            status.applied_version
                        ));
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

/// The change that splits the shard holding `end` there, when `end` falls
/// inside it: both sides keep its assignment.
fn split_at(at_end: Option<&GetKeyLocationReply>, end: &Bytes) -> Option<Mutation> {
    let shard = at_end.filter(|s| s.begin != *end)?;
    let assignment = ShardAssignment {
        src: source_teams(shard),
        dest: shard.moving_to.clone(),
    };
    Some(assign(end, assignment))
}

/// A failure that asking again may get past: an unknown result, or a
/// cluster too busy or between generations (its proxies refusing or gone,
/// its sequencer unreachable).
fn transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::UnknownResult(_)
            | ClientError::Unavailable(_)
            | ClientError::Sequencer(_)
            | ClientError::Refused {
                code: ErrorCode::Overloaded | ErrorCode::Unavailable,
                ..
            }
    )
}

fn check_range(begin: &Bytes, end: &Bytes) -> Result<(), MoveError> {
    if begin >= end || end.as_ref() > USER_KEYS_END {
        return Err(MoveError::InvalidRange(format!(
            "[{begin:?}, {end:?}) is empty, reversed or reaches into the system keys"
        )));
    }
    Ok(())
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
