//! The data distributor's rules: given the shards each team holds and what
//! its servers' samples say of them, the changes to make next. Pure:
//! the runtime (`distributor`) gathers the metrics and carries the change
//! out.
//!
//! ```text
//!  shards by team + ShardMetrics ─▶ plan ─▶ splits: each shard over its bytes or writes limit,
//!                                            cut where its samples say
//!                                         ─▶ none of its own moves in flight: up to max_moves_in_flight
//!                                            moves, first each shard of a leaving team, to the
//!                                            staying team with the fewest bytes; then, with no
//!                                            move at all in flight, each the shard (of
//!                                            those not split or moved) of the busiest staying
//!                                            team that evens it best with the idlest, by writes
//!                                            a second, then bytes, as the moves planned before
//!                                            it leave the teams
//!                                         ─▶ no move in flight or planned: each pair of neighbouring
//!                                            shards of one team small and cold enough together
//!                                            is merged
//! ```
//!
//! A shard hot enough to unbalance teams alone is cut, round after round,
//! until its pieces can be spread. A move must leave the two teams
//! closer than it found them (the shard's load is below their
//! difference), so moves never chase one another back and forth; and
//! splitting by writes, not only by bytes, is what lets a small range of
//! hot keys spread at all. Planning several moves at once, each on the
//! loads the ones before it leave, spreads a new team's share in a few
//! rounds instead of one round per shard.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use cluster::DistributionSettings;
use proto::rpc::ShardMetrics;
use proto::StorageTeamId;

/// A settled shard (one source team, no move) and its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLoad {
    pub begin: Bytes,
    pub end: Bytes,
    pub team: StorageTeamId,
    pub metrics: ShardMetrics,
}

/// Cut the shard `[begin, end)` at `at`, both sides staying on its team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub begin: Bytes,
    pub end: Bytes,
    pub at: Bytes,
    pub why: String,
}

/// Move the shard `[begin, end)` from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub begin: Bytes,
    pub end: Bytes,
    pub from: StorageTeamId,
    pub to: StorageTeamId,
    /// The shard's bytes, as measured.
    pub bytes: u64,
    pub why: String,
}

/// Join the neighbouring shards `[begin, at)` and `[at, end)` of `team`
/// into one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    pub begin: Bytes,
    pub at: Bytes,
    pub end: Bytes,
    pub team: StorageTeamId,
    pub why: String,
}

/// Two neighbouring shards are merged only when, together, they hold at
/// most this share of the split limits and of the imbalance the
/// distributor leaves alone (`1 / MERGE_SHARE`). Below the split limits,
/// a shard just split (over a limit) is never merged straight back;
/// below the imbalance, no merge makes a shard too big to even the teams
/// out with.
pub const MERGE_SHARE: u64 = 2;

/// The slack every move gets beyond twice its expected time.
pub const MOVE_SLACK: Duration = Duration::from_secs(30);

/// How long a move of a shard of `bytes` may take before it is taken
/// back: twice the time its bytes take at the settings' copy rate, plus
/// `MOVE_SLACK`.
pub fn move_deadline(settings: &DistributionSettings, bytes: u64) -> Duration {
    let expected = bytes as f64 / settings.move_bytes_per_sec.max(1) as f64;
    Duration::from_secs_f64(2.0 * expected) + MOVE_SLACK
}

/// What the distributor does next: every split due, and the moves to
/// start together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub splits: Vec<Split>,
    pub moves: Vec<Move>,
    pub merges: Vec<Merge>,
}

/// Which moves are in flight as a round plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// None: every kind of change may be planned.
    Nothing,
    /// Only moves the distributor did not start (`teamlog move`'s, or one
    /// the move keeper finishes). A leaving team's shards still move off,
    /// which needs no even view of the loads, so that a stream of such
    /// moves cannot hold a team's removal back; nothing is moved to
    /// balance the teams, nor merged, until they end.
    OthersMoves,
    /// The distributor's own: no move starts until every one ends.
    OwnMoves,
}

