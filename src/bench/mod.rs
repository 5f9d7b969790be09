//! `teamlog bench`: the TLog against raw appends, the commit path through a
//! local cluster against the TLog-only ceiling, a storage server's
//! catch-up against raw heed, how long commits stop when a process of
//! each role is killed, how fast a storage server that lost its data
//! rebuilds from a teammate, how fast a range moves to another team, and
//! how a cluster fares while it scales from two teams to three. Each prints a table and writes JSON; the
//! figures of record are in BENCHMARKS.md.

mod baseline;
pub mod commit;
mod loaded;
mod measure;
pub mod moves;
pub mod rebuild;
pub mod recovery;
pub mod scale;
pub mod storage;
pub mod tlog;

pub use loaded::CopyBenchArgs;

/// Runs `measure` in a new temporary directory under `dir`; when it fails,
/// the directory (the cluster's data and logs) is kept for inspection and
/// named on stderr.
async fn in_temp_dir<F, Fut>(dir: &std::path::Path, measure: F) -> anyhow::Result<()>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let temp = tempfile::tempdir_in(dir).context("creating a bench dir")?;
    let outcome = measure(temp.path().to_path_buf()).await;
    if outcome.is_err() {
        let kept = temp.keep();
        eprintln!(
            "kept the cluster's directory for inspection: {}",
            kept.display()
        );
    }
    outcome
}
