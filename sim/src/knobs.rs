//! Settings drawn per seed, as FoundationDB's simulation draws its knobs:
//! each run tries the roles with other batch sizes, budgets and windows,
//! and the network with other latencies.

use std::time::Duration;

use cluster::DistributionSettings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keeps the distributor's draws apart from the other knobs'.
const DISTRIBUTION_STREAM: u64 = 0x6469_7374;
/// Keeps the TLogs' segment size apart from the other knobs'.
const SEGMENT_STREAM: u64 = 0x7365_676d;
/// Keeps the storage failure timeout apart from the other knobs'.
const FAILURE_STREAM: u64 = 0x6661_696c;

#[derive(Clone, Debug)]
pub struct Knobs {
    pub proxies: u64,
    pub max_batches_in_flight: usize,
    pub batch_interval: Duration,
    pub max_batch_bytes: usize,
    pub idle_push_interval: Duration,
    /// A TLog's memory for recent data: small budgets make peeks read the
    /// log.
    pub tlog_memory_budget: u64,
    /// A TLog's log segments: small ones roll often, so a full disk stops
    /// the log within a run.
    pub tlog_segment_size: u64,
    pub storage_window_versions: u64,
    pub storage_window_bytes: u64,
    pub min_latency: Duration,
    pub max_latency: Duration,
    pub clients: usize,
    /// Clients of the coordinators' register.
    pub register_clients: usize,
    /// The data distributor's limits: the defaults leave the simulation's
    /// few small keys alone; small ones split and move them under the
    /// faults, beside the mover's moves.
    pub distribution: DistributionSettings,
    /// How long a storage server may be silent before the controller
    /// leaves it out: the short ones fire on the faults' kills and cuts,
    /// the long one never within a run.
    pub storage_failure_timeout_ms: u64,
}

impl Knobs {
    /// Draws from `rng`; the distributor's limits, the segment size and
    /// the storage failure timeout come from streams of their own off `seed`, so adding them left every
    /// other draw of a seed as it was.
    pub fn draw(rng: &mut StdRng, seed: u64) -> Knobs {
        let min_latency = Duration::from_micros(rng.random_range(100..2_000));
        Knobs {
            proxies: rng.random_range(1..=2),
            max_batches_in_flight: *pick(rng, &[1, 1, 2, 8]),
            batch_interval: Duration::from_micros(*pick(rng, &[0, 0, 500, 2_000])),
            max_batch_bytes: *pick(rng, &[64, 4 << 10, 8 << 20]),
            idle_push_interval: Duration::from_millis(*pick(rng, &[10, 100])),
            tlog_memory_budget: *pick(rng, &[16 << 10, 256 << 10, 16 << 20]),
            tlog_segment_size: *pick(
                &mut StdRng::seed_from_u64(seed ^ SEGMENT_STREAM),
                &[32 << 10, 1 << 20],
            ),
            storage_window_versions: *pick(rng, &[50_000, 500_000, 5_000_000]),
            storage_window_bytes: *pick(rng, &[16 << 10, 64 << 20]),
            min_latency,
            max_latency: min_latency + Duration::from_micros(rng.random_range(0..20_000)),
            clients: rng.random_range(2..=6),
            register_clients: rng.random_range(1..=3),
            distribution: draw_distribution(&mut StdRng::seed_from_u64(seed ^ DISTRIBUTION_STREAM)),
            storage_failure_timeout_ms: *pick(
                &mut StdRng::seed_from_u64(seed ^ FAILURE_STREAM),
                &[1_000, 2_500, 60_000],
            ),
        }
    }
}

fn draw_distribution(rng: &mut StdRng) -> DistributionSettings {
    if rng.random_bool(0.5) {
        return DistributionSettings::default();
    }
    DistributionSettings {
        enabled: true,
        max_shard_bytes: *pick(rng, &[4 << 10, 16 << 10]),
        max_shard_writes_per_sec: *pick(rng, &[4, 20]),
        min_imbalance_bytes: *pick(rng, &[4 << 10, 16 << 10]),
        min_imbalance_writes_per_sec: *pick(rng, &[2, 10]),
        move_bytes_per_sec: *pick(rng, &[4 << 10, 64 << 20]),
        max_moves_in_flight: *pick(rng, &[1, 8]),
    }
}

pub(crate) fn pick<'a, T>(rng: &mut StdRng, choices: &'a [T]) -> &'a T {
    &choices[rng.random_range(0..choices.len())]
}
