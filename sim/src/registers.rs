//! The coordinators' workload: clients that read a coordinated register
//! and write it conditionally, while the faults run; then a write that
//! must take (liveness). Checked as a chain of revisions, which is what
//! linearizable conditional writes build.
//!
//! ```text
//!  client: read ─▶ (revision r, value) ─▶ write(expected r, unique value) ─▶ took at r+1 │ lost to (r', v') │ unknown
//!  checks: one value per revision, each written by a write that expected
//!          the revision before it; what any operation sees is at least
//!          what every operation finished before it began saw or wrote
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coordinator::client::CoordinatorClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::now;
use crate::layout::{coordinator_addrs, REGISTER};
use crate::net;
use crate::trace::Trace;
use crate::workload::LIVENESS;

/// One operation and what it saw of the register, if it saw it.
#[derive(Clone, Debug)]
pub struct Observation {
    pub who: String,
    pub started: Duration,
    pub ended: Duration,
    /// What the operation asked: a read, or a write of `value` expecting
    /// `expected`.
    pub write: Option<(u64, Bytes)>,
    /// The register as the operation left or found it; `None` when it
    /// failed (a write's effect is then unknown).
    pub saw: Option<(u64, Bytes)>,
}

#[derive(Default)]
pub struct RegisterHistory {
    pub observations: Vec<Observation>,
}

pub struct RegisterWorkload {
    pub clients: usize,
    pub seed: u64,
    pub fault_end: Duration,
    pub history: Rc<RefCell<RegisterHistory>>,
    pub trace: Trace,
}

impl RegisterWorkload {
    pub async fn run(self) {
        let client = CoordinatorClient::new(&coordinator_addrs(), net::client_config())
            .expect("the layout names coordinators");
        let loops = (0..self.clients).map(|i| self.client_loop(i, &client));
        futures::future::join_all(loops).await;
        let deadline = now() + LIVENESS;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let read = self.operate("registers", &client, None).await;
            if let Some((revision, _)) = read {
                let value = Bytes::from(format!("final-{attempt}"));
                let wrote = self
                    .operate("registers", &client, Some((revision, value.clone())))
                    .await;
                if wrote.is_some_and(|(r, v)| r == revision + 1 && v == value) {
                    return;
                }
            }
            if now() >= deadline {
                self.trace.violation(format!(
                    "no register write took within {LIVENESS:?} after the faults stopped"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client_loop(&self, index: usize, client: &CoordinatorClient) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_0000 ^ index as u64);
        let who = format!("register-client-{index}");
        let mut written = 0;
        while now() < self.fault_end {
            let read = self.operate(&who, client, None).await;
            if let Some((revision, _)) = read.filter(|_| rng.random_bool(0.7)) {
                written += 1;
                let value = Bytes::from(format!("r{index}-{written}"));
                self.operate(&who, client, Some((revision, value))).await;
            }
            // The cluster writes its registers now and then, not flat out.
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..200))).await;
        }
    }

    /// Reads the register, or writes it when `write` says so, and records
    /// what the operation saw.
    async fn operate(
        &self,
        who: &str,
        client: &CoordinatorClient,
        write: Option<(u64, Bytes)>,
    ) -> Option<(u64, Bytes)> {
        let started = now();
        let result = match &write {
            None => client.read(REGISTER).await,
            Some((expected, value)) => client
                .write(REGISTER, *expected, value.clone())
                .await
                .map(|outcome| outcome.register),
        };
        let saw = match result {
            Ok(register) => Some((register.revision, register.value)),
            Err(e) => {
                self.trace
                    .note(who, format!("register {write:?} failed: {e}"));
                None
            }
        };
        if let Some(saw) = &saw {
            self.trace
                .note(who, format!("register {write:?}: at {} {:?}", saw.0, saw.1));
        }
        self.history.borrow_mut().observations.push(Observation {
            who: who.to_owned(),
            started,
            ended: now(),
            write,
            saw: saw.clone(),
        });
        saw
    }
}

