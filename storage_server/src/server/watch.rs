//! The watch on the core state: a long poll on the coordinators that
//! answers as soon as a recovery records a new generation, so that the
//! cursor leaves an ended generation's TLogs at once rather than at its
//! next failed peek or periodic read. Reads that wait for a version the
//! new generation committed are answered that much sooner.
//!
//! ```text
//!  coordinators ─watch(seen revision, 5 s)─▶ core state ─▶ Generations::watched
//!      other generations ─▶ the cursor's peeks are interrupted ─▶ the apply loop refreshes
//! ```

use super::*;

use cluster::retry::endless_backoff;

/// How long one watch waits on the coordinators for a change.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// Watches the core state until the service is dropped; nothing to do for
/// a server whose TLogs the cluster file pins.
pub(super) async fn run_core_state_watch<E: KvEngine>(inner: Weak<Inner<E>>) {
    let Some(coordinators) = inner
        .upgrade()
        .and_then(|strong| strong.generations.coordinators())
    else {
        return;
    };
    let mut seen = 0;
    let mut delays = endless_backoff().build();
    loop {
        let watched = coordinators.watch_core_state(seen, WATCH_WAIT).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match watched {
            Ok((state, revision)) => {
                delays = endless_backoff().build();
                if revision > seen {
                    seen = revision;
                    strong.generations.watched(&state);
                }
            }
            Err(error) => {
                // The apply loop still reads the core state on its own.
                tracing::debug!(%error, "watching the core state failed");
                drop(strong);
                let delay = delays.next().unwrap_or(WATCH_WAIT);
                tokio::time::sleep(delay).await;
            }
        }
    }
}
