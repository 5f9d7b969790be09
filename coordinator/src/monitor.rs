//! The controller's failure detector, pure: it is told the outcome of each
//! heartbeat (a status request) to each process, with the time, and says
//! which processes it takes for failed and since when.
//!
//! ```text
//!  probe every 100 ms ─ok─▶ last_ok = now
//!                     ─no answer within 250 ms─▶ nothing
//!  failed  ⇔  now − last_ok > failure_timeout (500 ms)
//! ```
//!
//! A process counts as alive when watching begins, so a new controller
//! does not declare everything failed before its first heartbeats return.

use std::collections::BTreeMap;

/// A process the controller watches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watched {
    pub role: String,
    pub id: u64,
    pub address: String,
}

/// What the detector thinks of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub process: Watched,
    /// How long it has been failed, if it is.
    pub failed_for_ms: Option<u64>,
}

pub struct FailureMonitor {
    failure_timeout_ms: u64,
    last_ok_ms: BTreeMap<Watched, u64>,
}

impl FailureMonitor {
    /// Starts watching `processes` at `now_ms`, each taken for alive.
    pub fn new(
        processes: impl IntoIterator<Item = Watched>,
        failure_timeout_ms: u64,
        now_ms: u64,
    ) -> FailureMonitor {
        FailureMonitor {
            failure_timeout_ms,
            last_ok_ms: processes.into_iter().map(|p| (p, now_ms)).collect(),
        }
    }

    /// Restarts the clock of every process, as when this controller takes
    /// over: what it saw before it led is stale.
    pub fn restart(&mut self, now_ms: u64) {
        for last_ok in self.last_ok_ms.values_mut() {
            *last_ok = now_ms;
        }
    }

    /// A heartbeat to `process` was answered at `now_ms`.
    pub fn answered(&mut self, process: &Watched, now_ms: u64) {
        if let Some(last_ok) = self.last_ok_ms.get_mut(process) {
            *last_ok = (*last_ok).max(now_ms);
        }
    }

    pub fn verdicts(&self, now_ms: u64) -> Vec<Verdict> {
        self.last_ok_ms
            .iter()
            .map(|(process, last_ok)| {
                let silent = now_ms.saturating_sub(*last_ok);
                Verdict {
                    process: process.clone(),
                    failed_for_ms: (silent > self.failure_timeout_ms)
                        .then(|| silent - self.failure_timeout_ms),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlog(id: u64) -> Watched {
        Watched {
            role: "tlog".into(),
            id,
            address: format!("127.0.0.1:{}", 4520 + id),
        }
    }

    #[test]
    fn a_process_silent_past_the_timeout_is_failed_and_an_answer_revives_it() {
        let mut monitor = FailureMonitor::new([tlog(0), tlog(1)], 500, 1_000);
        monitor.answered(&tlog(0), 1_400);
        let at = |monitor: &FailureMonitor, now| {
            monitor
                .verdicts(now)
                .into_iter()
                .map(|v| v.failed_for_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(&monitor, 1_500), [None, None]);
        assert_eq!(at(&monitor, 1_700), [None, Some(200)]);
        assert_eq!(at(&monitor, 2_000), [Some(100), Some(500)]);
        monitor.answered(&tlog(1), 2_000);
        assert_eq!(at(&monitor, 2_000), [Some(100), None]);
        // A late report of an older answer does not move time back.
        monitor.answered(&tlog(1), 1_200);
        assert_eq!(at(&monitor, 2_400), [Some(500), None]);
    }

    #[test]
    fn a_new_controller_starts_everyone_alive() {
        let mut monitor = FailureMonitor::new([tlog(0)], 500, 0);
        assert_eq!(monitor.verdicts(5_000)[0].failed_for_ms, Some(4_500));
        monitor.restart(5_000);
        assert_eq!(monitor.verdicts(5_100)[0].failed_for_ms, None);
    }

    #[test]
    fn unknown_processes_are_ignored() {
        let mut monitor = FailureMonitor::new([tlog(0)], 500, 0);
        monitor.answered(&tlog(9), 100);
        assert_eq!(monitor.verdicts(100).len(), 1);
    }
}
