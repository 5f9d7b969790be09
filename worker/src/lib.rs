//! A worker: one `teamlog server` process. It registers with the cluster
//! controller and hosts what the controller recruits for each generation
//! (TLogs, the sequencer, proxies), each role on its own port, so a
//! cluster on one machine can be one process or many.
//!
//! ```text
//!  controller ─Recruit─▶ worker (service.rs) ─start─▶ roles.rs: TLog │ sequencer │ proxy
//!       ▲                    │ every 100 ms: RegisterWorker(address, roles and their problems)
//!       └────────────────────┘
//! ```
//!
//! Where TLogs keep their logs (`disks.rs`), where roles listen and what
//! clock they read come with the [`RoleContext`]: the `teamlog server`
//! binary gives directories, TCP and the system clock; the simulation
//! gives memory, its network and its clock.

pub mod disks;
pub mod roles;
pub mod service;

pub use disks::{DirDisks, MemDisks, TLogDisks};
pub use roles::RoleContext;
pub use service::WorkerService;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("starting a role: {0}")]
    Role(String),
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
}
