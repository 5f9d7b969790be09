//! The move keeper: finds moves whose driver is gone and has them driven
//! again, so that no move stays half done. A live driver commits its
//! move's start again every 100 ms while the copy goes on; a shard that
//! has been moving without such a commit for [`ORPHANED_AFTER_MS`] has
//! lost its driver, and the controller takes the move over (the mover's
//! commits are conditional on the map it read, so a driver that was only
//! slow and the controller never undo each other).
//!
//! ```text
//!  checkpoint: the map as of the TLogs' known committed, and the changes read
//!      ─▶ Keeper::observe (pure): moving shards, last touched ─▶ takeovers
//!      ─▶ runtime: Client::move_range(shard, to its destination), one task each
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client::Client;
use cluster::DistributionSettings;
use proto::key_text::escape;
use proto::rpc::KeyRange;
use proto::shard_map::ShardMap;
use proto::system_keys::parse_key_servers_key;
use proto::{Mutation, StorageTeamId, Version};

use crate::distribution::move_deadline;
use crate::distributor::say;

/// How long a shard may stay moving with no commit of its driver before
/// the controller takes its move over.
pub const ORPHANED_AFTER_MS: u64 = 10_000;

/// How long the controller's drive of a move it took over waits for the
/// copy before it takes the move back, when the source team cannot say
/// how large the shard is (else `distribution::move_deadline`).
pub const TAKEOVER_DEADLINE: Duration = Duration::from_secs(600);

/// A move to drive again: the shard `[begin, end)` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub begin: Bytes,
    pub end: Bytes,
    /// The shard's source team, which can say how large it is.
    pub from: Option<StorageTeamId>,
    pub to: StorageTeamId,
}

#[derive(Default)]
pub struct Keeper {
    /// Each moving shard, by begin: when the controller last saw its
    /// driver commit it (or first saw it moving).
    touched_ms: BTreeMap<Bytes, u64>,
    /// The shards the controller drives now.
    driving: BTreeSet<Bytes>,
}

impl Keeper {
    /// Takes the shard map as of a checkpoint and the changes read up to
    /// it; returns the moves to take over.
    pub fn observe(
        &mut self,
        now_ms: u64,
        map: &ShardMap,
        changes: &[(Version, Vec<Mutation>)],
    ) -> Vec<Takeover> {
        for mutation in changes.iter().flat_map(|(_, m)| m) {
            if let Mutation::SetValue { key, .. } = mutation {
                if let Some(begin) = parse_key_servers_key(key) {
                    self.touched_ms
                        .insert(Bytes::copy_from_slice(begin), now_ms);
                }
            }
        }
        let moving: Vec<Takeover> = map
            .entries()
            .filter_map(|(begin, a)| match a.dest.as_slice() {
                [to] => Some(Takeover {
                    begin: begin.clone(),
                    end: map.locate(begin).1,
                    from: a.src.first().copied(),
                    to: *to,
                }),
                _ => None,
            })
            .collect();
        let still: BTreeSet<&Bytes> = moving.iter().map(|m| &m.begin).collect();
        self.touched_ms.retain(|begin, _| still.contains(begin));
        let mut takeovers = Vec::new();
        for shard in moving {
            let touched = *self.touched_ms.entry(shard.begin.clone()).or_insert(now_ms);
            let orphaned = now_ms.saturating_sub(touched) >= ORPHANED_AFTER_MS;
            if orphaned && self.driving.insert(shard.begin.clone()) {
                takeovers.push(shard);
            }
        }
        takeovers
    }

    /// The controller's drive of the shard at `begin` ended; it is watched
    /// afresh from now.
    pub fn finished(&mut self, begin: &Bytes, now_ms: u64) {
        self.driving.remove(begin);
        if let Some(touched) = self.touched_ms.get_mut(begin) {
            *touched = now_ms;
        }
    }
}

/// The keeper, the client it drives moves through, and its drives under
/// way (dropped, as when the controller stops leading, they stop).
pub struct Keeping {
    keeper: Keeper,
    settings: DistributionSettings,
    client: Arc<Client>,
    drives: tokio::task::JoinSet<Bytes>,
    said: Arc<Mutex<Said>>,
}

/// What the keeper says in status: the moves it drives, and how the last
/// one ended.
#[derive(Default)]
struct Said {
    driving: BTreeMap<Bytes, (String, tokio::time::Instant)>,
    last: Option<String>,
}

impl Said {
    fn lines(&self) -> Vec<String> {
        let driving = self
            .driving
            .values()
            .map(|(what, since)| format!("{what} (under way for {} s)", since.elapsed().as_secs()));
        let last = self.last.iter().map(|l| format!("last takeover: {l}"));
        driving.chain(last).collect()
    }
}

impl Keeping {
    pub fn new(settings: DistributionSettings, client: Arc<Client>) -> Self {
        Keeping {
            keeper: Keeper::default(),
            settings,
            client,
            drives: tokio::task::JoinSet::new(),
            said: Arc::default(),
        }
    }

    /// The moves the controller drives, and how the last one ended.
    pub fn lines(&self) -> Vec<String> {
        self.said.lock().unwrap_or_else(|e| e.into_inner()).lines()
    }

