//! Where a role's synced disk writes run: a storage server's flushes, a
//! coordinator's raft writes.
//!
//! A write that syncs takes milliseconds on a real disk, and far longer
//! when other writers crowd it, and the thread making it does nothing else
//! meanwhile. A runtime thread is shared by every task of the process, and
//! a `teamlog server` hosts many roles, so such a write on it would hold up
//! commits, reads and heartbeats of other roles for as long. The writes go
//! to tokio's blocking pool instead. A disk in memory (and so a
//! simulation, whose runtime is simulated and whose threads must all be
//! its own) writes on the task, after yielding once: other tasks then run
//! while the write is under way, as they would beside a real one.
//!
//! ```text
//!  task ─run(write)─▶ BlockingPool: a blocking-pool thread writes and syncs; the task awaits it
//!                     OnTask:       the task yields once, then writes, right here
//! ```

/// See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskWrites {
    #[default]
    BlockingPool,
    OnTask,
}

impl DiskWrites {
    /// Runs `write` where this says, and returns what it returned. A panic
    /// in it goes on in the caller, as it would have on the task.
    pub async fn run<T: Send + 'static>(self, write: impl FnOnce() -> T + Send + 'static) -> T {
        match self {
            DiskWrites::OnTask => {
                tokio::task::yield_now().await;
                write()
            }
            DiskWrites::BlockingPool => match tokio::task::spawn_blocking(write).await {
                Ok(written) => written,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels a blocking task, and
                // the caller's task ends with it.
                Err(_) => std::future::pending().await,
            },
        }
    }
}
