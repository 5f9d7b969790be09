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
//!
//! Whoever learns first that the generations changed (a watch on the core
//! state) calls [`GenerationSource::interrupt`]: peeks in flight, which may
//! wait on a locked TLog's long poll or on a lost TLog's retries, fail at
//! once as unavailable, and so do new ones until the owner has read the
//! generations again and [`acknowledged`](GenerationSource::acknowledge)
//! the interrupt. The reader retries against the new routes.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::signal::Signal;
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

/// The routes, and what the reader took from a generation while it was
/// open.
struct Routes<S> {
    generations: Vec<GenerationRoute<S>>,
    /// The open generation the reader peeked since it last started over,
    /// and the furthest its replies took the reader.
    read_open: Option<OpenRead>,
    /// Where the reader must roll back to: a generation it peeked while
    /// open has since ended there.
    rollback: Option<Version>,
}

/// What the reader took from a generation while it was open.
#[derive(Clone, Copy)]
struct OpenRead {
    epoch: u64,
    /// The furthest `end` of a reply that moved the reader on; zero when
    /// none did.
    furthest: Version,
}

/// A [`PeekSource`] over every live generation, oldest first, read by one
/// reader (a storage server's cursor).
///
/// Whoever sets the generations, the reader learns when one it peeked
/// while open has ended ([`take_rollback`](Self::take_rollback)): what it
/// fetched past that end never committed, and its peeks are refused until
/// it takes the rollback. A peek whose generation ends while it is in
/// flight is cut at the end instead.
pub struct GenerationSource<S> {
    routes: Mutex<Routes<S>>,
    /// How many interrupts were asked for.
    interrupts: Signal<u64>,
    /// The interrupts the owner answered by reading the generations again.
    acknowledged: AtomicU64,
}

impl<S: PeekSource> GenerationSource<S> {
    pub fn new(generations: Vec<GenerationRoute<S>>) -> Self {
        GenerationSource {
            routes: Mutex::new(Routes {
                generations,
                read_open: None,
                rollback: None,
            }),
            interrupts: Signal::new(0),
            acknowledged: AtomicU64::new(0),
        }
    }

    /// The generations changed and the owner will set them anew: peeks in
    /// flight and to come fail as unavailable until it acknowledges.
    pub fn interrupt(&self) {
        self.interrupts.update(|count| {
            *count += 1;
            true
        });
    }

    /// How many interrupts were asked for so far; an owner that reads the
    /// generations after taking this count acknowledges it once it has set
    /// them.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.get()
    }

    /// The owner read the generations after `interrupts` interrupts.
    pub fn acknowledge(&self, interrupts: u64) {
        self.acknowledged.fetch_max(interrupts, Ordering::SeqCst);
    }

    /// Resolves once an interrupt waits for the owner.
    pub async fn interrupted(&self) {
        self.interrupts
            .wait_for(|count| *count != self.acknowledged.load(Ordering::SeqCst))
            .await;
    }

    /// Replaces the generations (oldest first), e.g. after a recovery.
    pub fn set_generations(&self, generations: Vec<GenerationRoute<S>>) {
        let mut routes = self.routes();
        if let Some(OpenRead { epoch, furthest }) = routes.read_open {
            match generations.iter().find(|g| g.epoch == epoch) {
                Some(GenerationRoute { end: Some(end), .. }) => {
                    // A reader the generation never took past its end (one
                    // that started above it, after a copy at a newer
                    // version) has nothing to take back.
                    let end = *end;
                    if furthest > end.next() {
                        routes.rollback = Some(routes.rollback.map_or(end, |r| r.min(end)));
                    }
                    routes.read_open = None;
                }
                Some(_) => {}
                // Gone: retired once every server made it durable, or
                // dropped by a recovery before anything committed in it.
                None => routes.read_open = None,
            }
        }
        routes.generations = generations;
    }

    /// Where the reader must roll back to, once: a generation it peeked
    /// while open ended there. It drops what it fetched and starts over.
    pub fn take_rollback(&self) -> Option<Version> {
        self.routes().rollback.take()
    }

    /// The reader starts over from what it holds, all of it committed:
    /// nothing it read before counts any more.
    pub fn restart_reader(&self) {
        let mut routes = self.routes();
        routes.read_open = None;
        routes.rollback = None;
    }

    /// The epoch of the newest generation known.
    pub fn newest_epoch(&self) -> Option<u64> {
        self.routes().generations.last().map(|g| g.epoch)
    }

    fn routes(&self) -> MutexGuard<'_, Routes<S>> {
        // Replaced whole under the lock: a panic cannot leave it half-set.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn route(&self, begin: Version) -> Result<GenerationRoute<S>, SourceError> {
        let routes = self.routes();
        let generations = &routes.generations;
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
        let seen = self.interrupts.get();
        let interrupted = || SourceError::Unavailable {
            attempts: 0,
            reason: "the generations changed: reading them again".to_owned(),
        };
        if seen != self.acknowledged.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        // Whoever installed the ended generation (a fetch that read the
        // core state, say), the reader goes no further until it rolls
        // back: what it would read of the next generation would land on
        // the ended one's uncommitted tail, and could be made durable
        // above the version it must roll back to.
        if let Some(end) = self.routes().rollback {
            return Err(SourceError::Unavailable {
                attempts: 0,
                reason: format!(
                    "a generation this reader read while open ended at {end}: it rolls back first"
                ),
            });
        }
        let route = self.route(begin)?;
        let peeked = tokio::select! {
            biased;
            peeked = route.source.peek(team, begin, max_bytes) => peeked,
            _ = self.interrupts.wait_for(|count| *count != seen) => return Err(interrupted()),
        };
        let reply = match peeked {
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
        // The generation may have ended while the peek was out.
        let end = {
            let mut routes = self.routes();
            let end = route.end.or_else(|| {
                routes
                    .generations
                    .iter()
                    .find(|g| g.epoch == route.epoch)
                    .and_then(|g| g.end)
            });
            if end.is_none() && !reply.end_of_stream {
                let before = routes
                    .read_open
                    .filter(|open| open.epoch == route.epoch)
                    .map_or(Version::ZERO, |open| open.furthest);
                // A reply moves the reader on only to its `end`: what it
                // holds lies below that.
                let furthest = match reply.end > begin {
                    true => before.max(reply.end),
                    false => before,
                };
                routes.read_open = Some(OpenRead {
                    epoch: route.epoch,
                    furthest,
                });
            }
            end
        };
        match end {
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