/// The changes due. `teams` are every team of the cluster, of which
/// `leaving` are being emptied (`cluster::configuration`); `in_flight`
/// says which moves are under way (a moving shard's load counts for no
/// team).
pub fn plan(
    settings: &DistributionSettings,
    teams: &[StorageTeamId],
    leaving: &BTreeSet<StorageTeamId>,
    shards: &[ShardLoad],
    in_flight: InFlight,
) -> Plan {
    let staying: Vec<StorageTeamId> = teams
        .iter()
        .filter(|t| !leaving.contains(t))
        .copied()
        .collect();
    let splits: Vec<Split> = shards.iter().filter_map(|s| split(settings, s)).collect();
    let mut moves: Vec<Move> = Vec::new();
    // The shards as the planned moves leave them.
    let mut after: Vec<ShardLoad> = shards.to_vec();
    // Only a leaving team's shards move while others' moves are under way.
    let balancing = in_flight == InFlight::Nothing;
    while in_flight != InFlight::OwnMoves && moves.len() < settings.max_moves_in_flight {
        let movable = |s: &ShardLoad| {
            !splits.iter().any(|split| split.begin == s.begin)
                && !moves.iter().any(|m| m.begin == s.begin)
        };
        let next = drain(&staying, leaving, &after, movable).or_else(|| {
            if !balancing {
                return None;
            }
            balance(
                &staying,
                &after,
                movable,
                settings.min_imbalance_writes_per_sec,
                |m| m.write_ops_per_sec,
                "writes/s",
            )
            .or_else(|| {
                balance(
                    &staying,
                    &after,
                    movable,
                    settings.min_imbalance_bytes,
                    |m| m.bytes,
                    "bytes",
                )
            })
        });
        let Some(next) = next else {
            break;
        };
        if let Some(moved) = after.iter_mut().find(|s| s.begin == next.begin) {
            moved.team = next.to;
        }
        moves.push(next);
    }
    let merges = match balancing && moves.is_empty() {
        true => merges(settings, shards, &splits),
        false => Vec::new(),
    };
    Plan {
        splits,
        moves,
        merges,
    }
}

/// The merges due, on a cluster with no move in flight or planned: each
/// pair of neighbouring shards of one team that together stay within
/// `1 / MERGE_SHARE` of both the split limits and the imbalances left
/// alone, taken left to right so that no shard is in two merges; a shard
/// being split is in none.
fn merges(settings: &DistributionSettings, shards: &[ShardLoad], splits: &[Split]) -> Vec<Merge> {
    let max_bytes = settings.max_shard_bytes.min(settings.min_imbalance_bytes) / MERGE_SHARE;
    let max_writes = settings
        .max_shard_writes_per_sec
        .min(settings.min_imbalance_writes_per_sec)
        / MERGE_SHARE;
    let mut in_order: Vec<&ShardLoad> = shards
        .iter()
        .filter(|s| !splits.iter().any(|split| split.begin == s.begin))
        .collect();
    in_order.sort_by(|a, b| a.begin.cmp(&b.begin));
    let mut merges = Vec::new();
    let mut i = 0;
    while i + 1 < in_order.len() {
        let (left, right) = (in_order[i], in_order[i + 1]);
        let bytes = left.metrics.bytes.saturating_add(right.metrics.bytes);
        let writes = left
            .metrics
            .write_ops_per_sec
            .saturating_add(right.metrics.write_ops_per_sec);
        if left.end == right.begin
            && left.team == right.team
            && bytes <= max_bytes
            && writes <= max_writes
        {
            merges.push(Merge {
                begin: left.begin.clone(),
                at: right.begin.clone(),
                end: right.end.clone(),
                team: left.team,
                why: format!(
                    "together {writes} writes/s and {bytes} bytes, within {max_writes} and {max_bytes}"
                ),
            });
            i += 2;
        } else {
            i += 1;
        }
    }
    merges
}

/// The cut of a shard over a limit, where its samples say: by the measure
/// furthest over, else by the other.
fn split(settings: &DistributionSettings, shard: &ShardLoad) -> Option<Split> {
    let m = &shard.metrics;
    let writes = ratio(m.write_ops_per_sec, settings.max_shard_writes_per_sec);
    let bytes = ratio(m.bytes, settings.max_shard_bytes);
    if writes.max(bytes) <= 1.0 {
        return None;
    }
    let (first, second) = match writes >= bytes {
        true => (&m.split_by_writes, &m.split_by_bytes),
        false => (&m.split_by_bytes, &m.split_by_writes),
    };
    let at = first
        .iter()
        .chain(second)
        .find(|at| shard.begin < **at && **at < shard.end)?;
    Some(Split {
        begin: shard.begin.clone(),
        end: shard.end.clone(),
        at: at.clone(),
        why: format!(
            "{} writes/s and {} bytes, over the limits of {} and {}",
            m.write_ops_per_sec,
            m.bytes,
            settings.max_shard_writes_per_sec,
            settings.max_shard_bytes
        ),
    })
}

