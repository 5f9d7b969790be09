//! The `teamlog` binary's library: process wiring, the local `dev` setup and
//! the benchmarks. Roles live in their own crates (`tlog`, ...).

pub mod bench;
pub mod dev;
pub mod process;
pub mod workload;
