//! The model the cursor property tests compare against: random scenarios of
//! teams, commits, lagging TLogs and team-set changes, what each cursor kind
//! must yield for them, and a driver that reads a cursor the way a storage
//! server does, with resets at random points.
//!
//! ```text
//! Scenario ──publish chunk by chunk──▶ MemorySource ──▶ cursor ──drive──▶ output
//!     └──────────── expected_* (the model, in the cursor's order) ───────▶ compare
//! ```

#![allow(dead_code)] // each test binary uses its own part of the model

use std::collections::BTreeSet;

use bytes::Bytes;
use cursor::{BroadcastMode, MemorySource, PeekCursor, TeamSet};
use futures::executor::block_on;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, Version, VersionedMutation};

pub const SERVER: StorageServerId = StorageServerId(7);
/// Another server, whose team-set changes the cursor must ignore.
pub const OTHER_SERVER: StorageServerId = StorageServerId(8);
pub const PRIVATE_TEAM: StorageTeamId = StorageTeamId(50);

#[derive(Clone, Debug)]
pub struct CommitPlan {
    pub gap: u64,
    /// Each mutation: the indices of the teams it is tagged to (modulo the
    /// team count; index `teams.len()` is the private team in mutable
    /// scenarios) and its value length.
    pub mutations: Vec<(Vec<usize>, usize)>,
    /// A team-set write: team indices, for which server, at which position
    /// among the mutations.
    pub team_set: Option<(Vec<usize>, bool, usize)>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub broadcast: bool,
    pub teams: Vec<StorageTeamId>,
    pub commits: Vec<CommitPlan>,
    /// Per chunk of commits: how many refills to drive, and per team how
    /// many versions its TLog lags behind (none: up to date).
    pub chunks: Vec<(u8, Vec<Option<u8>>)>,
    /// Partial-pass lengths before a reset, used in turn.
    pub partial_passes: Vec<u8>,
    pub max_bytes: u32,
    /// The cursors' version limit per batch (`usize::MAX`: none to speak of).
    pub max_versions: usize,
    pub begin: u64,
    /// Initial team set (indices), for mutable scenarios.
    pub initial_set: Vec<usize>,
}

fn commit_plan(team_sets: bool) -> impl Strategy<Value = CommitPlan> {
    let team_set = if team_sets {
        proptest::option::weighted(
            0.3,
            (
                proptest::collection::vec(0usize..6, 0..4),
                proptest::bool::weighted(0.8),
                0usize..6,
            ),
        )
        .boxed()
    } else {
        Just(None).boxed()
    };
    (
        1u64..4,
        proptest::collection::vec(
            (proptest::collection::vec(0usize..7, 1..3), 0usize..24),
            0..5,
        ),
        team_set,
    )
        .prop_map(|(gap, mutations, team_set)| CommitPlan {
            gap,
            mutations,
            team_set,
        })
}

pub fn scenario(team_sets: bool) -> impl Strategy<Value = Scenario> {
    (
        any::<bool>(),
        proptest::collection::btree_set(
            (1u64..100).prop_filter("not private", |t| *t != 50),
            1..=6,
        ),
        proptest::collection::vec(commit_plan(team_sets), 1..40),
        proptest::collection::vec(
            (
                0u8..4,
                proptest::collection::vec(proptest::option::of(0u8..4), 6),
            ),
            1..8,
        ),
        proptest::collection::vec(0u8..12, 1..10),
        prop_oneof![Just(1u32), 16u32..300, Just(1u32 << 20)],
        prop_oneof![Just(usize::MAX), 1usize..4],
        0u64..6,
        proptest::collection::vec(0usize..6, 0..4),
    )
        .prop_map(
            |(
                broadcast,
                teams,
                commits,
                chunks,
                partial_passes,
                max_bytes,
                max_versions,
                begin,
                initial_set,
            )| {
                Scenario {
                    broadcast,
                    teams: teams.into_iter().map(StorageTeamId).collect(),
                    commits,
                    chunks,
                    partial_passes,
                    max_bytes,
                    max_versions,
                    begin,
                    initial_set,
                }
            },
        )
}

/// One commit as published: its version and tagged mutations.
pub struct Commit {
    pub version: Version,
    pub mutations: Vec<(StorageTeamId, Subsequence, Mutation)>,
    /// The team set written for `SERVER` here, if any (teams only).
    pub team_set: Option<BTreeSet<StorageTeamId>>,
}

