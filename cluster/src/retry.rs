//! How a process retries a peer: jittered, growing delays (backon),
//! bounded in total, so that processes that failed together do not retry
//! in step. Used while a peer starts and for the commit path's calls.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Retries for up to `timeout`: delays from 20 ms growing to 500 ms, each
/// with jitter.
pub fn backoff(timeout: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .without_max_times()
        .with_total_delay(Some(timeout))
}
