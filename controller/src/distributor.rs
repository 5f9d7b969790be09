//! The data distributor's runtime: every few seconds, while the controller
//! leads and the shard map is checkpointed, one round asks a server of
//! each team for the metrics of the shards the team holds, lets
//! `distribution::plan` pick the next changes, and carries them out
//! through the client library (a conditional split or merge, or a move to
//! its end).
//!
//! ```text
//!  checkpoint's map ─▶ Distributing::observe ─▶ (no round running, the last one
//!                                                ROUND_INTERVAL ago) spawn a round:
//!     shards by team ─ShardMetrics─▶ a server of each team ─▶ plan ─▶ Client::split_shard
//!                                                                    ├▶ Client::merge_shards
//!                                                                    └▶ Client::move_range
//!  status: what the last round found and did (`lines`)
//! ```
//!
//! Each round reads the configuration from the coordinators: the shards of
//! leaving teams move off first, and status says how many each still
//! holds, or that it has left.
//!
//! One round at a time: the moves a round plans run together, each to its
//! end (or taken back past its deadline: twice the time its bytes, and
//! those of the moves to the same team planned before it, take at
//! `move_bytes_per_sec`, plus 30 s), and no round plans moves before they
//! all ended. Moves others started (`teamlog move`) hold back balancing
//! and merges, but not a leaving team's moves (`distribution::InFlight`).
//! A round that cannot get a team's metrics changes nothing: it
//! cannot tell a balanced cluster from one it half sees.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::moves::{MoveError, ServerProgress};
use client::Client;
use cluster::DistributionSettings;
use coordinator::client::CoordinatorClient;
use proto::key_text::escape;
use proto::rpc::{KeyRange, MAX_SHARD_METRICS_RANGES};
use proto::shard_map::ShardMap;
use proto::{StorageTeamId, Version};

use crate::distribution::{move_deadline, plan, InFlight, Move, ShardLoad};

/// How long after a round ends the next one may start.
const ROUND_INTERVAL: Duration = Duration::from_secs(2);

/// Rounds or moves in a row that must fail before the distributor calls
/// itself stuck in status: one failure is a passing recovery or a server
/// restarting.
const FAILURES_TO_REPORT: u32 = 3;

/// How long rounds must have failed before the distributor calls itself
/// stuck.
const FAILING_TO_REPORT: Duration = Duration::from_secs(10);

/// Failures in a row: since when, how many, and the last one's reason.
struct Failures {
    since: tokio::time::Instant,
    count: u32,
    last: String,
}

impl Failures {
    fn note(slot: &mut Option<Failures>, why: String) {
        match slot {
            Some(failures) => {
                failures.count += 1;
                failures.last = why;
            }
            None => {
                *slot = Some(Failures {
                    since: tokio::time::Instant::now(),
                    count: 1,
                    last: why,
                })
            }
        }
    }
}

/// What the distributor says in status.
#[derive(Default)]
struct Said {
    /// The last round's view of the teams.
    summary: Option<String>,
    /// How each leaving team stands.
    leaving: Vec<String>,
    /// The last round's splits and merges, or why it changed nothing.
    round: Vec<String>,
    /// The moves under way, each with when it started and how its
    /// destination's servers last stood.
    moving: BTreeMap<usize, (String, tokio::time::Instant, Vec<ServerProgress>)>,
    /// How the last move ended.
    last_move: Option<String>,
    /// Rounds in a row that changed nothing because of an error.
    failed_rounds: Option<Failures>,
    /// Moves in a row that did not finish.
    failed_moves: Option<Failures>,
}

