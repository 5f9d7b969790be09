//! What every process knows about the cluster it belongs to: the cluster
//! file, the teams and their servers (topology), which TLogs hold each team
//! (placement), the data directory a process owns, and the core state the
//! coordinators keep for recoveries (epoch, TLog generations and the shard
//! map their proxies start from), and the configuration operators change
//! while it runs (the teams that are leaving).
//!
//! ```text
//!  cluster.toml ──load──▶ ClusterFile ──topology()──▶ Topology ──tlogs_of(team)──▶ placement
//!                              └──shard_map()──▶ proto::shard_map::ShardMap (initial)
//! ```

pub mod cluster_file;
pub mod configuration;
pub mod core_state;
pub mod data_dir;
pub mod placement;
pub mod retry;
pub mod shard_snapshot;
pub mod tls_files;
pub mod topology;

pub use cluster_file::{ClusterFile, ClusterFileError, DistributionSettings};
pub use data_dir::{write_atomically, DataDirError, DataDirLock};
pub use topology::{Topology, TopologyError};
