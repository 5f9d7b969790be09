//! A commit checked and encoded before it reaches the core.
//!
//! ```text
//!  CommitRequest ──PreparedCommit::new──▶ (record payload, CommitRecord) ──lock──▶ TLogCore::commit
//!                  (no core state: blocks checked, record encoded and checksummed)
//! ```
//!
//! Everything here depends on the request alone, so the runtime does it
//! before taking the core's lock: the lock is then held only for the
//! chaining decision and the bookkeeping, not for parsing blocks and copying
//! the payload. The record's checksum is computed here too, on the runtime's
//! threads, rather than on the writer thread every commit passes through.
//!
//! A small commit is copied into one exactly-sized record, so the memory its
//! blocks hold is just that record, not the network buffer they came in. A
//! commit of [`KEEP_BLOCKS_FROM`] bytes or more keeps its blocks where they
//! are: it came in a frame that has an allocation of its own (see
//! [`proto::frame`]), so they pin nothing more, and its record is written as
//! a header followed by the blocks.

use bytes::Bytes;
use proto::block::TeamBlock;
use proto::frame::OWN_BUFFER_FROM;
use proto::{StorageTeamId, Version};

use super::{CommitRequest, CoreError};
use crate::log::ChecksummedPayload;
use crate::record::CommitRecord;

/// Commits with this many block bytes or more are not copied.
pub const KEEP_BLOCKS_FROM: usize = OWN_BUFFER_FROM;

pub struct PreparedCommit {
    /// The encoded commit record, as the writer appends it.
    pub(super) payload: ChecksummedPayload,
    /// The commit, its blocks pointing into `payload`.
    pub(super) record: CommitRecord,
}

impl PreparedCommit {
    /// Checks what a commit must be on its own (a version above its
    /// predecessor, each team once, each block well formed and holding
    /// exactly the commit's version) and encodes its record.
    pub fn new(request: CommitRequest) -> Result<PreparedCommit, CoreError> {
        check(&request)?;
        let record = CommitRecord {
            prev_version: request.prev_version,
            version: request.version,
            known_committed_version: request.known_committed_version,
            blocks: request.blocks,
        };
        if record.block_bytes() >= KEEP_BLOCKS_FROM {
            let mut parts = Vec::with_capacity(1 + record.blocks.len());
            parts.push(record.encoded_head());
            parts.extend(record.blocks.iter().map(|(_, block)| block.clone()));
            return Ok(PreparedCommit {
                payload: ChecksummedPayload::from_parts(parts),
                record,
            });
        }
        let (payload, record) = record.into_encoded();
        Ok(PreparedCommit {
            payload: ChecksummedPayload::new(payload),
            record,
        })
    }

    pub fn prev_version(&self) -> Version {
        self.record.prev_version
    }

    pub fn version(&self) -> Version {
        self.record.version
    }

    /// The bytes of its record's payload.
    pub fn payload_len(&self) -> u64 {
        self.payload.len() as u64
    }

    /// What waiting for its predecessor costs the core.
    pub(super) fn pending_bytes(&self) -> u64 {
        self.payload.len() as u64 + 64
    }
}

fn check(request: &CommitRequest) -> Result<(), CoreError> {
    if request.version <= request.prev_version {
        return Err(CoreError::Malformed(format!(
            "version {} must exceed prev_version {}",
            request.version, request.prev_version
        )));
    }
    if let Some(team) = repeated_team(&request.blocks) {
        return Err(CoreError::Malformed(format!("{team} appears twice")));
    }
    for (team, data) in &request.blocks {
        let invalid = |reason: String| CoreError::InvalidBlock {
            team: *team,
            reason,
        };
        let block = TeamBlock::parse(data.clone()).map_err(|e| invalid(e.to_string()))?;
        if block.team() != *team {
            return Err(invalid(format!("block is for {}", block.team())));
        }
        if block.section_count() != 1 || block.first_version() != Some(request.version) {
            return Err(invalid(format!(
                "a commit block holds exactly version {}",
                request.version
            )));
        }
    }
    Ok(())
}

/// A team that has more than one block, if any.
fn repeated_team(blocks: &[(StorageTeamId, Bytes)]) -> Option<StorageTeamId> {
    // Most commits touch a few teams: compare them pairwise without
    // allocating; sort when there are many.
    const PAIRWISE_UP_TO: usize = 16;
    if blocks.len() <= PAIRWISE_UP_TO {
        return blocks
            .iter()
            .enumerate()
            .find(|(i, (team, _))| blocks[..*i].iter().any(|(t, _)| t == team))
            .map(|(_, (team, _))| *team);
    }
    let mut teams: Vec<StorageTeamId> = blocks.iter().map(|(team, _)| *team).collect();
    teams.sort_unstable();
    teams.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}
