//! The apply loop: a cursor over the server's teams feeds the versioned
//! store; flushes make versions durable and pops follow. A cursor is made
//! anew when a recovery rolls back what it read, and after a rebuild when
//! the log no longer holds what it needs.
//!
//! A flush is written beside the loop, not in it: the engine write and its
//! syncs take milliseconds, and reads at the versions the loop would apply
//! meanwhile wait for them. The loop prepares a flush when one is due and
//! none runs, goes on applying while a task writes it and pops, and waits
//! for it before the cursor is dropped (a rollback or a rebuild must not
//! meet a flush half done).
//!
//! ```text
//!  run_apply ─▶ rebuild if due ─▶ cursor from applied + 1 ─▶ consume
//!  consume: fetch ─▶ apply_batch ─▶ flush due? prepare ─▶ task: write, pop
//!             ▲                                  │
//!             └──────────────────────────────────┘ (does not wait for the task)
//!     fetch failed: retryable ─▶ refresh the generations, back off (cut short by a watch)
//!     a generation the cursor read while open ended ─▶ roll back, new cursor
//!                   popped     ─▶ Consumed::Rebuild
//!                   otherwise  ─▶ the server stops applying
//!     the current generation leaves the server out (`teamlog exclude`)
//!                              ─▶ Consumed::Rebuild, which waits until a
//!                                 generation takes it back, then copies
//! ```
//!
//! An excluded server holds nothing the TLogs keep for it, and the old
//! generations it read may retire before it learns where they ended, so
//! what it applied counts for nothing: taken back, it copies its teams
//! from teammates like a server whose data directory was lost.

use super::*;

use futures::FutureExt;
use tokio::task::{JoinError, JoinHandle};

// The runtime's clock, which a simulation drives.
use tokio::time::Instant;

/// Consumes the server's teams until the service is dropped or the stream
/// ends. A cursor reads from the applied version on; when a recovery ended
/// the generation it read below what was applied, the server rolls back
/// and reads on with a new cursor from there.
pub(super) async fn run_apply<E: KvEngine>(inner: Weak<Inner<E>>) {
    // A copy that starts over at once may meet the same answer again (a
    // teammate that has not copied a range either): each start waits
    // longer, up to a second, until a copy is done.
    let again_policy = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(rebuild::MAX_RETRY_DELAY)
        .without_max_times();
    let mut again_delays = again_policy.build();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.rebuilding().is_some() {
            drop(strong);
            if !wait_while_excluded(&inner).await {
                return;
            }
            match rebuild::rebuild(&inner).await {
                Ok(rebuild::Rebuilt::Done) => {
                    again_delays = again_policy.build();
                    continue;
                }
                Ok(rebuild::Rebuilt::Again) => {
                    let delay = again_delays.next().unwrap_or(rebuild::MAX_RETRY_DELAY);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Ok(rebuild::Rebuilt::Dropped) => return,
                Err(reason) => {
                    if let Some(strong) = inner.upgrade() {
                        strong.fail(reason);
                    }
                    return;
                }
            }
        }
        let begin = strong.store().applied_version().next();
        // Everything applied committed (rolled back to a recovery version,
        // copied at a committed one, or made durable): what the last cursor
        // read no longer counts.
        strong.generations.source().restart_reader();
        let teams = strong.ownership().teams_at(begin);
        strong.generations.route_teams(&teams);
        let set = TeamSet::new(strong.config.private_team, teams);
        let cursor = MutableTeamPeekCursor::<_, Ordered>::new(
            strong.generations.source(),
            strong.config.id,
            set,
            begin,
        );
        drop(strong);
        match consume(&inner, cursor).await {
            Consumed::Stopped => return,
            Consumed::RolledBack | Consumed::Rebuild => continue,
        }
    }
}

enum Consumed {
    /// The service was dropped, the stream ended or applying failed.
    Stopped,
    /// A recovery took back what the cursor had read: read again.
    RolledBack,
    /// The log no longer holds what the cursor needs: copy from teammates.
    Rebuild,
}

/// The longest wait between failed peeks.
const MAX_PEEK_RETRY_DELAY: Duration = Duration::from_millis(250);

/// How often a server reads the core state while its cursor moves.
const GENERATIONS_REFRESH: Duration = Duration::from_secs(1);

/// What reading the core state again came to.
enum Refreshed {
    /// The generations are as they were, or could not be read.
    Same,
    /// Peeks follow other generations now: worth a peek at once.
    Changed,
    /// The cursor's reading ends (rolled back, or failed).
    Ends(Consumed),
}

/// Reads the core state again, then rolls back if a generation the cursor
/// read while open has ended, or stops reading if the current generation
/// leaves the server out.
async fn refresh_generations<E: KvEngine>(inner: &Inner<E>) -> Refreshed {
    let changed = match inner.generations.refresh().await {
        Ok(changed) => changed,
        Err(reason) => {
            tracing::debug!(%reason, "the generations could not be refreshed");
            false
        }
    };
    if let Some(epoch) = inner.generations.excluded_by() {
        inner.set_rebuilding(Some(excluded_reason(epoch)));
        return Refreshed::Ends(Consumed::Rebuild);
    }
    match roll_back_if_ended(inner) {
        Some(consumed) => Refreshed::Ends(consumed),
        None if changed => Refreshed::Changed,
        None => Refreshed::Same,
    }
}

