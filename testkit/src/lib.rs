//! What tests, `teamlog dev` and the benchmarks use to run and drive a
//! cluster: child processes of the `teamlog` binary, a whole local cluster,
//! a TLog inside the test's process, reproducible seeds, and commits and
//! reads straight against one TLog.
//!
//! ```text
//!  LocalCluster::start(exe, dir, spec) ─▶ dir/cluster.toml ─▶ ChildProcess × (tlogs, sequencer, proxies, storage)
//!  seed_from_env() ─▶ TEAMLOG_SEED or a random seed, printed
//!  VersionChain + set_commit ─▶ TLogCommitRequest ─▶ RpcClient ─▶ read_team(...) ─▶ what the TLog holds
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

pub mod in_process;
pub mod local_cluster;
pub mod process;
pub mod seed;
pub mod tlog_stream;

pub use in_process::InProcessTLog;
pub use local_cluster::{ClusterSpec, LocalCluster};
pub use process::{free_local_addrs, signal, ChildProcess, Signal};
pub use seed::{kills_from_env, seed_from_env};

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting teamlog {role}: {source}")]
    Spawn {
        role: String,
        source: std::io::Error,
    },
    #[error("teamlog {role} exited during start-up: {status}")]
    ExitedDuringStart { role: String, status: ExitStatus },
    #[error("teamlog {role} did not start listening within {timeout:?}")]
    StartTimeout { role: String, timeout: Duration },
    #[error("process exited with {status}")]
    Exited { status: ExitStatus },
    #[error("teamlog {role} did not stop within {timeout:?} of SIGTERM and was killed")]
    StopTimeout { role: String, timeout: Duration },
    #[error("waiting for a child process: {0}")]
    Wait(std::io::Error),
    #[error("signalling a child process: {0}")]
    Signal(rustix::io::Errno),
    #[error("finding free local ports: {0}")]
    Ports(std::io::Error),
    #[error("no storage server {0} in the cluster file")]
    NoSuchStorageServer(u64),
    #[error(transparent)]
    Tls(#[from] cluster::tls_files::TlsFilesError),
    #[error(transparent)]
    ClusterFile(#[from] cluster::ClusterFileError),
    #[error("{what}: {source}")]
    Rpc {
        what: String,
        source: proto::RpcError,
    },
    #[error("the tlog returned a bad block: {0}")]
    BadBlock(#[from] proto::BlockError),
    #[error("{0}")]
    StreamOrder(String),
    #[error("starting a tlog: {0}")]
    TLog(#[from] tlog::server::TLogError),
    #[error("no generation was recovered within {timeout:?}: {last}")]
    NotRecovered { timeout: Duration, last: String },
}

impl TestkitError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestkitError + '_ {
        move |source| TestkitError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