impl Said {
    /// Why the distributor is stuck, when rounds or moves keep failing.
    fn problem(&self) -> Option<String> {
        let rounds = self
            .failed_rounds
            .as_ref()
            .filter(|f| f.count >= FAILURES_TO_REPORT && f.since.elapsed() >= FAILING_TO_REPORT);
        let moves = self
            .failed_moves
            .as_ref()
            .filter(|f| f.count >= FAILURES_TO_REPORT);
        match (rounds, moves) {
            (Some(f), _) => Some(format!(
                "the data distributor changed nothing in its last {} rounds ({} s): {}",
                f.count,
                f.since.elapsed().as_secs(),
                f.last
            )),
            (None, Some(f)) => Some(format!(
                "the data distributor's last {} moves did not finish: {}",
                f.count, f.last
            )),
            (None, None) => None,
        }
    }

    /// A round got every team's metrics: what it found and did.
    fn round_went_through(&mut self, summary: String, round: Vec<String>) {
        self.summary = Some(summary);
        self.round = round;
        self.failed_rounds = None;
    }

    fn round_failed(&mut self, why: String) {
        self.round = vec![why.clone()];
        Failures::note(&mut self.failed_rounds, why);
    }

    fn lines(&self) -> Vec<String> {
        let moving = self.moving.values().map(|(m, since, servers)| {
            let mut line = format!("{m} (under way for {} s", since.elapsed().as_secs());
            for server in servers {
                line.push_str(&format!("; {server}"));
            }
            line + ")"
        });
        let last = self.last_move.iter().map(|m| format!("last move: {m}"));
        self.summary
            .iter()
            .cloned()
            .chain(self.leaving.iter().cloned())
            .chain(self.round.iter().cloned())
            .chain(moving)
            .chain(last)
            .collect()
    }
}

/// The distributor's rounds and moves, and what they said.
pub struct Distributing {
    settings: DistributionSettings,
    client: Arc<Client>,
    coordinators: Arc<CoordinatorClient>,
    rounds: tokio::task::JoinSet<Vec<Move>>,
    moves: tokio::task::JoinSet<()>,
    ended_at: Option<tokio::time::Instant>,
    said: Arc<Mutex<Said>>,
    /// Numbers the moves, so status keeps them apart.
    moves_started: usize,
}

impl Distributing {
    pub fn new(
        settings: DistributionSettings,
        client: Arc<Client>,
        coordinators: Arc<CoordinatorClient>,
    ) -> Self {
        Distributing {
            settings,
            client,
            coordinators,
            rounds: tokio::task::JoinSet::new(),
            moves: tokio::task::JoinSet::new(),
            ended_at: None,
            said: Arc::default(),
            moves_started: 0,
        }
    }

    /// Takes a checkpoint's shard map: starts the moves the last round
    /// chose, and a round when none is running and the last ended long
    /// enough ago.
    pub fn observe(&mut self, map: &ShardMap) {
        while self.moves.try_join_next().is_some() {}
        while let Some(ended) = self.rounds.try_join_next() {
            self.ended_at = Some(tokio::time::Instant::now());
            if let (Ok(chosen), true) = (ended, self.moves.is_empty()) {
                self.start_moves(chosen);
            }
        }
        let rested = self
            .ended_at
            .is_none_or(|at| at.elapsed() >= ROUND_INTERVAL);
        if !self.rounds.is_empty() || !rested {
            return;
        }
        let round = Round {
            settings: self.settings,
            client: self.client.clone(),
            coordinators: self.coordinators.clone(),
            said: self.said.clone(),
            moving: !self.moves.is_empty(),
        };
        let map = map.clone();
        self.rounds.spawn(async move { round.run(&map).await });
    }

    /// What the distributor last found and did.
    pub fn lines(&self) -> Vec<String> {
        self.said.lock().unwrap_or_else(|e| e.into_inner()).lines()
    }

    /// Why the distributor is stuck, when its rounds or moves keep
    /// failing.
    pub fn problem(&self) -> Option<String> {
        self.said
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problem()
    }