fn excluded_reason(epoch: u64) -> String {
    format!(
        "generation {epoch} leaves this server out of its teams (teamlog exclude): it serves \
         nothing, and copies its teams from teammates once a generation takes it back"
    )
}

/// Waits while the current generation leaves the server out, reading the
/// core state every second (at once when a watch brings a change); false
/// when the service was dropped.
async fn wait_while_excluded<E: KvEngine>(inner: &Weak<Inner<E>>) -> bool {
    loop {
        let Some(strong) = inner.upgrade() else {
            return false;
        };
        if let Err(reason) = strong.generations.refresh().await {
            tracing::debug!(%reason, "the generations could not be refreshed");
        }
        let Some(epoch) = strong.generations.excluded_by() else {
            return true;
        };
        strong.set_rebuilding(Some(excluded_reason(epoch)));
        let source = strong.generations.source();
        drop(strong);
        tokio::select! {
            biased;
            _ = tokio::time::sleep(GENERATIONS_REFRESH) => {}
            _ = source.interrupted() => {}
        }
    }
}

/// When a recovery ended a generation the cursor read while it was open
/// (whoever installed the news), rolls back what was applied above its
/// end and has the cursor made anew: even with nothing applied past the
/// end, the cursor may hold versions past it, fetched from the uncommitted
/// tail.
fn roll_back_if_ended<E: KvEngine>(inner: &Inner<E>) -> Option<Consumed> {
    let end = inner.generations.source().take_rollback()?;
    match inner.rollback_to(end) {
        Ok(()) => Some(Consumed::RolledBack),
        Err(reason) => {
            inner.fail(reason);
            Some(Consumed::Stopped)
        }
    }
}

type Cursor = MutableTeamPeekCursor<Arc<GenerationSource<TLogSource>>, Ordered>;

/// Runs the cursor with a flush beside it, and waits for that flush
/// before the cursor's reading ends.
async fn consume<E: KvEngine>(inner: &Weak<Inner<E>>, cursor: Cursor) -> Consumed {
    let mut flushes = Flushes::default();
    let consumed = consume_with(inner, cursor, &mut flushes).await;
    match flushes.wait().await {
        Ok(()) => consumed,
        Err(reason) => {
            if let Some(inner) = inner.upgrade() {
                inner.fail(reason);
            }
            Consumed::Stopped
        }
    }
}

