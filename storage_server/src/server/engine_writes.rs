//! Where a storage server's engine writes run.
//!
//! A flush writes many versions in one transaction and syncs it: on a real
//! disk that takes milliseconds, during which the thread running it does
//! nothing else. A runtime thread is shared by every task of the process,
//! and a `teamlog server` hosts many roles, so a flush on it would hold
//! up commits and reads of other roles for as long. The writes go to
//! tokio's blocking pool instead. A simulation, whose runtime is simulated
//! and whose engine is in memory, runs them on the task, as threads
//! outside the simulation would make its runs differ.
//!
//! ```text
//!  apply loop ─prepare (store lock)─▶ run(write + sync) ─▶ finish (store lock) ─▶ pop
//!                                      BlockingPool: a blocking-pool thread; the task awaits it
//!                                      OnTask: right here
//! ```

/// See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineWrites {
    #[default]
    BlockingPool,
    OnTask,
}

impl EngineWrites {
    /// Runs `write` where this says, and returns what it returned. A panic
    /// in it goes on in the caller, as it would have on the task.
    pub(crate) async fn run<T: Send + 'static>(
        self,
        write: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        match self {
            EngineWrites::OnTask => write(),
            EngineWrites::BlockingPool => match tokio::task::spawn_blocking(write).await {
                Ok(written) => written,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels a blocking task, and
                // the caller's task ends with it.
                Err(_) => std::future::pending().await,
            },
        }
    }
}
