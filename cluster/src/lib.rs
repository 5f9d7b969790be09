//! What every process knows about the cluster it belongs to: the cluster
//! file, the teams and their servers (topology), which TLogs hold each team
//! (placement), and the data directory a process owns. The control-plane
//! roles (coordinators, cluster controller, epochs) will live here too.
//!
//! ```text
//!  cluster.toml ──load──▶ ClusterFile ──topology()──▶ Topology ──tlogs_of(team)──▶ placement
//!                              └──shard_map()──▶ proto::shard_map::ShardMap (initial)
//! ```

pub mod cluster_file;
pub mod data_dir;
pub mod placement;
pub mod retry;
pub mod tls_files;
pub mod topology;

pub use cluster_file::{ClusterFile, ClusterFileError};
pub use data_dir::{write_atomically, DataDirError, DataDirLock};
pub use topology::{Topology, TopologyError};
