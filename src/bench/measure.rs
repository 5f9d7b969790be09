//! What the benches measure with: closed loops of operations, the samples
//! they yield, which add up across rounds, and the figures printed from them.
//!
//! ```text
//!  closed_loop(workers, seconds, op) ──▶ Sample { ops, bytes, latencies, elapsed }
//!  Sample + Sample + ... (rounds)     ──▶ Figures { MB/s, ops/s, p50, p99 }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct Figures {
    pub mb_per_s: f64,
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Operations done over some time, with their latencies (microseconds).
pub(crate) struct Sample {
    pub ops: u64,
    pub bytes: u64,
    pub latencies: Histogram<u64>,
    pub elapsed: Duration,
}

impl Sample {
    pub(crate) fn empty() -> Sample {
        Sample {
            ops: 0,
            bytes: 0,
            latencies: new_histogram(),
            elapsed: Duration::ZERO,
        }
    }

    /// The sample with `bytes_per_op` bytes counted for each operation.
    pub(crate) fn sized(mut self, bytes_per_op: usize) -> Sample {
        self.bytes = self.ops * bytes_per_op as u64;
        self
    }

    /// Adds `other`, measured at another time, as if measured together.
    pub(crate) fn add(&mut self, other: &Sample) -> Result<()> {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.latencies.add(&other.latencies)?;
        self.elapsed += other.elapsed;
        Ok(())
    }

    pub(crate) fn figures(&self) -> Figures {
        let seconds = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        Figures {
            mb_per_s: self.bytes as f64 / seconds / 1e6,
            ops_per_s: self.ops as f64 / seconds,
            p50_us: self.latencies.value_at_quantile(0.5) as f64,
            p99_us: self.latencies.value_at_quantile(0.99) as f64,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs `op(worker, n)` in a loop on `workers` tasks for `seconds`.
pub(crate) async fn closed_loop<F, Fut>(workers: usize, seconds: Duration, op: F) -> Result<Sample>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (op, stop) = (op.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                op(worker, count).await?;
                histogram.record(sent.elapsed().as_micros() as u64)?;
                count += 1;
            }
            anyhow::Ok((count, histogram))
        }));
    }
    tokio::time::sleep(seconds).await;
    stop.store(true, Ordering::Relaxed);
    let mut sample = Sample::empty();
    for task in tasks {
        let (count, histogram) = task.await??;
        sample.ops += count;
        sample.latencies.add(histogram)?;
    }
    sample.elapsed = started.elapsed();
    Ok(sample)
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median([]).is_nan());
    }

    #[test]
    fn samples_add_up_as_if_measured_together() {
        let mut total = Sample::empty();
        for (ops, micros) in [(10u64, 100u64), (30, 300)] {
            let mut sample = Sample::empty();
            sample.ops = ops;
            sample.elapsed = Duration::from_millis(500);
            sample.latencies.record_n(micros, ops).unwrap();
            total.add(&sample.sized(1000)).unwrap();
        }
        let figures = total.figures();
        assert_eq!(figures.ops_per_s, 40.0);
        assert_eq!(figures.mb_per_s, 40_000.0 / 1e6);
        assert_eq!(figures.p50_us, 300.0);
    }
}