impl Scenario {
    pub fn mode(&self) -> BroadcastMode {
        if self.broadcast {
            BroadcastMode::Broadcast
        } else {
            BroadcastMode::NoBroadcast
        }
    }

    pub fn begin(&self) -> Version {
        Version(self.begin)
    }

    fn team(&self, index: usize, with_private: bool) -> StorageTeamId {
        let count = self.teams.len() + usize::from(with_private);
        let index = index % count;
        self.teams.get(index).copied().unwrap_or(PRIVATE_TEAM)
    }

    fn set_of(&self, indices: &[usize]) -> BTreeSet<StorageTeamId> {
        indices.iter().map(|i| self.team(*i, false)).collect()
    }

    /// The commits, with versions and subsequences assigned.
    pub fn commits(&self, with_private: bool) -> Vec<Commit> {
        let mut version = 0;
        let mut out = Vec::new();
        for plan in &self.commits {
            version += plan.gap;
            let version = Version(version);
            let mut tagged: Vec<(Vec<StorageTeamId>, Mutation)> = plan
                .mutations
                .iter()
                .map(|(teams, len)| {
                    let teams: BTreeSet<_> =
                        teams.iter().map(|i| self.team(*i, with_private)).collect();
                    let fill = (version.0 % 251) as u8;
                    let value = Bytes::from(vec![fill; *len]);
                    (
                        teams.into_iter().collect(),
                        Mutation::SetValue {
                            key: Bytes::new(),
                            value,
                        },
                    )
                })
                .collect();
            let mut team_set = None;
            if let Some((indices, for_us, at)) = plan.team_set.as_ref().filter(|_| with_private) {
                let teams = self.set_of(indices);
                let server = if *for_us { SERVER } else { OTHER_SERVER };
                let mutation = TeamSet::new(PRIVATE_TEAM, teams.iter().copied()).mutation(server);
                tagged.insert((*at).min(tagged.len()), (vec![PRIVATE_TEAM], mutation));
                if *for_us {
                    team_set = Some(teams);
                }
            }
            let mut mutations = Vec::new();
            for (index, (teams, mutation)) in tagged.into_iter().enumerate() {
                let subsequence = Subsequence(index as u32 + 1);
                let mutation = match mutation {
                    Mutation::SetValue { key, value } if key.is_empty() => Mutation::SetValue {
                        key: Bytes::from(format!("{version}/{subsequence}")),
                        value,
                    },
                    other => other,
                };
                for team in teams {
                    mutations.push((team, subsequence, mutation.clone()));
                }
            }
            out.push(Commit {
                version,
                mutations,
                team_set,
            });
        }
        out
    }

    /// The team set in effect at the cursor's begin.
    pub fn team_set_at_begin(&self, commits: &[Commit]) -> BTreeSet<StorageTeamId> {
        let mut set = self.set_of(&self.initial_set);
        for commit in commits.iter().filter(|c| c.version < self.begin()) {
            if let Some(next) = &commit.team_set {
                set = next.clone();
            }
        }
        set
    }

    /// What a cursor over `teams` must yield (and, for a mutable cursor,
    /// which teams count at each version), in (version, subsequence, team)
    /// order.
    pub fn expected(&self, commits: &[Commit], mutable: bool) -> Vec<VersionedMutation> {
        let mut set = self.team_set_at_begin(commits);
        let mut out = Vec::new();
        for commit in commits {
            if commit.version >= self.begin() {
                for (team, subsequence, mutation) in &commit.mutations {
                    let counted = !mutable || *team == PRIVATE_TEAM || set.contains(team);
                    if counted {
                        out.push(VersionedMutation {
                            version: commit.version,
                            subsequence: *subsequence,
                            team: *team,
                            mutation: mutation.clone(),
                        });
                    }
                }
                if let (true, Some(next)) = (mutable, &commit.team_set) {
                    set = next.clone();
                }
            }
        }
        out.sort_by_key(|m| (m.version, m.subsequence, m.team));
        out
    }

    pub fn source(&self, with_private: bool) -> MemorySource {
        let source = MemorySource::new(self.mode());
        for team in &self.teams {
            source.add_team(*team);
        }
        if with_private {
            source.add_team(PRIVATE_TEAM);
        }
        source
    }
}

