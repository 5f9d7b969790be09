//! The TLog role: durable, partitioned per-team streams.
//!
//! ```text
//!  server (RPC) ─▶ engine (pure state machine) ─▶ writer thread ─▶ log ─▶ store (files | memory)
//! ```

pub mod engine;
pub mod file_store;
pub mod log;
pub mod mem_store;
pub mod record;
pub mod server;
pub mod store;
pub mod team;
mod waiter;
pub mod writer;
