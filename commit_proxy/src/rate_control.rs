//! Rate control: the limit a proxy puts on new commits while storage
//! servers fall behind, so that their backlog on the TLogs stays bounded
//! without refusing anything (FoundationDB's ratekeeper does this for the
//! whole cluster; here every proxy judges from the same TLog figures).
//!
//! ```text
//!  every poll: per team, bytes not yet popped (backlog) and popped version
//!      worst backlog among teams still making progress, below the hard limit
//!        ≤ SOFT/2            no limit
//!        ≤ SOFT              limit × 1.5 (lifted once it no longer binds)
//!        > TARGET, growing   limit × 0.5 (first: the rate just released)
//!        > SOFT, growing     limit × 0.75 (first: the rate just released)
//!        > TARGET, shrinking hold
//!        > SOFT, shrinking   limit × 1.1
//! ```
//!
//! SOFT is a quarter and TARGET half of the hard limit, past which a
//! team's commits are refused (`admission::judge`). Each proxy scales its
//! own rate by the same signal, so together they settle near what the
//! slowest team drains, whatever their share of the load. A team whose
//! servers popped nothing for [`STALL_AFTER`] while over SOFT (all of
//! them down, or one of two) cannot be helped by slowing everyone: it is
//! left to the hard limit, and the rest of the cluster runs at full speed.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::units::binary_bytes;
use proto::{StorageTeamId, Version};

use crate::pacing::Pace;

/// How long a team over SOFT may pop nothing before it counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// The lowest limit: a proxy keeps committing, so a team that stalls is
/// still noticed and its commits reach the hard limit.
pub const FLOOR_BYTES_PER_SECOND: f64 = 64.0 * 1024.0;

const DECREASE: f64 = 0.75;
const DECREASE_OVER_TARGET: f64 = 0.5;
const INCREASE: f64 = 1.1;
const RECOVER: f64 = 1.5;

/// What the TLogs say of one team: the most any of them holds for it and
/// the lowest version its servers popped on any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeamSample {
    pub backlog: u64,
    pub popped: Version,
}

#[derive(Clone, Copy, Debug)]
struct Track {
    backlog: u64,
    popped: Version,
    progressed_us: u64,
}

#[derive(Debug)]
pub struct RateControl {
    hard_limit: u64,
    limit: Option<f64>,
    teams: BTreeMap<StorageTeamId, Track>,
    /// The last poll's time and the proxy's released bytes then.
    last_poll: Option<(u64, u64)>,
}

impl RateControl {
    /// `hard_limit`: the backlog past which a team's commits are refused.
    pub fn new(hard_limit: u64) -> Self {
        RateControl {
            hard_limit,
            limit: None,
            teams: BTreeMap::new(),
            last_poll: None,
        }
    }

    /// Takes one poll's samples; `released_bytes` counts the commit bytes
    /// this proxy let into batches since it started. Returns the limit
    /// from now on.
    pub fn update(
        &mut self,
        now_us: u64,
        samples: &BTreeMap<StorageTeamId, TeamSample>,
        released_bytes: u64,
    ) -> Option<Pace> {
        let released_rate = match self.last_poll.replace((now_us, released_bytes)) {
            Some((at, released)) if now_us > at => {
                released_bytes.saturating_sub(released) as f64 * 1e6 / (now_us - at) as f64
            }
            _ => 0.0,
        };
        let soft = self.hard_limit / 4;
        let mut worst: Option<(StorageTeamId, u64, bool)> = None;
        let mut tracks = BTreeMap::new();
        for (team, sample) in samples {
            let before = self.teams.get(team);
            let progressed_us = match before {
                Some(track) if sample.popped <= track.popped => track.progressed_us,
                _ => now_us,
            };
            tracks.insert(
                *team,
                Track {
                    backlog: sample.backlog,
                    popped: sample.popped,
                    progressed_us,
                },
            );
            let stalled = sample.backlog > soft
                && now_us.saturating_sub(progressed_us) >= STALL_AFTER.as_micros() as u64;
            if stalled || sample.backlog > self.hard_limit {
                continue;
            }
            if worst.is_none_or(|(_, most, _)| sample.backlog > most) {
                let grew = before.is_some_and(|t| sample.backlog > t.backlog);
                worst = Some((*team, sample.backlog, grew));
            }
        }
        self.teams = tracks;
        self.limit = match worst {
            Some((_, backlog, grew)) if backlog > soft => {
                let base = self.limit.unwrap_or(released_rate);
                let over_target = backlog > self.hard_limit / 2;
                let next = match (grew, over_target) {
                    (true, true) => base * DECREASE_OVER_TARGET,
                    (true, false) => base * DECREASE,
                    (false, true) => base,
                    (false, false) => base * INCREASE,
                };
                Some(next.max(FLOOR_BYTES_PER_SECOND))
            }
            Some((_, backlog, _)) if backlog > soft / 2 => self
                .limit
                .map(|limit| limit * RECOVER)
                .filter(|limit| *limit < 2.0 * released_rate),
            _ => None,
        };
        let (team, backlog, grew) = worst?;
        self.limit.map(|limit| Pace {
            bytes_per_second: limit.round() as u64,
            why: format!(
                "{team}'s storage servers have {} not yet durable, {} (slowing past {}, \
                 refusing past {})",
                binary_bytes(backlog),
                if grew { "growing" } else { "not growing" },
                binary_bytes(soft),
                binary_bytes(self.hard_limit)
            ),
        })
    }
}

#[cfg(test)]
mod tests;
