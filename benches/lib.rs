//! Criterion micro-benchmarks of teamlog's parts, one file each:
//!
//! - `wire.rs`: encoding and decoding commits and peek replies;
//! - `cursor.rs`: the cursors' merge against a bare `BinaryHeap` merge;
//! - `broadcast_bytes.rs`: what empty versions cost in log bytes;
//! - `engine.rs`: the storage engine's writes and reads against raw heed.
//!
//! Run them with `cargo bench -p benches` (or `--bench NAME`); the figures
//! of record and their baselines are in BENCHMARKS.md. The whole-system
//! benchmarks are `teamlog bench` and `teamlog replay`.
