//! Peek planning: serve from memory, wait for more, or read spilled data
//! from the log; and completing a disk peek from the records read.

use bytes::Bytes;
use proto::{StorageTeamId, Version};

use super::{CoreError, DiskPeek, PeekPlan, PeekResult, TLogCore};
use crate::record::{commit_block_for_team, RecordError};

impl<T> TLogCore<T> {
    pub fn plan_peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: usize,
    ) -> Result<PeekPlan, CoreError> {
        let state = self.teams.get(&team).ok_or(CoreError::UnknownTeam(team))?;
        if begin < state.popped {
            return Err(CoreError::PeekBeforePopped {
                begin,
                popped: state.popped,
            });
        }
        let locked = self.meta.locked && self.unsynced.is_empty();
        let base = PeekResult {
            blocks: Vec::new(),
            end: self.durable_version.next(),
            popped: state.popped,
            max_known_version: self.durable_version,
            known_committed_version: self.meta.known_committed_version,
            end_of_stream: false,
        };
        if begin > self.durable_version {
            if locked {
                return Ok(PeekPlan::Ready(PeekResult {
                    end: begin.max(base.end),
                    end_of_stream: true,
                    ..base
                }));
            }
            return Ok(PeekPlan::Wait);
        }
        if begin < self.memory_floor {
            let from = self
                .checkpoints
                .range(..=begin)
                .next_back()
                .or_else(|| self.checkpoints.first_key_value())
                .map(|(_, p)| *p);
            if let Some(from) = from {
                return Ok(PeekPlan::Disk(DiskPeek {
                    team,
                    begin,
                    from,
                    memory_floor: self.memory_floor,
                    max_bytes,
                    scan_limit: self.config.disk_scan_limit,
                    popped: state.popped,
                    durable_version: self.durable_version,
                    known_committed_version: self.meta.known_committed_version,
                }));
            }
        }
        let start = state.memory.partition_point(|(v, _)| *v < begin);
        let mut result = base;
        let mut bytes = 0;
        for (version, block) in state.memory.range(start..) {
            if bytes > 0 && bytes + block.len() > max_bytes {
                result.end = *version;
                break;
            }
            bytes += block.len();
            result.blocks.push(block.clone());
        }
        result.end_of_stream = locked && result.end > self.durable_version;
        Ok(PeekPlan::Ready(result))
    }
}

/// Completes a disk peek from the records the log returned.
pub fn finish_disk_peek(peek: &DiskPeek, records: &[Bytes]) -> Result<PeekResult, RecordError> {
    let mut result = PeekResult {
        blocks: Vec::new(),
        end: peek.begin,
        popped: peek.popped,
        max_known_version: peek.durable_version,
        known_committed_version: peek.known_committed_version,
        end_of_stream: false,
    };
    let mut bytes = 0;
    for payload in records {
        let Some((version, block)) = commit_block_for_team(payload, peek.team)? else {
            continue;
        };
        if version < peek.begin {
            continue;
        }
        if version >= peek.memory_floor {
            result.end = version;
            return Ok(result);
        }
        if let Some(block) = block {
            if bytes > 0 && bytes + block.len() > peek.max_bytes {
                result.end = version;
                return Ok(result);
            }
            bytes += block.len();
            result.blocks.push(block);
        }
        result.end = version.next();
    }
    Ok(result)
}