fn ratio(value: u64, limit: u64) -> f64 {
    value as f64 / limit.max(1) as f64
}

/// A move of the first `movable` shard of a leaving team to the staying
/// team with the fewest bytes.
fn drain(
    staying: &[StorageTeamId],
    leaving: &BTreeSet<StorageTeamId>,
    shards: &[ShardLoad],
    movable: impl Fn(&ShardLoad) -> bool,
) -> Option<Move> {
    let shard = shards
        .iter()
        .find(|s| leaving.contains(&s.team) && movable(s))?;
    let (to, least) = idlest(&per_team(staying, shards, |m| m.bytes))?;
    Some(Move {
        begin: shard.begin.clone(),
        end: shard.end.clone(),
        from: shard.team,
        to,
        bytes: shard.metrics.bytes,
        why: format!(
            "{} is leaving; {to} holds the fewest bytes ({least})",
            shard.team
        ),
    })
}

/// Each of `teams` with the `load` of its shards; shards of other teams
/// (leaving ones) count for none.
fn per_team(
    teams: &[StorageTeamId],
    shards: &[ShardLoad],
    load: impl Fn(&ShardMetrics) -> u64,
) -> BTreeMap<StorageTeamId, u64> {
    let mut per_team: BTreeMap<StorageTeamId, u64> = teams.iter().map(|t| (*t, 0)).collect();
    for shard in shards {
        if let Some(total) = per_team.get_mut(&shard.team) {
            *total += load(&shard.metrics);
        }
    }
    per_team
}

/// The team with the least load, the lowest id of those tied.
fn idlest(per_team: &BTreeMap<StorageTeamId, u64>) -> Option<(StorageTeamId, u64)> {
    let (team, load) = per_team
        .iter()
        .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))?;
    Some((*team, *load))
}

