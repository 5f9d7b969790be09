//! Time as a handle, so a simulation can drive role timers and versions.

use std::time::Instant;

pub trait Clock: Send + Sync + 'static {
    /// Microseconds on a monotonic clock with an arbitrary origin.
    fn now_us(&self) -> u64;

    /// Milliseconds on the same clock.
    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }
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
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}