    /// Starts the moves of one round, together. A team's servers copy
    /// one range after another, so each move's deadline counts the bytes
    /// of the moves to its team planned before it.
    fn start_moves(&mut self, chosen: Vec<Move>) {
        let mut bytes_to: BTreeMap<StorageTeamId, u64> = BTreeMap::new();
        for chosen in chosen {
            let queued = bytes_to.entry(chosen.to).or_default();
            *queued += chosen.bytes;
            let deadline = move_deadline(&self.settings, *queued);
            self.moves_started += 1;
            self.start_move(self.moves_started, chosen, deadline);
        }
    }

    fn start_move(&mut self, number: usize, chosen: Move, deadline: Duration) {
        let client = self.client.clone();
        let said = self.said.clone();
        self.moves.spawn(async move {
            let doing = describe_move(&chosen);
            tracing::info!(%doing, ?deadline, "the data distributor moves a shard");
            let started = (doing.clone(), tokio::time::Instant::now(), Vec::new());
            say(&said, |s| {
                s.moving.insert(number, started);
            });
            let Move { begin, end, to, .. } = chosen;
            let moved = client
                .move_range(begin, end, to, deadline, |servers| {
                    say(&said, |s| {
                        if let Some((_, _, progress)) = s.moving.get_mut(&number) {
                            *progress = servers.to_vec();
                        }
                    })
                })
                .await;
            let (done, failed) = match moved {
                Ok(outcome) => match outcome.flipped {
                    Some(version) => (format!("flipped at version {version}"), false),
                    None => ("nothing had to move".to_owned(), false),
                },
                Err(e) => (format!("did not finish: {e}"), true),
            };
            tracing::info!(%doing, %done, "the data distributor's move ended");
            let line = format!("{doing}: {done}");
            say(&said, |s| {
                s.moving.remove(&number);
                if failed {
                    Failures::note(&mut s.failed_moves, line.clone());
                } else {
                    s.failed_moves = None;
                }
                s.last_move = Some(line);
            });
        });
    }
}

/// Changes what a background task says in status.
pub(crate) fn say<T>(said: &Mutex<T>, change: impl FnOnce(&mut T)) {
    change(&mut said.lock().unwrap_or_else(|e| e.into_inner()));
}

struct Round {
    settings: DistributionSettings,
    client: Arc<Client>,
    coordinators: Arc<CoordinatorClient>,
    said: Arc<Mutex<Said>>,
    /// The distributor's own move is under way.
    moving: bool,
}

impl Round {
    /// Gathers the metrics, makes the splits due, and returns the moves
    /// to start.
    async fn run(&self, map: &ShardMap) -> Vec<Move> {
        let in_flight = match (self.moving, map.entries().any(|(_, a)| !a.dest.is_empty())) {
            (true, _) => InFlight::OwnMoves,
            (false, true) => InFlight::OthersMoves,
            (false, false) => InFlight::Nothing,
        };
        let leaving: BTreeSet<StorageTeamId> = match self.coordinators.read_configuration().await {
            Ok(configuration) => configuration
                .leaving_teams
                .into_iter()
                .map(StorageTeamId)
                .collect(),
            Err(e) => {
                let why = format!("no configuration from the coordinators: {e}");
                tracing::debug!(%why, "the data distributor changes nothing this round");
                say(&self.said, |s| s.round_failed(why));
                return Vec::new();
            }
        };
        say(&self.said, |s| s.leaving = leaving_lines(&leaving, map));
        let shards = match self.loads(map).await {
            Ok(shards) => shards,
            Err(why) => {
                tracing::debug!(%why, "the data distributor changes nothing this round");
                say(&self.said, |s| s.round_failed(why));
                return Vec::new();
            }
        };
        let teams: Vec<StorageTeamId> = self.client.teams().collect();
        let summary = summary(&teams, &shards);
        let planned = plan(&self.settings, &teams, &leaving, &shards, in_flight);
        let mut round = Vec::new();
        for split in planned.splits {
            let doing = format!(
                "split [{}, {}) at {}: {}",
                escape(&split.begin),
                escape(&split.end),
                escape(&split.at),
                split.why
            );
            let done = ended(self.client.split_shard(split.at).await, "there already");
            tracing::info!(%doing, %done, "the data distributor split a shard");
            round.push(format!("{doing}: {done}"));
        }
        for merge in planned.merges {
            let doing = format!(
                "merge [{}, {}) and [{}, {}) on {}: {}",
                escape(&merge.begin),
                escape(&merge.at),
                escape(&merge.at),
                escape(&merge.end),
                merge.team,
                merge.why
            );
            let merged = self.client.merge_shards(merge.begin, merge.at).await;
            let done = ended(merged, "merged already");
            tracing::info!(%doing, %done, "the data distributor merged two shards");
            round.push(format!("{doing}: {done}"));
        }
        say(&self.said, |s| s.round_went_through(summary, round));
        planned.moves
    }

