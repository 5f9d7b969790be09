//! The `teamlog` binary's library: process wiring, the local `dev` setup and
//! the benchmarks. Roles live in their own crates (`tlog`, ...).

pub mod bench;
mod bench_baseline;
pub mod bench_commit;
mod bench_measure;
pub mod bench_storage;
pub mod client;
pub mod client_cli;
pub mod cluster;
pub mod dev;
pub mod generate;
pub mod local_cluster;
pub mod metrics;
pub mod process;
pub mod replay;
pub mod replay_log;
pub mod report;
pub mod roles;
pub mod status;
pub mod trace;
pub mod workload;
