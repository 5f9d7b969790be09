//! The commit proxy: batches client commits, gets their versions from the
//! sequencer and their order of metadata from the resolver, tags them with
//! storage teams and writes them to the TLogs.
//!
//! ```text
//!  clients ─▶ proxy (service) ─▶ proxy_core (pure) ─▶ tagging, validate (pure)
//!                 ├─▶ sequencer process · TLogs
//!                 └─▶ admission: TLog backlogs ─▶ teams refused in the core
//!                                   └─▶ rate_control ─▶ pacing in the core
//! ```

pub mod admission;
pub mod pacing;
pub mod proxy;
pub mod proxy_core;
pub mod rate_control;
pub mod tagging;
#[cfg(test)]
mod test_topology;
pub mod validate;
