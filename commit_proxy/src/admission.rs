//! Admission control: a proxy slows new commits down while storage servers
//! fall behind, and refuses new commits to a team whose backlog passed the
//! hard limit, rather than acknowledge work they may never apply.
//!
//! ```text
//!  every 250 ms: each TLog's status ─▶ per team, the bytes its servers have
//!  not yet made durable (popped), the most over the team's TLogs, and the
//!  lowest version they popped
//!      ├─▶ rate_control ─▶ ProxyCore::set_pace ─▶ queued commits wait
//!      └─▶ judge: over the limit ─▶ throttled; under half of it ─▶ released
//!          ─▶ ProxyCore::set_throttled ─▶ commits touching a throttled team
//!                                         are refused `overloaded`, with why
//! ```
//!
//! Pacing keeps a team that is slow but moving under the limit. A team
//! with no server applying only grows its backlog, so it is throttled once
//! the backlog passes the limit, and released once a server catches up.
//! The release at half the limit keeps a team near the limit from flapping.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use proto::system_keys::METADATA_TEAM;
use proto::{StorageTeamId, Version};

use crate::proxy::Inner;
use crate::rate_control::{RateControl, TeamSample};

/// How often the TLogs' backlogs are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The teams to throttle, and why, given each team's backlog (bytes not
/// yet popped by its servers) and the teams throttled until now.
pub fn judge(
    throttled: &BTreeMap<StorageTeamId, String>,
    backlogs: &BTreeMap<StorageTeamId, u64>,
    limit: u64,
) -> BTreeMap<StorageTeamId, String> {
    backlogs
        .iter()
        .filter(|(team, bytes)| {
            let threshold = if throttled.contains_key(team) {
                limit / 2
            } else {
                limit
            };
            **bytes > threshold
        })
        .map(|(team, bytes)| {
            let why =
                format!("its storage servers have not made {bytes} bytes durable (limit {limit})");
            (*team, why)
        })
        .collect()
}

/// Reads the TLogs' backlogs every [`POLL_INTERVAL`] and hands the pace
/// and the teams to throttle to the core, until the service is dropped. A
/// TLog that does not answer leaves its teams as they were judged last.
pub(crate) async fn run(inner: Weak<Inner>, limit: u64) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples: BTreeMap<StorageTeamId, TeamSample> = BTreeMap::new();
    let mut rate_control = RateControl::new(limit);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut fresh: BTreeMap<StorageTeamId, TeamSample> = BTreeMap::new();
        let mut answered = true;
        for tlog in &inner.tlogs {
            let status = tlog.call(|c| async move { c.status().await }).await;
            match status {
                Ok(status) => {
                    // The controller, not a storage server, pops the
                    // metadata team: no commit could drain it faster.
                    let teams = status.teams.iter().filter(|t| t.team != METADATA_TEAM);
                    for team in teams {
                        merge(&mut fresh, team.team, team.bytes, team.popped);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "tlog status for admission control failed");
                    answered = false;
                }
            }
        }
        if answered {
            samples = fresh;
        } else {
            for (team, sample) in fresh {
                merge(&mut samples, team, sample.backlog, sample.popped);
            }
        }
        let backlogs = samples.iter().map(|(t, s)| (*t, s.backlog)).collect();
        inner.throttle(&backlogs, limit);
        inner.pace(&mut rate_control, &samples);
    }
}

/// Adds one TLog's figures for a team: the most bytes, the lowest pop.
fn merge(
    samples: &mut BTreeMap<StorageTeamId, TeamSample>,
    team: StorageTeamId,
    backlog: u64,
    popped: Version,
) {
    let sample = samples
        .entry(team)
        .or_insert(TeamSample { backlog, popped });
    sample.backlog = sample.backlog.max(backlog);
    sample.popped = sample.popped.min(popped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_is_throttled_past_the_limit_and_released_under_half_of_it() {
        let team = StorageTeamId(3);
        let backlog = |bytes| BTreeMap::from([(team, bytes), (StorageTeamId(4), 10)]);
        let none = BTreeMap::new();
        assert!(judge(&none, &backlog(1000), 1000).is_empty());
        let throttled = judge(&none, &backlog(1001), 1000);
        assert_eq!(throttled.keys().collect::<Vec<_>>(), [&team]);
        assert!(throttled[&team].contains("1001 bytes"));
        // Still throttled while above half the limit; released below it.
        assert_eq!(judge(&throttled, &backlog(600), 1000).len(), 1);
        assert!(judge(&throttled, &backlog(500), 1000).is_empty());
    }
}
