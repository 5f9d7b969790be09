//! Time as a handle, so a simulation can drive the TLog's timers.

use std::time::Instant;

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds on a monotonic clock with an arbitrary origin.
    fn now_ms(&self) -> u64;
}

/// The machine's monotonic clock.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}
