//! openraft's async runtime for the coordinators: tokio's, except that the
//! randomness of election timeouts comes from a per-thread generator a
//! caller can seed, so that a simulation replays elections from its seed.
//! Unseeded, each thread's generator starts from the operating system's
//! entropy, as openraft's own does.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};

thread_local! {
    static ELECTION_RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seeds this thread's election randomness: raft nodes running on this
/// thread from now on draw their election timeouts from `seed`.
pub fn seed_election_jitter(seed: u64) {
    ELECTION_RNG.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// A handle to this thread's election generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct ElectionRng;

impl RngCore for ElectionRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|rng| rng.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        with_rng(|rng| rng.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|rng| rng.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        with_rng(|rng| rng.try_fill_bytes(dest))
    }
}

fn with_rng<T>(draw: impl FnOnce(&mut StdRng) -> T) -> T {
    ELECTION_RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        draw(rng.get_or_insert_with(StdRng::from_entropy))
    })
}

/// tokio, with [`ElectionRng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CoordinatorRuntime;

impl AsyncRuntime for CoordinatorRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ElectionRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ElectionRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand08::Rng;

    #[test]
    fn a_seeded_thread_draws_the_same_timeouts_again() {
        let draw = || {
            let mut rng = CoordinatorRuntime::thread_rng();
            (0..8)
                .map(|_| rng.gen_range(500..1000u64))
                .collect::<Vec<_>>()
        };
        seed_election_jitter(7);
        let first = draw();
        seed_election_jitter(7);
        assert_eq!(draw(), first);
        seed_election_jitter(8);
        assert_ne!(draw(), first);
    }
}
