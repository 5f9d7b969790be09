//! How a process retries a peer: jittered, growing delays (backon),
//! bounded in total, so that processes that failed together do not retry
//! in step. Used while a peer starts and for the commit path's calls; and
//! a bounded wait for a condition, for shutdown paths.

use std::time::Duration;

use backon::{ConstantBuilder, ExponentialBuilder, Retryable};

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

/// The same delays as [`backoff`], for as long as the caller keeps the
/// retry going (it drops the future to stop).
pub fn endless_backoff() -> ExponentialBuilder {
    backoff(Duration::ZERO).with_total_delay(None)
}

/// How often [`wait_until`] looks again.
const CONDITION_POLL: Duration = Duration::from_millis(10);

/// Waits, looking every 10 ms, until `condition` holds or `timeout`
/// passes; says whether it held. For shutdown paths that wait for work in
/// flight to finish.
pub async fn wait_until(condition: impl Fn() -> bool, timeout: Duration) -> bool {
    let check = || async {
        if condition() {
            Ok(())
        } else {
            Err(())
        }
    };
    let looks = (timeout.as_millis() / CONDITION_POLL.as_millis()) as usize;
    check
        .retry(
            ConstantBuilder::default()
                .with_delay(CONDITION_POLL)
                .with_max_times(looks),
        )
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn wait_until_says_whether_the_condition_came_to_hold() {
        let looks = AtomicU32::new(0);
        let third_look = || looks.fetch_add(1, Ordering::Relaxed) >= 2;
        assert!(wait_until(third_look, Duration::from_secs(5)).await);
        assert_eq!(looks.load(Ordering::Relaxed), 3);
        assert!(!wait_until(|| false, Duration::from_millis(30)).await);
    }
}
