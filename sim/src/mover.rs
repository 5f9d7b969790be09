//! The mover: moves of the workload's keys between the teams, cancels of
//! moves, splits and merges of shards, while the clients write and the faults
//! run, as `teamlog move` and the data distributor make them. Once the
//! faults stop, every move must end, taken over by the controller's move
//! keeper when its mover gave up.
//!
//! ```text
//!  0 ── faults ──▶ fault_end
//!  mover: move [k_a, k_b) to team t (deadline d) │ cancel moves in [k_a, k_b) │ split at k_a
//!         │ merge the shard holding k_a with the next
//!  after: the map over the keys names no destination within LIVENESS (moves settle)
//! ```
//!
//! Only a recruited cluster moves: a pinned proxy restarts from the
//! cluster file's shard map, which would forget the moves.

use std::time::Duration;

use bytes::Bytes;
use client::moves::MoveError;
use client::Client;
use coordinator::client::CoordinatorClient;
use proto::system_keys::USER_KEYS_END;
use proto::{StorageTeamId, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::now;
use crate::knobs::pick;
use crate::layout::{key, KEYS, TEAMS};
use crate::trace::Trace;

/// Keeps the mover's draws apart from the clients'.
const MOVER_STREAM: u64 = 0x6d6f_7665;
/// How long the mover waits for one move, cancel or split. A stalled
/// cluster may keep a commit's outcome unknown for longer than a move's
/// own patience; the mover then leaves the move to the controller's keeper
/// (or to the final checks), so that the run ends.
const OPERATION_BUDGET: Duration = Duration::from_secs(45);
/// How long the mover waits for the configuration before it moves anyway.
const READ_PATIENCE: Duration = Duration::from_secs(2);

pub struct Mover {
    pub seed: u64,
    pub fault_end: Duration,
    pub trace: Trace,
    /// Where the configuration is read: as `teamlog move` does, the mover
    /// moves nothing onto a leaving team.
    pub coordinators: Option<CoordinatorClient>,
}

impl Mover {
    /// Moves, cancels and splits until the faults stop.
    pub async fn run(&self, client: &Client) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ MOVER_STREAM);
        while now() < self.fault_end {
            let pause = Duration::from_millis(rng.random_range(50..1_000));
            tokio::time::sleep(pause).await;
            let first = rng.random_range(0..KEYS);
            let last = rng.random_range(first + 1..=KEYS);
            let (begin, end) = (Bytes::from(key(first)), Bytes::from(key(last)));
            let operation = self.operation(client, &mut rng, begin, end);
            if tokio::time::timeout(OPERATION_BUDGET, operation)
                .await
                .is_err()
            {
                self.trace.note(
                    "mover",
                    format!("gave up after {OPERATION_BUDGET:?}, outcome unknown"),
                );
            }
        }
    }

    /// One move, cancel, split or merge over `[begin, end)`, noted in the
    /// trace.
    async fn operation(&self, client: &Client, rng: &mut StdRng, begin: Bytes, end: Bytes) {
        match rng.random_range(0..10) {
            0 => {
                let outcome = client.cancel_moves(begin.clone(), end.clone()).await;
                self.trace.note(
                    "mover",
                    format!("cancel the moves in [{begin:?}, {end:?}): {outcome:?}"),
                );
            }
            1 => {
                let outcome = client.split_shard(begin.clone()).await;
                self.trace
                    .note("mover", format!("split at {begin:?}: {outcome:?}"));
            }
            2 => {
                let outcome = merge_after(client, &begin).await;
                self.trace.note(
                    "mover",
                    format!("merge the shard holding {begin:?} with the next: {outcome:?}"),
                );
            }
            _ => {
                let to = StorageTeamId(rng.random_range(1..=TEAMS));
                let deadline = Duration::from_secs(*pick(rng, &[1, 3, 10]));
                if self.leaving(to).await {
                    self.trace
                        .note("mover", format!("no move to {to}: it is leaving"));
                    return;
                }
                self.trace.note(
                    "mover",
                    format!("move [{begin:?}, {end:?}) to {to} within {deadline:?}"),
                );
                let outcome = client
                    .move_range(begin.clone(), end.clone(), to, deadline, |_| {})
                    .await;
                let said = match outcome {
                    Ok(done) => {
                        format!("started {:?}, flipped {:?}", done.started, done.flipped)
                    }
                    Err(e) => e.to_string(),
                };
                self.trace.note(
                    "mover",
                    format!("move [{begin:?}, {end:?}) to {to}: {said}"),
                );
            }
        }
    }

    /// Whether the configuration says `team` is leaving; `false` when it
    /// cannot be read, as `teamlog move` goes ahead then.
    async fn leaving(&self, team: StorageTeamId) -> bool {
        let Some(coordinators) = &self.coordinators else {
            return false;
        };
        let read = tokio::time::timeout(READ_PATIENCE, coordinators.read_configuration());
        matches!(read.await, Ok(Ok(c)) if c.leaving_teams.contains(&team.0))
    }

    /// Waits until no shard over the keys is moving, until `deadline`;
    /// whether they settled. A move whose mover gave up with its outcome
    /// unknown is the move keeper's to finish or take back.
    pub async fn settled(&self, client: &Client, deadline: Duration) -> bool {
        loop {
            match moving(client).await {
                Ok(None) => {
                    self.trace.note("mover", "no shard is moving");
                    return true;
                }
                Ok(Some(_)) | Err(_) if now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Some(shard)) => {
                    self.trace.violation(format!(
                        "a move did not end within {:?} after the faults stopped: {shard}",
                        crate::workload::LIVENESS
                    ));
                    return false;
                }
                Err(e) => {
                    self.trace
                        .violation(format!("the shard map could not be read: {e}"));
                    return false;
                }
            }
        }
    }
}

/// Merges the shard holding `key` with the one after it, as the map now
/// stands; the merge's version, or `None` when there is no shard after it.
async fn merge_after(client: &Client, key: &Bytes) -> Result<Option<Version>, MoveError> {
    let version = client.read_version().await?;
    let shard = client.key_location(key, version).await?;
    if shard.end.as_ref() >= USER_KEYS_END {
        return Ok(None);
    }
    client.merge_shards(key.clone(), shard.end).await
}

/// The first shard over the keys still moving, at a fresh read version.
async fn moving(client: &Client) -> Result<Option<String>, client::ClientError> {
    let version = client.read_version().await?;
    let end = Bytes::from(key(KEYS));
    let mut at = Bytes::from(key(0));
    while at < end {
        let shard = client.key_location(&at, version).await?;
        if !shard.moving_to.is_empty() {
            return Ok(Some(format!(
                "[{:?}, {:?}) moving to {:?} at {version}",
                shard.begin, shard.end, shard.moving_to
            )));
        }
        at = shard.end;
    }
    Ok(None)
}
