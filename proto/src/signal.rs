//! A value that tasks wait on, like tokio's `watch`, except that it wakes
//! its waiters in the order they began to wait. (`watch` spreads its
//! waiters over several queues at random, so which reply a server writes
//! first would differ from run to run, and a simulation could not replay a
//! seed.)
//!
//! ```text
//!  writer: set / update ─▶ value (mutex) ─▶ Notify::notify_waiters
//!  reader: wait_for(pred) ─▶ enable a Notified, check pred, await it, check again
//! ```

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

pub struct Signal<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T: Clone> Signal<T> {
    pub fn new(value: T) -> Signal<T> {
        Signal {
            value: Mutex::new(value),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        // Every change is one assignment, so a panic elsewhere cannot leave
        // the value half made.
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self) -> T {
        self.lock().clone()
    }

    /// Sets the value and wakes every waiter.
    pub fn set(&self, value: T) {
        *self.lock() = value;
        self.changed.notify_waiters();
    }

    /// Changes the value in place; wakes the waiters when `change` says it
    /// changed anything.
    pub fn update(&self, change: impl FnOnce(&mut T) -> bool) {
        let changed = change(&mut self.lock());
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Waits until the value satisfies `ready`, and returns it.
    pub async fn wait_for(&self, ready: impl Fn(&T) -> bool) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change between the look and
            // the wait still wakes it.
            notified.as_mut().enable();
            {
                let value = self.lock();
                if ready(&value) {
                    return value.clone();
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_returns_once_the_value_is_ready_and_not_before() {
        let signal = Arc::new(Signal::new(0u64));
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.wait_for(|v| *v >= 3).await }
        });
        for value in 1..=2 {
            signal.set(value);
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "woke at {value}");
        }
        signal.update(|v| {
            *v = 3;
            true
        });
        let seen = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
        assert_eq!(seen, 3);
    }

    #[tokio::test]
    async fn a_ready_value_returns_at_once_and_an_unchanged_update_wakes_no_one() {
        let signal = Signal::new(5u64);
        assert_eq!(signal.wait_for(|v| *v == 5).await, 5);
        signal.update(|_| false);
        assert_eq!(signal.get(), 5);
    }

    /// Waiters wake in the order they began to wait, run after run.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_wake_in_the_order_they_began_to_wait() {
        let signal = Arc::new(Signal::new(false));
        let woken = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let signal = Arc::clone(&signal);
            let woken = Arc::clone(&woken);
            tasks.push(tokio::spawn(async move {
                signal.wait_for(|v| *v).await;
                woken.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        signal.set(true);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*woken.lock().unwrap(), (0..16).collect::<Vec<_>>());
    }
}
