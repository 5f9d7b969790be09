//! Retention: pops and team registrations, which decide when data may be
//! discarded; truncation of whole segments; and what each team holds.
//!
//! ```text
//!  pop(team, server, v) ─▶ team popped = min over its registered servers
//!      ─▶ drop in-memory blocks below it ─▶ remove segments every team passed
//! ```

use proto::{StorageServerId, StorageTeamId, Version};

use super::{Action, Barrier, CoreError, TLogCore};
use crate::record::Record;
use crate::team::team_popped;

impl<T> TLogCore<T> {
    pub(super) fn refresh_popped(&mut self, team: StorageTeamId) {
        let popped = team_popped(&self.meta, team);
        if let Some(state) = self.teams.get_mut(&team) {
            state.popped = popped;
            self.memory_bytes -= state.discard_below(popped);
        }
    }

    pub fn pop(
        &mut self,
        team: StorageTeamId,
        server: StorageServerId,
        version: Version,
    ) -> Result<Vec<Action<T>>, CoreError> {
        if !self.teams.contains_key(&team) {
            return Err(CoreError::UnknownTeam(team));
        }
        let mut actions = Vec::new();
        if self
            .meta
            .pops
            .get(&(team, server))
            .is_some_and(|v| *v >= version)
        {
            return Ok(actions);
        }
        let record = Record::Pop {
            team,
            server,
            version,
        };
        self.meta.apply(&record);
        self.append(record, &mut actions);
        self.refresh_popped(team);
        actions.extend(self.truncation_actions());
        Ok(actions)
    }

    /// Declares the servers of a team; its data is discarded only once all
    /// of them popped past it. Answered once durable, because a lost
    /// registration would let one server's pops discard what another needs.
    pub fn register_team(
        &mut self,
        team: StorageTeamId,
        servers: Vec<StorageServerId>,
        token: T,
    ) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        if self.poisoned {
            actions.push(Action::RegisterDone(token, Err(CoreError::Poisoned)));
            return actions;
        }
        let record = Record::Register { team, servers };
        self.meta.apply(&record);
        let seq = self.append(record, &mut actions);
        self.barriers.push((seq, Barrier::Register(token)));
        self.teams.entry(team).or_default();
        self.refresh_popped(team);
        actions.extend(self.truncation_actions());
        actions
    }

    /// Removes the oldest segments whose every team popped past them.
    pub(super) fn truncation_actions(&mut self) -> Vec<Action<T>> {
        let Some(newest) = self.segments.keys().next_back().copied() else {
            return Vec::new();
        };
        let mut keep_from = None;
        for (id, summary) in &self.segments {
            let removable = *id < newest
                && summary
                    .teams
                    .iter()
                    .all(|(team, (_, last))| self.popped_of(*team) > *last);
            if !removable {
                keep_from = Some(*id);
                break;
            }
        }
        let Some(keep_from) = keep_from else {
            return Vec::new();
        };
        if self.segments.first_key_value().map(|(id, _)| *id) == Some(keep_from) {
            return Vec::new();
        }
        self.segments = self.segments.split_off(&keep_from);
        self.checkpoints.retain(|_, p| p.segment >= keep_from);
        vec![Action::RemoveSegmentsBefore(keep_from)]
    }

    pub(super) fn popped_of(&self, team: StorageTeamId) -> Version {
        self.teams.get(&team).map(|t| t.popped).unwrap_or_default()
    }

    /// Per team: popped version, bytes its servers have not yet popped,
    /// registered servers. Unpopped data in memory counts exactly; data
    /// already spilled (below the memory floor) counts by segment, each
    /// segment whole until the team's data in it is popped.
    pub fn team_report(&self) -> Vec<(StorageTeamId, Version, u64, Vec<StorageServerId>)> {
        self.teams
            .iter()
            .map(|(team, state)| {
                let spilled: u64 = if state.popped < self.memory_floor {
                    self.segments
                        .values()
                        .filter_map(|s| s.teams.get(team))
                        .filter(|(_, last)| state.popped <= *last)
                        .map(|(bytes, _)| *bytes)
                        .sum()
                } else {
                    0
                };
                let bytes = state.memory_bytes + spilled;
                let servers = self.meta.registered.get(team).cloned().unwrap_or_default();
                (*team, state.popped, bytes, servers)
            })
            .collect()
    }

    /// The team whose unpopped data keeps the oldest segment from being removed.
    pub fn truncation_blocker(&self) -> Option<StorageTeamId> {
        let (_, oldest) = self.segments.first_key_value()?;
        oldest
            .teams
            .iter()
            .filter(|(team, (_, last))| self.popped_of(**team) <= *last)
            .min_by_key(|(team, _)| self.popped_of(**team))
            .map(|(team, _)| *team)
    }
}