/// A move from the team with the most `load` to the one with the least,
/// when they differ by `min_difference` or more: the shard that evens
/// them best, of the `movable` ones whose load is below the difference.
fn balance(
    teams: &[StorageTeamId],
    shards: &[ShardLoad],
    movable: impl Fn(&ShardLoad) -> bool,
    min_difference: u64,
    load: impl Fn(&ShardMetrics) -> u64,
    unit: &str,
) -> Option<Move> {
    let per_team = per_team(teams, shards, &load);
    // Ties go to the lowest team id, so a decision replays.
    let (&busiest, &most) = per_team
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))?;
    let (idlest, least) = idlest(&per_team)?;
    let difference = most - least;
    if busiest == idlest || difference < min_difference.max(1) {
        return None;
    }
    let half = difference / 2;
    let shard = shards
        .iter()
        .filter(|s| s.team == busiest && movable(s))
        .filter(|s| (1..difference).contains(&load(&s.metrics)))
        .min_by_key(|s| (load(&s.metrics).abs_diff(half), s.begin.clone()))?;
    Some(Move {
        begin: shard.begin.clone(),
        end: shard.end.clone(),
        from: busiest,
        to: idlest,
        bytes: shard.metrics.bytes,
        why: format!(
            "{busiest} has {most} {unit} and {idlest} {least}; the shard has {}",
            load(&shard.metrics)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: u64) -> StorageTeamId {
        StorageTeamId(id)
    }

    fn shard(
        begin: &'static str,
        end: &'static str,
        on: u64,
        writes: u64,
        bytes: u64,
    ) -> ShardLoad {
        ShardLoad {
            begin: Bytes::from_static(begin.as_bytes()),
            end: Bytes::from_static(end.as_bytes()),
            team: team(on),
            metrics: ShardMetrics {
                bytes,
                write_ops_per_sec: writes,
                write_bytes_per_sec: writes * 100,
                split_by_bytes: None,
                split_by_writes: None,
            },
        }
    }

    fn settings() -> DistributionSettings {
        DistributionSettings {
            enabled: true,
            max_shard_bytes: 1_000_000,
            max_shard_writes_per_sec: 1_000,
            min_imbalance_bytes: 100_000,
            min_imbalance_writes_per_sec: 200,
            move_bytes_per_sec: 1_000_000,
            max_moves_in_flight: 8,
        }
    }

    /// The plan for a cluster with no team leaving and no move in flight.
    fn plan_idle(teams: &[StorageTeamId], shards: &[ShardLoad]) -> Plan {
        plan(
            &settings(),
            teams,
            &BTreeSet::new(),
            shards,
            InFlight::Nothing,
        )
    }

    /// Each planned move's shard begin, source and destination.
    fn moved(plan: &Plan) -> Vec<(&[u8], StorageTeamId, StorageTeamId)> {
        let moves = plan.moves.iter();
        moves.map(|m| (m.begin.as_ref(), m.from, m.to)).collect()
    }

    fn splits_at(plan: &Plan) -> Vec<(&[u8], &[u8])> {
        plan.splits
            .iter()
            .map(|s| (s.begin.as_ref(), s.at.as_ref()))
            .collect()
    }

    #[test]
    fn every_shard_over_a_limit_is_split_where_its_samples_say() {
        let mut hot = shard("a", "m", 1, 3_000, 10);
        hot.metrics.split_by_writes = Some(Bytes::from_static(b"c"));
        hot.metrics.split_by_bytes = Some(Bytes::from_static(b"h"));
        let mut big = shard("m", "t", 2, 0, 2_000_000);
        big.metrics.split_by_bytes = Some(Bytes::from_static(b"p"));
        let mut cool = shard("t", "z", 2, 10, 10);
        cool.metrics.split_by_writes = Some(Bytes::from_static(b"u"));
        let teams = [team(1), team(2)];
        let shards = [hot.clone(), big.clone(), cool];
        // Splits go on while a move is in flight.
        let planned = plan(
            &settings(),
            &teams,
            &BTreeSet::new(),
            &shards,
            InFlight::OwnMoves,
        );
        assert_eq!(splits_at(&planned), [(&b"a"[..], &b"c"[..]), (b"m", b"p")]);
        assert_eq!(planned.moves, []);
        // Over the bytes limit with no key to cut by bytes: cut by writes.
        big.metrics.split_by_bytes = None;
        big.metrics.split_by_writes = Some(Bytes::from_static(b"q"));
        // A split key outside the shard (a stale sample) is not used.
        hot.metrics.split_by_writes = Some(Bytes::from_static(b"m"));
        hot.metrics.split_by_bytes = None;
        let planned = plan(
            &settings(),
            &teams,
            &BTreeSet::new(),
            &[hot, big],
            InFlight::OwnMoves,
        );
        assert_eq!(splits_at(&planned), [(&b"m"[..], &b"q"[..])]);
    }

    #[test]
    fn the_busiest_team_gives_the_shard_that_evens_it_best() {
        let teams = [team(1), team(2), team(3)];
        let shards = [
            shard("a", "b", 1, 900, 0),
            shard("b", "c", 1, 500, 0),
            shard("c", "d", 1, 300, 0),
            shard("d", "e", 2, 400, 0),
        ];
        // Team 1 has 1700/s, team 3 none: half the difference is 850.
        // Then team 3 is the busiest, and holds no other shard to give.
        let planned = plan_idle(&teams, &shards);
        let [Move {
            begin, from, to, ..
        }] = planned.moves.as_slice()
        else {
            panic!("{planned:?}")
        };
        assert_eq!((begin.as_ref(), *from, *to), (&b"a"[..], team(1), team(3)));
        // Not while another move is in flight.
        assert_eq!(
            plan(
                &settings(),
                &teams,
                &BTreeSet::new(),
                &shards,
                InFlight::OwnMoves
            ),
            Plan::default()
        );
    }

    #[test]
    fn a_move_gets_twice_its_expected_time_and_the_slack() {
        let settings = DistributionSettings {
            move_bytes_per_sec: 10 << 20,
            ..settings()
        };
        assert_eq!(move_deadline(&settings, 0), MOVE_SLACK);
        assert_eq!(
            move_deadline(&settings, 100 << 20),
            Duration::from_secs(20) + MOVE_SLACK
        );
    }

    #[test]
    fn a_shard_being_split_is_not_moved() {
        let teams = [team(1), team(2)];
        let mut hot = shard("a", "b", 1, 1_500, 0);
        hot.metrics.split_by_writes = Some(Bytes::from_static(b"a5"));
        let shards = [hot, shard("b", "c", 1, 600, 0)];
        let planned = plan_idle(&teams, &shards);
        assert_eq!(splits_at(&planned), [(&b"a"[..], &b"a5"[..])]);
        let moved: Vec<&[u8]> = planned.moves.iter().map(|m| m.begin.as_ref()).collect();
        assert_eq!(moved, [&b"b"[..]]);
    }

    #[test]
    fn a_shard_is_not_moved_when_that_would_not_bring_the_teams_closer() {
        let teams = [team(1), team(2)];
        // One shard carries the whole difference: moving it only swaps
        // the teams' loads (it must be split first).
        let alone = [shard("a", "m", 1, 900, 0), shard("m", "z", 2, 0, 0)];
        assert_eq!(plan_idle(&teams, &alone), Plan::default());
        // A difference below the threshold is left alone.
        let close = [shard("a", "m", 1, 150, 0), shard("m", "z", 1, 40, 0)];
        assert_eq!(plan_idle(&teams, &close), Plan::default());
    }

    #[test]
    fn bytes_are_balanced_once_writes_are() {
        let teams = [team(1), team(2)];
        let shards = [
            shard("a", "f", 1, 100, 400_000),
            shard("f", "m", 1, 100, 300_000),
            shard("m", "z", 2, 150, 100_000),
        ];
        let planned = plan_idle(&teams, &shards);
        let moved: Vec<_> = planned.moves.iter().map(|m| (&m.begin, m.to)).collect();
        assert_eq!(moved, [(&Bytes::from_static(b"f"), team(2))]);
    }

    #[test]
    fn a_new_team_gets_its_share_in_one_round_each_move_planned_on_the_loads_the_others_leave() {
        let teams = [team(1), team(2), team(3)];
        let shards = [
            shard("a", "b", 1, 0, 500_000),
            shard("b", "c", 1, 0, 500_000),
            shard("c", "d", 1, 0, 500_000),
            shard("d", "e", 1, 0, 500_000),
            shard("e", "f", 2, 0, 500_000),
            shard("f", "g", 2, 0, 500_000),
            shard("g", "h", 2, 0, 500_000),
            shard("h", "i", 2, 0, 500_000),
        ];
        // Eight even shards over three teams: 3, 3 and 2 is as even as
        // they go; a third move would only swap which team has two.
        let planned = plan_idle(&teams, &shards);
        let moved = moved(&planned);
        assert_eq!(
            moved,
            [(&b"a"[..], team(1), team(3)), (&b"e"[..], team(2), team(3))]
        );
        // At most max_moves_in_flight of them.
        let one_at_a_time = DistributionSettings {
            max_moves_in_flight: 1,
            ..settings()
        };
        assert_eq!(
            plan(
                &one_at_a_time,
                &teams,
                &BTreeSet::new(),
                &shards,
                InFlight::Nothing
            )
            .moves
            .len(),
            1
        );
    }

    #[test]
    fn a_leaving_team_s_shards_move_to_the_emptiest_staying_teams_and_none_onto_it() {
        let teams = [team(1), team(2), team(3)];
        let leaving = BTreeSet::from([team(3)]);
        let shards = [
            shard("a", "b", 1, 0, 900_000),
            shard("b", "c", 2, 0, 300_000),
            shard("c", "d", 3, 50, 400_000),
            shard("d", "e", 3, 0, 400_000),
            shard("e", "f", 3, 0, 400_000),
        ];
        let planned = plan(&settings(), &teams, &leaving, &shards, InFlight::Nothing);
        // Each to the team with the fewest bytes once the moves before it
        // land: team 2 (300 kB, then 700 kB), then team 1 (900 kB against
        // 1.1 MB). Teams 1 and 2 are then within the imbalance left alone.
        let draining = [
            (&b"c"[..], team(3), team(2)),
            (&b"d"[..], team(3), team(2)),
            (&b"e"[..], team(3), team(1)),
        ];
        assert_eq!(moved(&planned), draining);
        // Empty, the leaving team is no one's destination, however idle:
        // teams 1 and 2 balance between themselves.
        let left = [
            shard("a", "b", 1, 0, 2_000_000),
            shard("b", "c", 1, 0, 2_000_000),
            shard("c", "d", 2, 0, 100_000),
        ];
        let planned = plan(&settings(), &teams, &leaving, &left, InFlight::Nothing);
        assert_eq!(moved(&planned), [(&b"a"[..], team(1), team(2))]);
        // While only others' moves are in flight, the leaving team's
        // shards still move off, but nothing moves to even teams 1 and 2.
        let others = plan(
            &settings(),
            &teams,
            &leaving,
            &shards,
            InFlight::OthersMoves,
        );
        assert_eq!(moved(&others), draining);
        let others = plan(&settings(), &teams, &leaving, &left, InFlight::OthersMoves);
        assert_eq!(others, Plan::default());
        // Nothing moves while one of the distributor's own is in flight.
        assert!(
            plan(&settings(), &teams, &leaving, &shards, InFlight::OwnMoves)
                .moves
                .is_empty()
        );
    }

    fn merged(plan: &Plan) -> Vec<(&[u8], &[u8], StorageTeamId)> {
        let merges = plan.merges.iter();
        merges
            .map(|m| (m.begin.as_ref(), m.at.as_ref(), m.team))
            .collect()
    }

    #[test]
    fn small_cold_neighbours_of_one_team_are_merged_in_pairs_left_to_right() {
        let teams = [team(1), team(2)];
        let shards = [
            shard("a", "b", 1, 10, 1_000),
            shard("b", "c", 1, 10, 1_000),
            shard("c", "d", 1, 10, 1_000),
            // Another team's neighbour is not merged with either side.
            shard("d", "e", 2, 0, 0),
            shard("e", "f", 1, 0, 0),
            // [f, g) is moving, so not in the loads: no neighbours here.
            shard("g", "h", 1, 0, 0),
        ];
        let planned = plan_idle(&teams, &shards);
        assert_eq!(planned.moves, []);
        // [a, b) and [b, c) join; [c, d) waits for the next round, which
        // sees [a, c) as one.
        assert_eq!(merged(&planned), [(&b"a"[..], &b"b"[..], team(1))]);
        let [merge] = planned.merges.as_slice() else {
            panic!("{planned:?}")
        };
        assert_eq!(merge.end.as_ref(), b"c");
    }

    #[test]
    fn shards_are_merged_only_well_within_the_limits_and_with_nothing_moving() {
        let teams = [team(1), team(2)];
        let leaving = BTreeSet::new();
        // Within half of the smaller of each measure's limits
        // (min_imbalance_writes_per_sec 200, min_imbalance_bytes 100 kB).
        let just = [
            shard("a", "b", 1, 50, 25_000),
            shard("b", "c", 1, 50, 25_000),
        ];
        assert_eq!(
            merged(&plan(
                &settings(),
                &teams,
                &leaving,
                &just,
                InFlight::Nothing
            ))
            .len(),
            1
        );
        let busy = [shard("a", "b", 1, 51, 0), shard("b", "c", 1, 50, 0)];
        assert_eq!(
            plan(&settings(), &teams, &leaving, &busy, InFlight::Nothing),
            Plan::default()
        );
        let big = [shard("a", "b", 1, 0, 25_001), shard("b", "c", 1, 0, 25_000)];
        assert_eq!(
            plan(&settings(), &teams, &leaving, &big, InFlight::Nothing),
            Plan::default()
        );
        // Nothing merges while a move is in flight, whoever's.
        for in_flight in [InFlight::OwnMoves, InFlight::OthersMoves] {
            assert_eq!(
                plan(&settings(), &teams, &leaving, &just, in_flight),
                Plan::default()
            );
        }
        // Nor in a round that moves: [c, d) evens teams 1 and 2 out.
        let uneven = [
            shard("a", "b", 1, 0, 0),
            shard("b", "c", 1, 0, 0),
            shard("c", "d", 1, 600, 0),
            shard("d", "e", 1, 300, 0),
        ];
        let planned = plan(&settings(), &teams, &leaving, &uneven, InFlight::Nothing);
        assert_eq!(moved(&planned), [(&b"c"[..], team(1), team(2))]);
        assert_eq!(planned.merges, []);
        // A shard being split is merged with neither neighbour.
        let mut hot = shard("b", "c", 1, 1_500, 0);
        hot.metrics.split_by_writes = Some(Bytes::from_static(b"b5"));
        let around = [shard("a", "b", 1, 0, 0), hot, shard("c", "d", 2, 0, 0)];
        let planned = plan(&settings(), &teams, &leaving, &around, InFlight::Nothing);
        assert_eq!(splits_at(&planned), [(&b"b"[..], &b"b5"[..])]);
        assert_eq!(planned.merges, []);
    }
}
