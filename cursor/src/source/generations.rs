//! Peeks across TLog generations. Each recovery ends the current
//! generation at its recovery version and starts the next one right after
//! it, on other TLogs; a cursor reading through [`GenerationSource`] sees
//! one stream per team, with nothing lost and nothing repeated.
//!
//! ```text
//!  peek(team, begin) ─▶ the generation holding begin:
//!     ended at E:   its source ─▶ reply cut after E, end ≤ E + 1, everything in it committed
//!     current:      its source ─▶ reply as it is; a lock's end of stream is "wait for the next"
//!  begin after the last ended generation, no current one known yet ─▶ unavailable (retry)
//! ```
//!
//! The owner replaces the generations when the core state changes
//! ([`GenerationSource::set_generations`]). A reader that already took
//! versions above a recovery version from the generation it ended must
//! roll them back: they never committed.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use proto::{BlockEntry, PeekReply, StorageTeamId, TeamBlockBuilder, TeamBlockData, Version};

use super::PeekSource;
use crate::error::SourceError;

/// One generation's versions, `(begin, end]`, and where to peek them.
pub struct GenerationRoute<S> {
    pub epoch: u64,
    pub begin: Version,
    /// `None` while the generation is current.
    pub end: Option<Version>,
    pub source: Arc<S>,
}

impl<S> Clone for GenerationRoute<S> {
    fn clone(&self) -> Self {
        GenerationRoute {
            epoch: self.epoch,
            begin: self.begin,
            end: self.end,
            source: self.source.clone(),
        }
    }
}

impl<S> GenerationRoute<S> {
    fn holds(&self, version: Version) -> bool {
        version > self.begin && self.end.is_none_or(|end| version <= end)
    }
}

/// A [`PeekSource`] over every live generation, oldest first.
pub struct GenerationSource<S> {
    generations: Mutex<Vec<GenerationRoute<S>>>,
}

impl<S: PeekSource> GenerationSource<S> {
    pub fn new(generations: Vec<GenerationRoute<S>>) -> Self {
        GenerationSource {
            generations: Mutex::new(generations),
        }
    }

    /// Replaces the generations (oldest first), e.g. after a recovery.
    pub fn set_generations(&self, generations: Vec<GenerationRoute<S>>) {
        *self.generations() = generations;
    }

    /// The epoch of the newest generation known.
    pub fn newest_epoch(&self) -> Option<u64> {
        self.generations().last().map(|g| g.epoch)
    }

    fn generations(&self) -> MutexGuard<'_, Vec<GenerationRoute<S>>> {
        // Replaced whole under the lock: a panic cannot leave it half-set.
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn route(&self, begin: Version) -> Result<GenerationRoute<S>, SourceError> {
        let generations = self.generations();
        if let Some(route) = generations.iter().find(|g| g.holds(begin)) {
            return Ok(route.clone());
        }
        match generations.first() {
            // Older generations were retired once every server popped them.
            Some(oldest) if begin <= oldest.begin => Err(SourceError::Popped {
                begin,
                popped: Some(oldest.begin.next()),
            }),
            Some(_) => Err(SourceError::Unavailable {
                attempts: 0,
                reason: format!("no generation holds version {begin} yet: a recovery is under way"),
            }),
            None => Err(SourceError::Unavailable {
                attempts: 0,
                reason: "no TLog generation known yet".to_owned(),
            }),
        }
    }

    async fn peek_generation(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> Result<PeekReply, SourceError> {
        let route = self.route(begin)?;
        let reply = match route.source.peek(team, begin, max_bytes).await {
            // A new generation's proxies register the teams on its TLogs
            // once recruited, a moment after the generation is recorded.
            Err(SourceError::UnknownTeam) if route.end.is_none() => {
                return Err(SourceError::Unavailable {
                    attempts: 0,
                    reason: format!("generation {}'s TLogs do not know {team} yet", route.epoch),
                })
            }
            reply => reply?,
        };
        match route.end {
            Some(end) => cut_at_recovery_version(reply, begin, end),
            None if reply.end_of_stream => Err(SourceError::Unavailable {
                attempts: 0,
                reason: format!(
                    "generation {} was locked at {}: waiting for the next one",
                    route.epoch, reply.end
                ),
            }),
            None => Ok(reply),
        }
    }
}

impl<S: PeekSource> PeekSource for GenerationSource<S> {
    fn peek(
        &self,
        team: StorageTeamId,
        begin: Version,
        max_bytes: u32,
    ) -> impl Future<Output = Result<PeekReply, SourceError>> + Send {
        self.peek_generation(team, begin, max_bytes)
    }
}

/// An ended generation's reply, without what lies above its recovery
/// version `end`. Everything up to `end` is committed: the recovery kept
/// it. The stream goes on in the next generation, so it never ends here.
fn cut_at_recovery_version(
    mut reply: PeekReply,
    begin: Version,
    end: Version,
) -> Result<PeekReply, SourceError> {
    if reply.end_of_stream && reply.end <= end {
        // The generation's locked TLogs all reach `end`; one that stopped
        // short is not one of them.
        return Err(SourceError::Unavailable {
            attempts: 0,
            reason: format!(
                "a TLog of the generation ended at {end} stops at {}",
                reply.end
            ),
        });
    }
    let mut blocks = Vec::with_capacity(reply.blocks.len());
    for block in reply.blocks {
        if let Some(kept) = block_through(block, end)? {
            blocks.push(kept);
        }
    }
    reply.blocks = blocks;
    reply.end = reply.end.min(end.next()).max(begin);
    reply.end_of_stream = false;
    let complete = Version(reply.end.0.saturating_sub(1));
    reply.known_committed_version = reply.known_committed_version.max(complete).min(end);
    reply.max_known_version = reply.max_known_version.min(end);
    Ok(reply)
}

/// `block` without its versions above `last`; `None` when nothing is left.
fn block_through(
    block: TeamBlockData,
    last: Version,
) -> Result<Option<TeamBlockData>, SourceError> {
    let parsed = block
        .parse()
        .map_err(|e| SourceError::Corrupt(format!("block of {}: {e}", block.team)))?;
    match (parsed.first_version(), parsed.last_version()) {
        (Some(first), _) if first > last => return Ok(None),
        (_, Some(newest)) if newest <= last => return Ok(Some(block)),
        (None, _) => return Ok(Some(block)),
        _ => {}
    }
    let mut builder = TeamBlockBuilder::new(parsed.team());
    for entry in parsed.entries().take_while(|e| e.version() <= last) {
        let pushed = match &entry {
            BlockEntry::Message(m) => builder.push(m.version, m.subsequence, &m.mutation),
            BlockEntry::EmptyVersion { version, .. } => builder.push_empty_version(*version),
        };
        pushed.map_err(|e| SourceError::Corrupt(format!("block of {}: {e}", block.team)))?;
    }
    Ok(Some(TeamBlockData {
        team: block.team,
        data: builder.finish(),
    }))
}

#[cfg(test)]
mod tests;
