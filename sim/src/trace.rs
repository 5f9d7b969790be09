//! The run's trace: every fault and every outcome the workload saw, each
//! stamped with the simulated time, and the violations found. Two runs of
//! one seed give the same trace, line for line.

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

#[derive(Clone, Default)]
pub struct Trace {
    inner: Rc<RefCell<Lines>>,
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    violations: Vec<String>,
}

impl Trace {
    /// Notes what a host saw, at the host's simulated time.
    pub fn note(&self, who: &str, what: impl std::fmt::Display) {
        self.note_at(turmoil::sim_elapsed().unwrap_or_default(), who, what);
    }

    /// Notes what happened at simulated time `at`.
    pub fn note_at(&self, at: std::time::Duration, who: &str, what: impl std::fmt::Display) {
        self.inner
            .borrow_mut()
            .lines
            .push(format!("{:>9.3}s {who:<12} {what}", at.as_secs_f64()));
    }

    pub fn violation(&self, what: impl std::fmt::Display) {
        let what = what.to_string();
        self.note("VIOLATION", &what);
        self.inner.borrow_mut().violations.push(what);
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.borrow().lines.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner.borrow().violations.clone()
    }

    /// A digest of every line, to compare runs.
    pub fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.inner.borrow().lines.hash(&mut hasher);
        hasher.finish()
    }
}
