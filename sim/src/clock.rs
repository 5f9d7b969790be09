//! The simulation's clock, for the roles' cores and the workload's actors:
//! simulated time since the simulation began, the same on every host.

use std::time::Duration;

use proto::clock::Clock;

/// Where the simulated Unix time starts: 2026-01-01.
const EPOCH_UNIX_US: u64 = 1_767_225_600_000_000;

pub struct SimClock;

impl Clock for SimClock {
    fn now_us(&self) -> u64 {
        turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64)
    }

    fn unix_time_us(&self) -> u64 {
        EPOCH_UNIX_US + self.now_us()
    }
}

/// Simulated time since the simulation began, for the workload's actors.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}
