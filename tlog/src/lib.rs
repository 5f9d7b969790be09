//! The TLog role: durable, partitioned per-team streams.

pub mod file_store;
pub mod log;
pub mod mem_store;
pub mod store;
