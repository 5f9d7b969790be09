//! `teamlog bench`: the TLog against raw appends, the commit path through a
//! local cluster against the TLog-only ceiling, a storage server's
//! catch-up against raw heed, how long commits stop when a process of
//! each role is killed, and how fast a storage server that lost its data
//! rebuilds from a teammate. Each prints a table and writes JSON; the
//! figures of record are in BENCHMARKS.md.

mod baseline;
pub mod commit;
mod measure;
pub mod rebuild;
pub mod recovery;
pub mod storage;
pub mod tlog;
