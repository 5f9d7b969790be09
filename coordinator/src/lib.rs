//! The coordinators: a few processes that hold the cluster's coordinated
//! state — the few facts every process must agree on to recover (which
//! generation of TLogs is live, who controls the cluster) — as named
//! registers, replicated with openraft. The cluster survives the loss of
//! a minority of them.
//!
//! ```text
//!  CoordinatorClient ─read / write(expected revision)─▶ any coordinator ─forward─▶ leader
//!                                                                                    │ raft log
//!  coordinator 1 ◀──append entries / vote / snapshot──▶ coordinator 2, 3 ◀───────────┘
//!        │ LogStore + StateMachine (store.rs) over CoordinatorDisk (disk.rs: heed | memory)
//!        ▼ Registers (registers.rs): name → (revision, value), conditional writes
//! ```

pub mod candidacy;
pub mod client;
pub mod disk;
pub mod election;
pub mod monitor;
pub mod monitoring;
pub mod network;
pub mod raft_types;
pub mod registers;
pub mod runtime;
pub mod service;
pub mod store;
