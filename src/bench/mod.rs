//! `teamlog bench`: the TLog against raw appends, the commit path through a
//! local cluster against the TLog-only ceiling, and a storage server's
//! catch-up against raw heed. Each prints a table and writes JSON; the
//! figures of record are in BENCHMARKS.md.

mod baseline;
pub mod commit;
mod measure;
pub mod storage;
pub mod tlog;