async fn consume_with<E: KvEngine>(
    inner: &Weak<Inner<E>>,
    mut cursor: Cursor,
    flushes: &mut Flushes,
) -> Consumed {
    let id = match inner.upgrade() {
        Some(inner) => inner.config.id,
        None => return Consumed::Stopped,
    };
    let mut order = DeliveryOrder::default();
    // Jittered, growing delays between failed fetches; a fetch that works
    // starts them over.
    // Short: a recovery's new generation is worth finding soon, and reads
    // wait for this server meanwhile.
    let retry_policy = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(MAX_PEEK_RETRY_DELAY)
        .without_max_times();
    let mut delays = retry_policy.build();
    let no_room_policy = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(NO_ROOM_RETRY_MIN)
        .with_max_delay(NO_ROOM_RETRY_MAX)
        .without_max_times();
    let mut no_room_delays = no_room_policy.build();
    let mut refreshed = Instant::now();
    loop {
        // A window past its cap while flushes find no room: fetch nothing
        // more, only retry the flush.
        let over_cap = match inner.upgrade() {
            Some(inner) => inner.stalled_reason().is_some() && inner.window_over_stalled_cap(),
            None => return Consumed::Stopped,
        };
        if over_cap {
            let delay = no_room_delays.next().unwrap_or(NO_ROOM_RETRY_MAX);
            tokio::time::sleep(delay).await;
            let Some(inner) = inner.upgrade() else {
                return Consumed::Stopped;
            };
            let flushed = match flushes.start_if_due(&inner) {
                Ok(()) => flushes.wait().await,
                Err(reason) => Err(reason),
            };
            match flushed {
                Ok(()) => no_room_delays = no_room_policy.build(),
                Err(reason) => {
                    inner.fail(reason);
                    return Consumed::Stopped;
                }
            }
            continue;
        }
        let fetched = cursor.remote_more_available().await;
        let Some(inner) = inner.upgrade() else {
            return Consumed::Stopped;
        };
        let stale = refreshed.elapsed() >= GENERATIONS_REFRESH;
        match fetched {
            Ok(_) => delays = retry_policy.build(),
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "peek failed; retrying");
                if inner.generations.is_coordinated() {
                    refreshed = Instant::now();
                    match refresh_generations(&inner).await {
                        Refreshed::Ends(consumed) => return consumed,
                        Refreshed::Changed => {
                            delays = retry_policy.build();
                            continue;
                        }
                        Refreshed::Same => {}
                    }
                }
                let source = inner.generations.source();
                drop(inner);
                let delay = delays.next().unwrap_or(MAX_PEEK_RETRY_DELAY);
                // A watch that brings new generations cuts the wait short.
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(delay) => {}
                    _ = source.interrupted() => {}
                }
                continue;
            }
            Err(CursorError::Source {
                source: SourceError::Popped { .. },
                ..
            }) => {
                inner.set_rebuilding(Some("the log no longer holds what it needs".into()));
                return Consumed::Rebuild;
            }
            Err(e) => {
                // The TLogs of a generation that left this server out know
                // nothing of its private team: the current one, or an older
                // one it must read past its durable version (left out while
                // it could not read the core state, then taken back while
                // it was down). Either way the log kept nothing for it.
                if inner.generations.is_coordinated() {
                    if let Refreshed::Ends(Consumed::Rebuild) = refresh_generations(&inner).await {
                        return Consumed::Rebuild;
                    }
                    let unknown = matches!(
                        e,
                        CursorError::Source {
                            source: SourceError::UnknownTeam,
                            ..
                        }
                    );
                    if let Some(epoch) = inner.generations.left_out_by().filter(|_| unknown) {
                        inner.set_rebuilding(Some(format!(
                            "generation {epoch} left this server out of its teams, so the log \
                             kept nothing of them for it"
                        )));
                        return Consumed::Rebuild;
                    }
                }
                inner.fail(e.to_string());
                return Consumed::Stopped;
            }
        }
        // Another task may have installed the end of what the cursor read.
        if let Some(consumed) = roll_back_if_ended(&inner) {
            return consumed;
        }
        let complete_below = cursor.complete_below();
        let known_committed = cursor.known_committed();
        let applied =
            match inner.apply_batch(&mut cursor, &mut order, complete_below, known_committed) {
                Ok(applied) => applied,
                Err(reason) => {
                    inner.fail(reason);
                    return Consumed::Stopped;
                }
            };
        inner.applied.update(|a| {
            let moved = *a < applied;
            *a = applied.max(*a);
            moved
        });
        if let Err(reason) = flushes.start_if_due(&inner) {
            inner.fail(reason);
            return Consumed::Stopped;
        }
        if inner.stalled_reason().is_some() {
            let delay = no_room_delays.next().unwrap_or(NO_ROOM_RETRY_MAX);
            tokio::time::sleep(delay).await;
        } else {
            no_room_delays = no_room_policy.build();
        }
        if cursor.is_end_of_stream() {
            tracing::info!(server = %id, %applied, "end of stream");
            return Consumed::Stopped;
        }
        if stale && inner.generations.is_coordinated() {
            refreshed = Instant::now();
            if let Refreshed::Ends(consumed) = refresh_generations(&inner).await {
                return consumed;
            }
        }
    }
}

/// The flush being written beside the apply loop, if any.
#[derive(Default)]
struct Flushes {
    running: Option<JoinHandle<Result<(), String>>>,
}

impl Flushes {
    /// Collects the flush that ended, then starts the next one if it is
    /// due. `Err` is a failure no retry fixes (of the flush that ended, or
    /// of preparing the next); a flush that finds no room marks the server
    /// stalled and is tried again later. A failed flush stops the server
    /// as it fails.
    fn start_if_due<E: KvEngine>(&mut self, inner: &Arc<Inner<E>>) -> Result<(), String> {
        if let Some(running) = &self.running {
            if !running.is_finished() {
                return Ok(());
            }
            let ended = self.running.take().and_then(|task| task.now_or_never());
            if let Some(outcome) = ended {
                joined(outcome)?;
            }
        }
        let Some(flush) = inner.prepare_flush()? else {
            return Ok(());
        };
        let inner = Arc::clone(inner);
        self.running = Some(tokio::spawn(async move {
            match inner.write_flush(flush).await {
                Ok(durable) => {
                    inner.set_stalled(None);
                    inner.pop(durable).await;
                    Ok(())
                }
                Err(FlushError::NoRoom(reason)) => {
                    inner.set_stalled(Some(reason));
                    Ok(())
                }
                Err(FlushError::Failed(reason)) => {
                    // Said at once, not when the loop next collects it.
                    inner.fail(reason.clone());
                    Err(reason)
                }
            }
        }));
        Ok(())
    }

    /// Waits for the flush being written, if any.
    async fn wait(&mut self) -> Result<(), String> {
        match self.running.take() {
            Some(task) => joined(task.await),
            None => Ok(()),
        }
    }
}

fn joined(outcome: Result<Result<(), String>, JoinError>) -> Result<(), String> {
    outcome.unwrap_or_else(|e| Err(format!("the flush task failed: {e}")))
}
