//! The whole cluster in one deterministic simulation: the roles' real
//! services (TLogs over `MemStore`, storage servers over `MemEngine`, the
//! sequencer, the proxies, coordinators over `MemDisk`, the client
//! libraries) on turmoil's simulated
//! network and clock, a workload checked against a model, and faults, all
//! drawn from one seed. The same seed gives the same trace.
//!
//! ```text
//!  seed ─▶ knobs + fault plan ─▶ turmoil: hosts (roles) + workload ─▶ history ─▶ model check
//!                                     ▲ kill/restart, cut, clog (driver)
//! ```
//!
//! What makes it deterministic: every role runs on its host's simulated
//! runtime (the TLog's writer as a task, `WriterPlacement::RuntimeTask`);
//! time comes from the runtime or [`clock::SimClock`]; the transport's
//! `select!`s are biased; retry jitter draws from the thread's fastrand,
//! seeded per run.

#[cfg(feature = "broken-variants")]
pub mod broken;
pub mod clock;
pub mod faults;
pub mod history;
pub mod hosts;
pub mod knobs;
pub mod layout;
pub mod mover;
pub mod net;
pub mod operator;
pub mod registers;
mod run;
pub mod stray;
pub mod trace;
pub mod workload;

pub use faults::FaultKinds;
pub use layout::Shape;
pub use run::{run, RunReport, SimOptions, WORKLOAD_HOST};
