//! What the TLog keeps per storage team: its recent blocks in memory and its
//! pop state.

use std::collections::VecDeque;

use bytes::Bytes;
use proto::{StorageServerId, StorageTeamId, Version};

use crate::record::Metadata;

/// Bytes charged per in-memory block on top of its data, so many tiny blocks
/// (empty versions) still count against the memory budget.
pub const BLOCK_OVERHEAD: u64 = 48;

#[derive(Debug, Default)]
pub struct TeamState {
    /// Durable blocks in version order; every durable version at or above the
    /// core's memory floor that carries this team is here.
    pub memory: VecDeque<(Version, Bytes)>,
    pub memory_bytes: u64,
    /// Versions below this are discarded for this team.
    pub popped: Version,
}

impl TeamState {
    pub fn push(&mut self, version: Version, block: Bytes) -> u64 {
        let cost = block.len() as u64 + BLOCK_OVERHEAD;
        self.memory.push_back((version, block));
        self.memory_bytes += cost;
        cost
    }

    /// Drops the front block if it is at `version`; returns the bytes freed.
    pub fn evict(&mut self, version: Version) -> u64 {
        match self.memory.front() {
            Some((v, _)) if *v == version => {
                let (_, block) = self.memory.pop_front().expect("front exists");
                let cost = block.len() as u64 + BLOCK_OVERHEAD;
                self.memory_bytes -= cost;
                cost
            }
            _ => 0,
        }
    }

    /// Drops every block below `popped`; returns the bytes freed.
    pub fn discard_below(&mut self, popped: Version) -> u64 {
        let mut freed = 0;
        while let Some((v, _)) = self.memory.front() {
            if *v >= popped {
                break;
            }
            let v = *v;
            freed += self.evict(v);
        }
        freed
    }
}

/// A team's popped version: the minimum over its registered servers (a
/// registered server that never popped holds it at zero); for a team with no
/// registration, the minimum over the servers that popped it.
pub fn team_popped(meta: &Metadata, team: StorageTeamId) -> Version {
    let pops = meta
        .pops
        .range((team, StorageServerId(0))..=(team, StorageServerId(u64::MAX)));
    match meta.registered.get(&team) {
        Some(servers) => servers
            .iter()
            .map(|s| meta.pops.get(&(team, *s)).copied().unwrap_or_default())
            .min()
            .unwrap_or_default(),
        None => pops.map(|(_, v)| *v).min().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popped_is_the_slowest_registered_server() {
        let team = StorageTeamId(1);
        let mut meta = Metadata::default();
        meta.pops.insert((team, StorageServerId(1)), Version(10));
        assert_eq!(team_popped(&meta, team), Version(10));
        meta.registered
            .insert(team, vec![StorageServerId(1), StorageServerId(2)]);
        assert_eq!(team_popped(&meta, team), Version(0));
        meta.pops.insert((team, StorageServerId(2)), Version(7));
        assert_eq!(team_popped(&meta, team), Version(7));
        meta.pops
            .insert((StorageTeamId(2), StorageServerId(9)), Version(1));
        assert_eq!(team_popped(&meta, team), Version(7));
    }

    #[test]
    fn discarding_frees_exactly_the_popped_blocks() {
        let mut team = TeamState::default();
        let a = team.push(Version(1), Bytes::from_static(b"aa"));
        let b = team.push(Version(3), Bytes::from_static(b"bbb"));
        assert_eq!(team.discard_below(Version(3)), a);
        assert_eq!(team.memory_bytes, b);
        assert_eq!(team.evict(Version(2)), 0);
        assert_eq!(team.evict(Version(3)), b);
    }
}
