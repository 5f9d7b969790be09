//! Pacing: how fast the proxy lets queued commits into batches while a
//! rate limit holds (see `rate_control`). A token bucket of commit bytes:
//!
//! ```text
//!  tokens += rate × elapsed   (at most RATE × MAX_CREDIT: an idle spell
//!                              does not buy a burst)
//!  a batch forms once tokens ≥ 0, then spends its bytes (tokens may go
//!  below zero: a batch larger than the credit waits for none, the next
//!  one waits for the debt)
//! ```
//!
//! Pacing only holds commits in the queue: a batch that formed goes on,
//! and a commit waiting is never refused for the limit. (A full queue
//! still refuses new commits `overloaded`, paced or not.)

use std::time::Duration;

use proto::units::binary_bytes;

/// A limit on the commit bytes a proxy takes into batches, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pace {
    pub bytes_per_second: u64,
    pub why: String,
}

impl Pace {
    /// The limit as status reports it.
    pub fn describe(&self) -> String {
        format!(
            "new commits limited to {}/s: {}",
            binary_bytes(self.bytes_per_second),
            self.why
        )
    }
}

/// The most credit the bucket holds, as time at the current rate.
const MAX_CREDIT: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Pacer {
    pace: Option<Pace>,
    /// Millionths of bytes that may enter batches now (a second's rate
    /// earns one a microsecond, exactly); below zero, a debt to wait out.
    tokens: i128,
    refilled_us: u64,
}

impl Pacer {
    /// Sets the limit from now on (`None` lifts it). A limit where there
    /// was none starts with no credit; a changed one keeps the credit or
    /// debt there is.
    pub fn set(&mut self, pace: Option<Pace>, now_us: u64) {
        self.refill(now_us);
        if self.pace.is_none() {
            self.tokens = 0;
        }
        self.pace = pace;
        self.refill(now_us);
    }

    pub fn pace(&self) -> Option<&Pace> {
        self.pace.as_ref()
    }

    /// When the next batch may form: `None` for now, else the time (µs).
    pub fn ready_at(&mut self, now_us: u64) -> Option<u64> {
        let pace = self.pace.as_ref()?;
        let rate = i128::from(pace.bytes_per_second.max(1));
        self.refill(now_us);
        if self.tokens >= 0 {
            return None;
        }
        let wait_us = u64::try_from((-self.tokens + rate - 1) / rate).unwrap_or(u64::MAX);
        Some(now_us.saturating_add(wait_us))
    }

    /// A batch of `bytes` formed.
    pub fn spend(&mut self, bytes: usize, now_us: u64) {
        if self.pace.is_some() {
            self.refill(now_us);
            self.tokens -= bytes as i128 * 1_000_000;
        }
    }

    fn refill(&mut self, now_us: u64) {
        let elapsed_us = now_us.saturating_sub(self.refilled_us);
        self.refilled_us = self.refilled_us.max(now_us);
        let Some(pace) = &self.pace else { return };
        let rate = i128::from(pace.bytes_per_second);
        let cap = rate * MAX_CREDIT.as_micros() as i128;
        self.tokens = (self.tokens + rate * i128::from(elapsed_us)).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(bytes_per_second: u64) -> Option<Pace> {
        Some(Pace {
            bytes_per_second,
            why: "test".into(),
        })
    }

    #[test]
    fn without_a_limit_every_batch_may_form_at_once() {
        let mut pacer = Pacer::default();
        pacer.spend(1 << 30, 10);
        assert_eq!(pacer.ready_at(10), None);
    }

    #[test]
    fn a_batch_over_the_credit_makes_the_next_wait_out_its_debt() {
        let mut pacer = Pacer::default();
        pacer.set(pace(1000), 0);
        assert_eq!(pacer.ready_at(0), None, "a debt of zero is no wait");
        pacer.spend(500, 0);
        // 500 bytes at 1000 B/s: half a second.
        assert_eq!(pacer.ready_at(0), Some(500_000));
        assert_eq!(pacer.ready_at(250_000), Some(500_000));
        assert_eq!(pacer.ready_at(500_000), None);
    }

    #[test]
    fn credit_saved_while_idle_is_capped() {
        let mut pacer = Pacer::default();
        pacer.set(pace(1000), 0);
        // An hour idle earns at most 100 ms of credit: 100 bytes.
        let hour = 3_600_000_000;
        pacer.spend(1100, hour);
        assert_eq!(pacer.ready_at(hour), Some(hour + 1_000_000));
    }

    #[test]
    fn lifting_the_limit_forgives_the_debt_and_a_new_one_starts_without_credit() {
        let mut pacer = Pacer::default();
        pacer.set(pace(1000), 0);
        pacer.spend(10_000, 0);
        assert!(pacer.ready_at(0).is_some());
        pacer.set(None, 0);
        assert_eq!(pacer.ready_at(0), None);
        pacer.set(pace(1000), 5_000_000);
        pacer.spend(1000, 5_000_000);
        assert_eq!(pacer.ready_at(5_000_000), Some(6_000_000));
        // A lower limit keeps the debt and pays it slower.
        pacer.set(pace(500), 5_000_000);
        assert_eq!(pacer.ready_at(5_000_000), Some(7_000_000));
    }

    #[test]
    fn status_names_the_rate_in_binary_units() {
        let pace = Pace {
            bytes_per_second: 3 << 19,
            why: "team-3 is behind".into(),
        };
        assert_eq!(
            pace.describe(),
            "new commits limited to 1.5 MiB/s: team-3 is behind"
        );
    }
}