    /// The settled shards of each team, with their metrics from one of the
    /// team's servers.
    async fn loads(&self, map: &ShardMap) -> Result<Vec<ShardLoad>, String> {
        let mut by_team: BTreeMap<StorageTeamId, Vec<KeyRange>> = BTreeMap::new();
        for (begin, assignment) in map.entries() {
            if let ([team], []) = (assignment.src.as_slice(), assignment.dest.as_slice()) {
                let (_, end, _) = map.locate(begin);
                let range = KeyRange {
                    begin: begin.clone(),
                    end,
                };
                by_team.entry(*team).or_default().push(range);
            }
        }
        let mut shards = Vec::new();
        for (team, ranges) in by_team {
            for chunk in ranges.chunks(MAX_SHARD_METRICS_RANGES) {
                let metrics = self
                    .client
                    .shard_metrics(team, chunk.to_vec())
                    .await
                    .map_err(|e| format!("no metrics from team {team}: {e}"))?;
                shards.extend(chunk.iter().zip(metrics).map(|(range, metrics)| ShardLoad {
                    begin: range.begin.clone(),
                    end: range.end.clone(),
                    team,
                    metrics,
                }));
            }
        }
        Ok(shards)
    }
}

/// How a split or a merge ended, for status: its version, `already` when
/// the map was so already, or why it was not made.
fn ended(outcome: Result<Option<Version>, MoveError>, already: &str) -> String {
    match outcome {
        Ok(Some(version)) => format!("at version {version}"),
        Ok(None) => already.to_owned(),
        Err(e) => format!("not made: {e}"),
    }
}

/// How each leaving team stands: the shards it still holds (as a source
/// or a destination) by `map`, or that it has left.
fn leaving_lines(leaving: &BTreeSet<StorageTeamId>, map: &ShardMap) -> Vec<String> {
    leaving
        .iter()
        .map(|team| {
            let held = map
                .entries()
                .filter(|(_, a)| a.src.contains(team) || a.dest.contains(team))
                .count();
            match held {
                0 => format!("{team} has left: it holds no shard"),
                1 => format!("{team} is leaving: 1 shard to move off"),
                held => format!("{team} is leaving: {held} shards to move off"),
            }
        })
        .collect()
}

/// Shards, writes a second and bytes per team, in one line.
fn summary(teams: &[StorageTeamId], shards: &[ShardLoad]) -> String {
    let per_team: Vec<String> = teams
        .iter()
        .map(|team| {
            let on: Vec<&ShardLoad> = shards.iter().filter(|s| s.team == *team).collect();
            let writes: u64 = on.iter().map(|s| s.metrics.write_ops_per_sec).sum();
            let bytes: u64 = on.iter().map(|s| s.metrics.bytes).sum();
            format!(
                "{team}: {} shards, {writes} writes/s, {}",
                on.len(),
                proto::units::binary_bytes(bytes)
            )
        })
        .collect();
    per_team.join("; ")
}

