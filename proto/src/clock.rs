//! Time as a handle, so a simulation can drive role timers and versions.

use std::time::Instant;

pub trait Clock: Send + Sync + 'static {
    /// Microseconds on a monotonic clock with an arbitrary origin.
    fn now_us(&self) -> u64;

    /// Milliseconds on the same clock.
    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    /// Microseconds since the Unix epoch, for what must rise across
    /// restarts of a process (its request numbers); not for durations.
    fn unix_time_us(&self) -> u64;
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

    fn unix_time_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}