    /// Takes a checkpoint's map and changes: notes the drives that ended,
    /// and starts one for each move to take over.
    pub fn observe(&mut self, now_ms: u64, map: &ShardMap, changes: &[(Version, Vec<Mutation>)]) {
        while let Some(ended) = self.drives.try_join_next() {
            if let Ok(begin) = ended {
                self.keeper.finished(&begin, now_ms);
            }
        }
        for takeover in self.keeper.observe(now_ms, map, changes) {
            tracing::warn!(
                begin = ?takeover.begin,
                to = %takeover.to,
                "a move lost its driver: the controller takes it over"
            );
            let client = self.client.clone();
            let settings = self.settings;
            let said = self.said.clone();
            self.drives.spawn(async move {
                let what = format!(
                    "taking over the move of [{}, {}) to {}, whose driver fell silent",
                    escape(&takeover.begin),
                    escape(&takeover.end),
                    takeover.to
                );
                let started = (what.clone(), tokio::time::Instant::now());
                say(&said, |s| {
                    s.driving.insert(takeover.begin.clone(), started);
                });
                let deadline = takeover_deadline(&client, &settings, &takeover).await;
                let Takeover { begin, end, to, .. } = takeover;
                let driven = client
                    .move_range(begin.clone(), end, to, deadline, |_| {})
                    .await;
                let ended = match driven {
                    Ok(outcome) => {
                        tracing::info!(?begin, flipped = ?outcome.flipped, "a move taken over ended");
                        match outcome.flipped {
                            Some(version) => format!("flipped at version {version}"),
                            None => "nothing had to move".to_owned(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(?begin, error = %e, "a move taken over did not flip");
                        format!("did not flip: {e}")
                    }
                };
                say(&said, |s| {
                    s.driving.remove(&begin);
                    s.last = Some(format!("{what}: {ended}"));
                });
                begin
            });
        }
    }
}

/// The deadline of a move taken over, from the shard's size as its source
/// team measures it; `TAKEOVER_DEADLINE` when it cannot say.
async fn takeover_deadline(
    client: &Client,
    settings: &DistributionSettings,
    takeover: &Takeover,
) -> Duration {
    let Some(from) = takeover.from else {
        return TAKEOVER_DEADLINE;
    };
    let range = KeyRange {
        begin: takeover.begin.clone(),
        end: takeover.end.clone(),
    };
    match client.shard_metrics(from, vec![range]).await {
        Ok(metrics) if metrics.len() == 1 => move_deadline(settings, metrics[0].bytes),
        Ok(_) => TAKEOVER_DEADLINE,
        Err(e) => {
            tracing::debug!(error = %e, "the size of a move taken over is unknown");
            TAKEOVER_DEADLINE
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::system_keys::{key_servers_key, ShardAssignment};

    use super::*;

    fn team(id: u64) -> StorageTeamId {
        StorageTeamId(id)
    }

    fn map(moving: bool) -> ShardMap {
        let c = if moving {
            ShardAssignment {
                src: vec![team(1)],
                dest: vec![team(2)],
            }
        } else {
            ShardAssignment::to(team(2))
        };
        ShardMap::new([
            (Bytes::new(), ShardAssignment::to(team(1))),
            (Bytes::from_static(b"c"), c),
            (Bytes::from_static(b"h"), ShardAssignment::to(team(1))),
        ])
        .unwrap()
    }

    fn nudge(version: u64) -> (Version, Vec<Mutation>) {
        let assignment = ShardAssignment {
            src: vec![team(1)],
            dest: vec![team(2)],
        };
        let set = Mutation::SetValue {
            key: key_servers_key(b"c"),
            value: assignment.encode(),
        };
        (Version(version), vec![set])
    }

    #[test]
    fn a_move_whose_driver_stopped_committing_is_taken_over_once() {
        let mut keeper = Keeper::default();
        let moving = map(true);
        assert!(keeper.observe(0, &moving, &[nudge(1)]).is_empty());
        // Its driver commits the start again: not orphaned.
        assert!(keeper.observe(9_000, &moving, &[nudge(2)]).is_empty());
        assert!(keeper.observe(18_000, &moving, &[]).is_empty());
        let takeover = Takeover {
            begin: Bytes::from_static(b"c"),
            end: Bytes::from_static(b"h"),
            from: Some(team(1)),
            to: team(2),
        };
        assert_eq!(keeper.observe(19_000, &moving, &[]), vec![takeover.clone()]);
        // Once: not again while the controller drives it.
        assert!(keeper.observe(40_000, &moving, &[]).is_empty());
        keeper.finished(&takeover.begin, 41_000);
        assert!(keeper.observe(50_000, &moving, &[]).is_empty());
        assert_eq!(keeper.observe(51_000, &moving, &[]), vec![takeover]);
    }

    #[test]
    fn a_shard_first_seen_moving_gets_the_full_wait_and_a_flipped_one_none() {
        let mut keeper = Keeper::default();
        // A new controller sees a move it never saw committed.
        assert!(keeper.observe(100_000, &map(true), &[]).is_empty());
        assert!(keeper.observe(109_999, &map(true), &[]).is_empty());
        assert_eq!(keeper.observe(110_000, &map(true), &[]).len(), 1);
        let mut keeper = Keeper::default();
        assert!(keeper.observe(0, &map(true), &[]).is_empty());
        assert!(keeper.observe(20_000, &map(false), &[]).is_empty());
        assert!(keeper.touched_ms.is_empty(), "forgotten once flipped");
    }

    #[test]
    fn status_names_the_moves_taken_over_and_how_the_last_ended() {
        let said = Said {
            driving: BTreeMap::from([(
                Bytes::from_static(b"c"),
                (
                    "taking over the move of [c, h) to team-2, whose driver fell silent".to_owned(),
                    tokio::time::Instant::now(),
                ),
            )]),
            last: Some("taking over the move of [a, b) to team-1, whose driver fell silent: flipped at version 7".to_owned()),
        };
        assert_eq!(
            said.lines(),
            [
                "taking over the move of [c, h) to team-2, whose driver fell silent (under way for 0 s)",
                "last takeover: taking over the move of [a, b) to team-1, whose driver fell silent: flipped at version 7",
            ]
        );
    }
}
