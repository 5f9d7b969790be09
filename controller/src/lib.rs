//! The cluster controller: elected through the coordinators, it recovers
//! the cluster into a new generation whenever the current one loses a
//! member, and records each generation in the coordinators' core state.
//!
//! ```text
//!  coordinators: register "core_state" (cluster::core_state)
//!        ▲ read / conditional write
//!  Recovery (recovery.rs, pure) ─Command─▶ runtime ─lock / recruit / open─▶ TLogs, workers, sequencer
//!        ▲                                    │
//!        └──────────────Event─────────────────┘
//!  metadata.rs: the shard map carried across generations by the metadata team
//!  probe.rs: the generation's workers probed, a dead one found at once
//!  pause.rs: a pause of the controller's own process is not taken for its workers' silence
//!  exclusion.rs: storage servers the configuration leaves out, a recovery when they change
//!  failures.rs: storage servers silent past a timeout left out, taken back when they answer
//!  keeper.rs: moves whose driver is gone, taken over
//!  distribution.rs (pure) + distributor.rs: shards split by bytes and writes, balanced across teams
//! ```

pub mod distribution;
pub mod distributor;
pub mod exclusion;
pub mod failures;
pub mod keeper;
pub mod metadata;
pub mod pause;
pub mod probe;
pub mod recovery;
pub mod retirement;
pub mod runtime;

pub use runtime::{Controller, ControllerConfig, RecoveryStatus};