impl RegisterHistory {
    /// The chain of revisions the observations imply, checked; one line
    /// per violation.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        // Each value some write asked for, with the revision it expected.
        let asked: BTreeMap<&Bytes, u64> = self
            .observations
            .iter()
            .filter_map(|o| o.write.as_ref().map(|(expected, value)| (value, *expected)))
            .collect();
        let mut chain: BTreeMap<u64, (&Bytes, &Observation)> = BTreeMap::new();
        for observation in &self.observations {
            let Some((revision, value)) = &observation.saw else {
                continue;
            };
            if *revision == 0 {
                if !value.is_empty() {
                    violations.push(format!("{}: a value at revision 0", describe(observation)));
                }
                continue;
            }
            if asked.get(value) != Some(&(revision - 1)) {
                violations.push(format!(
                    "{}: no write of that value expected revision {}",
                    describe(observation),
                    revision - 1
                ));
            }
            match chain.get(revision) {
                Some((other, first)) if *other != value => violations.push(format!(
                    "{} and {} saw different values at revision {revision}",
                    describe(first),
                    describe(observation)
                )),
                Some(_) => {}
                None => {
                    chain.insert(*revision, (value, observation));
                }
            }
        }
        // Linearizable: nothing goes back on what finished before it began.
        let mut by_start: Vec<&Observation> = self
            .observations
            .iter()
            .filter(|o| o.saw.is_some())
            .collect();
        let mut by_end = by_start.clone();
        by_end.sort_by_key(|o| o.ended);
        by_start.sort_by_key(|o| o.started);
        let (mut finished, mut highest): (usize, Option<&Observation>) = (0, None);
        for observation in by_start {
            while finished < by_end.len() && by_end[finished].ended < observation.started {
                let done = by_end[finished];
                if highest.is_none_or(|h| revision(done) > revision(h)) {
                    highest = Some(done);
                }
                finished += 1;
            }
            if let Some(before) = highest {
                if revision(observation) < revision(before) {
                    violations.push(format!(
                        "{} went back on {}, which ended before it began",
                        describe(observation),
                        describe(before)
                    ));
                }
            }
        }
        violations
    }
}

fn revision(observation: &Observation) -> u64 {
    observation
        .saw
        .as_ref()
        .map_or(0, |(revision, _)| *revision)
}

fn describe(observation: &Observation) -> String {
    let what = match &observation.write {
        None => "read".to_owned(),
        Some((expected, value)) => format!("write of {value:?} expecting {expected}"),
    };
    let saw = match &observation.saw {
        Some((revision, value)) => format!("{value:?} at {revision}"),
        None => "nothing".to_owned(),
    };
    format!(
        "{} {what} ({:?}..{:?}) saw {saw}",
        observation.who, observation.started, observation.ended
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        started: u64,
        ended: u64,
        write: Option<(u64, &str)>,
        saw: Option<(u64, &str)>,
    ) -> Observation {
        let bytes = |s: &str| Bytes::from(s.to_owned());
        Observation {
            who: "test".to_owned(),
            started: Duration::from_millis(started),
            ended: Duration::from_millis(ended),
            write: write.map(|(r, v)| (r, bytes(v))),
            saw: saw.map(|(r, v)| (r, bytes(v))),
        }
    }

    fn violations(observations: Vec<Observation>) -> usize {
        let found = RegisterHistory { observations }.violations();
        println!("{found:#?}");
        found.len()
    }

    /// Two writers race from revision 0; "a" takes, "b" loses to it; a
    /// write of "c" after it takes at 2; reads see the chain.
    fn chain() -> Vec<Observation> {
        vec![
            op(0, 1, None, Some((0, ""))),
            op(2, 5, Some((0, "a")), Some((1, "a"))),
            op(3, 6, Some((0, "b")), Some((1, "a"))),
            op(7, 8, None, Some((1, "a"))),
            op(9, 10, Some((1, "c")), Some((2, "c"))),
            // A write whose outcome is unknown, and one read overlapping it.
            op(11, 20, Some((2, "d")), None),
            op(12, 13, None, Some((3, "d"))),
        ]
    }

    #[test]
    fn a_chain_of_conditional_writes_passes() {
        assert_eq!(violations(chain()), 0);
    }

    #[test]
    fn forks_strangers_and_stale_reads_are_violations() {
        let wrong = [
            // Revision 1 holding "b" as well as "a".
            op(0, 31, None, Some((1, "b"))),
            // A value no write asked for at that revision.
            op(0, 31, None, Some((5, "a"))),
            op(0, 31, None, Some((4, "zz"))),
            // Something at revision 0.
            op(0, 31, None, Some((0, "x"))),
            // Back to revision 1 after a read of revision 3 ended.
            op(30, 31, None, Some((1, "a"))),
        ];
        for observation in wrong {
            let shown = describe(&observation);
            let mut history = chain();
            history.push(observation);
            assert_eq!(violations(history), 1, "{shown}");
        }
    }
}
