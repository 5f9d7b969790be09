//! Whether the controller's own process was paused: its runtime starved of
//! CPU, or the whole process stopped, for longer than a heartbeat takes.
//!
//! A worker counts as failed once the controller has not heard from it for
//! the failure timeout. When the controller's process was the one that did
//! not run, that silence is its own: the registrations are queued behind
//! it, and a recovery started on it would replace a live generation. Where
//! one process hosts the controller and every worker (`teamlog dev`), a
//! pause of that process would always look like the loss of its worker.
//! So a tick that comes far later than asked marks the process paused,
//! and silence is not trusted for one failure timeout after it: long
//! enough for the queued registrations to be read. Cassandra's failure
//! detector ignores its own pauses the same way.
//!
//! ```text
//!  ticker task ─every TICK─▶ PauseWatch::observe(now) ─late by > PAUSE?─▶ distrust silence until now + timeout
//!  watch loop  ─▶ trusts_silence(now)? ─no─▶ no "silent for N ms" verdict this round
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use proto::clock::Clock;

/// How often the ticker asks to run.
const TICK: Duration = Duration::from_millis(20);

/// Lateness of a tick, past `TICK`, that marks the process paused: far
/// more than scheduling jitter, well under a failure timeout.
const PAUSE: Duration = Duration::from_millis(100);

/// What the ticker saw of its own ticks.
#[derive(Debug)]
pub struct PauseWatch {
    failure_timeout_ms: u64,
    last_tick_ms: AtomicU64,
    distrust_until_ms: AtomicU64,
}

impl PauseWatch {
    pub fn new(failure_timeout: Duration, now_ms: u64) -> PauseWatch {
        PauseWatch {
            failure_timeout_ms: failure_timeout.as_millis() as u64,
            last_tick_ms: AtomicU64::new(now_ms),
            distrust_until_ms: AtomicU64::new(0),
        }
    }

    /// A tick at `now_ms`, asked for `TICK` after the last.
    pub fn observe(&self, now_ms: u64) {
        let last = self.last_tick_ms.swap(now_ms, Ordering::AcqRel);
        let late = now_ms
            .saturating_sub(last)
            .saturating_sub(TICK.as_millis() as u64);
        if late > PAUSE.as_millis() as u64 {
            tracing::warn!(
                late_ms = late,
                "this process was paused; silence is not trusted for a failure timeout"
            );
            self.distrust_until_ms
                .fetch_max(now_ms + self.failure_timeout_ms, Ordering::AcqRel);
        }
    }

    /// Whether silence measured at `now_ms` may be taken for a failure.
    pub fn trusts_silence(&self, now_ms: u64) -> bool {
        now_ms >= self.distrust_until_ms.load(Ordering::Acquire)
    }

    /// Ticks until `watch` is dropped.
    pub fn start(watch: &Arc<PauseWatch>, clock: Arc<dyn Clock>) {
        let watch: Weak<PauseWatch> = Arc::downgrade(watch);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(watch) = watch.upgrade() else {
                    return;
                };
                watch.observe(clock.now_ms());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_distrusts_silence_for_one_failure_timeout() {
        let watch = PauseWatch::new(Duration::from_millis(500), 0);
        for now in [20, 40, 61, 95] {
            watch.observe(now);
            assert!(watch.trusts_silence(now), "a tick on time at {now}");
        }
        // Paused from 95 to 800: every worker would look silent.
        watch.observe(800);
        assert!(!watch.trusts_silence(800));
        assert!(!watch.trusts_silence(1299));
        watch.observe(820);
        assert!(
            !watch.trusts_silence(1299),
            "a tick on time ends no distrust"
        );
        assert!(watch.trusts_silence(1300));
    }

    #[test]
    fn a_second_pause_extends_the_distrust() {
        let watch = PauseWatch::new(Duration::from_millis(500), 0);
        watch.observe(400);
        watch.observe(1000);
        assert!(!watch.trusts_silence(1499));
        assert!(watch.trusts_silence(1500));
    }
}