pub fn unordered(mut messages: Vec<VersionedMutation>) -> Vec<VersionedMutation> {
    messages.sort_by_key(|m| (m.version, m.team, m.subsequence));
    messages
}

/// Reads a cursor like a storage server, checking re-iteration on every
/// batch, and publishes the scenario's commits chunk by chunk in between.
pub struct Driver<'a> {
    pub scenario: &'a Scenario,
    pub source: &'a MemorySource,
    pub output: Vec<VersionedMutation>,
    partial_index: usize,
}

impl<'a> Driver<'a> {
    pub fn new(scenario: &'a Scenario, source: &'a MemorySource) -> Self {
        Driver {
            scenario,
            source,
            output: Vec::new(),
            partial_index: 0,
        }
    }

    /// One refill, then: a partial pass, reset, a full pass, reset, a full
    /// pass; the partial pass must be a prefix and the full passes equal.
    pub fn drive_once<C: PeekCursor>(&mut self, cursor: &mut C) -> Result<(), TestCaseError> {
        block_on(cursor.remote_more_available()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        self.take_batch(cursor)
    }

    /// Consumes the local data with the re-iteration checks.
    pub fn take_batch<C: PeekCursor>(&mut self, cursor: &mut C) -> Result<(), TestCaseError> {
        let partial_len = self.scenario.partial_passes[self.partial_index];
        self.partial_index = (self.partial_index + 1) % self.scenario.partial_passes.len();
        let mut partial = Vec::new();
        for _ in 0..partial_len {
            if !cursor.has_remaining() {
                break;
            }
            partial.push(cursor.get().clone());
            cursor.next();
        }
        cursor.reset();
        let first: Vec<_> = cursor.iter().collect();
        prop_assert!(
            first.starts_with(&partial),
            "a partial pass is not a prefix"
        );
        cursor.reset();
        let second: Vec<_> = cursor.iter().collect();
        prop_assert_eq!(&first, &second, "second pass after reset differs");
        prop_assert!(!cursor.has_remaining());
        self.output.extend(first);
        Ok(())
    }

    /// Publishes every chunk, driving the cursor between them, then ends
    /// the epoch and reads to the end of the stream. `check` runs after
    /// every batch.
    pub fn run<C: PeekCursor>(
        &mut self,
        cursor: &mut C,
        commits: &[Commit],
        mut check: impl FnMut(&C, &[VersionedMutation]) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let chunks = self.scenario.chunks.len();
        let teams = self.source_teams();
        for (index, (refills, lags)) in self.scenario.chunks.iter().enumerate() {
            let from = index * commits.len() / chunks;
            let to = (index + 1) * commits.len() / chunks;
            for commit in &commits[from..to] {
                self.source
                    .commit(commit.version, &commit.mutations)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let top = self.source.last_version().0 + 1;
            for (team, lag) in teams.iter().zip(lags.iter().cycle()) {
                let end = lag.map(|lag| Version(top.saturating_sub(u64::from(lag))));
                self.source.set_visible_end(*team, end);
            }
            for _ in 0..*refills {
                self.drive_once(cursor)?;
                check(cursor, &self.output)?;
            }
        }
        for team in &teams {
            self.source.set_visible_end(*team, None);
        }
        self.source.lock();
        let mut refills = 0;
        while !cursor.is_end_of_stream() {
            refills += 1;
            prop_assert!(
                refills < 100_000,
                "no end of stream after {refills} refills"
            );
            self.drive_once(cursor)?;
            check(cursor, &self.output)?;
        }
        Ok(())
    }

    fn source_teams(&self) -> Vec<StorageTeamId> {
        let mut teams = self.scenario.teams.clone();
        teams.push(PRIVATE_TEAM);
        teams
    }
}

/// After a full pass, the output must be exactly the expected mutations
/// below the barrier.
pub fn check_barrier(
    complete_below: Version,
    expected: &[VersionedMutation],
    output: &[VersionedMutation],
) -> Result<(), TestCaseError> {
    let below = expected.partition_point(|m| m.version < complete_below);
    prop_assert_eq!(
        output,
        &expected[..below],
        "output differs from the model below the barrier {}",
        complete_below
    );
    Ok(())
}