fn describe_move(chosen: &Move) -> String {
    format!(
        "moving [{}, {}) (about {}) from {} to {}: {}",
        escape(&chosen.begin),
        escape(&chosen.end),
        proto::units::binary_bytes(chosen.bytes),
        chosen.from,
        chosen.to,
        chosen.why
    )
}

#[cfg(test)]
mod tests {
    use proto::StorageServerId;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rounds_that_keep_failing_are_reported_after_three_and_ten_seconds() {
        let mut said = Said::default();
        for _ in 0..FAILURES_TO_REPORT {
            said.round_failed("no metrics from team team-2: refused".into());
        }
        // Three quick failures may be one recovery: not stuck yet.
        assert_eq!(said.problem(), None);
        tokio::time::advance(FAILING_TO_REPORT).await;
        said.round_failed("no metrics from team team-2: timed out".into());
        assert_eq!(
            said.problem().as_deref(),
            Some(
                "the data distributor changed nothing in its last 4 rounds (10 s): \
                 no metrics from team team-2: timed out"
            )
        );
        assert_eq!(said.lines(), ["no metrics from team team-2: timed out"]);
        // A round that gets through clears it.
        said.round_went_through("team-2: 1 shards".into(), Vec::new());
        assert_eq!(said.problem(), None);
        assert_eq!(said.lines(), ["team-2: 1 shards"]);
    }

    #[test]
    fn moves_that_keep_failing_are_reported_until_one_finishes() {
        let mut said = Said::default();
        for n in 1..=FAILURES_TO_REPORT {
            assert_eq!(said.problem(), None);
            Failures::note(&mut said.failed_moves, format!("move {n}: did not finish"));
        }
        assert_eq!(
            said.problem().as_deref(),
            Some("the data distributor's last 3 moves did not finish: move 3: did not finish")
        );
    }

    #[test]
    fn the_move_under_way_says_how_each_destination_server_copies() {
        let progress = |server, ready| ServerProgress {
            server: StorageServerId(server),
            pairs_copied: 3_000,
            bytes_copied: (12 << 20) - 3_000 * 32,
            size_left: Some(20 << 20),
            size_per_sec: 10 << 20,
            ready,
            problem: None,
        };
        let said = Said {
            moving: BTreeMap::from([(
                1,
                (
                    "moving [a, b) (about 32.0 MiB) from team-1 to team-2: why".to_owned(),
                    tokio::time::Instant::now(),
                    vec![progress(200, false), progress(201, true)],
                ),
            )]),
            last_move: Some("moving [x, y): flipped at version 9".to_owned()),
            ..Said::default()
        };
        assert_eq!(
            said.lines(),
            [
                "moving [a, b) (about 32.0 MiB) from team-1 to team-2: why (under way for 0 s; \
                 ss-200: 3000 pairs (12.0 MiB stored) copied, about 20.0 MiB left at 10.0 MiB/s, done in about 2 s; \
                 ss-201: ready)",
                "last move: moving [x, y): flipped at version 9",
            ]
        );
    }

    #[test]
    fn a_leaving_team_is_said_to_hold_what_it_sends_or_receives_until_it_holds_nothing() {
        use bytes::Bytes;
        use proto::system_keys::ShardAssignment;
        let team = StorageTeamId;
        let moving = ShardAssignment {
            src: vec![team(1)],
            dest: vec![team(3)],
        };
        let map = ShardMap::new([
            (Bytes::new(), ShardAssignment::to(team(3))),
            (Bytes::from_static(b"m"), moving),
            (Bytes::from_static(b"t"), ShardAssignment::to(team(2))),
        ])
        .unwrap();
        assert_eq!(
            leaving_lines(&BTreeSet::from([team(1), team(2), team(3), team(4)]), &map),
            [
                "team-1 is leaving: 1 shard to move off",
                "team-2 is leaving: 1 shard to move off",
                "team-3 is leaving: 2 shards to move off",
                "team-4 has left: it holds no shard",
            ]
        );
    }
}
