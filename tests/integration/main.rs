//! The project's integration tests: real `teamlog` processes on 127.0.0.1,
//! started and stopped by each test. One binary, one module per area.

use std::path::Path;

mod admission;
mod cluster_auth;
mod commit_client;
mod commit_path;
mod coordinators;
mod cursor_tlog;
mod data_distribution;
mod data_move;
mod dev;
mod exclusion;
mod nemesis;
mod one_process;
mod recovery;
mod replay;
mod sim;
mod status;
mod storage;
mod storage_bad_reader;
mod storage_disk_full;
mod storage_rebuild;
mod tlog_bad_input;
mod tlog_crash;
mod tlog_disk_full;
mod tlog_memory;
mod tlog_process;

/// The `teamlog` binary this test build goes with.
fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_teamlog"))
}

/// Arguments for storage servers that keep little in memory, so they
/// flush and pop soon after they apply.
fn small_window_storage_args() -> Vec<String> {
    ["--window-versions", "1000", "--window-bytes", "20000"]
        .map(String::from)
        .to_vec()
}

/// A small recruited cluster: one coordinator, three workers recruiting
/// two TLogs (replication 2) and one proxy, and `teams` teams of two
/// storage servers that flush and pop soon after they apply.
fn small_recruited_spec(teams: usize) -> testkit::ClusterSpec {
    testkit::ClusterSpec {
        coordinators: 1,
        workers: 3,
        tlogs: 2,
        proxies: 1,
        replication: 2,
        teams,
        servers_per_team: 2,
        storage_args: small_window_storage_args(),
        ..testkit::ClusterSpec::default()
    }
}

/// [`small_recruited_spec`] with two teams: team 1 holds the keys before
/// `split`, team 2 the rest, and no data distributor moves them.
fn two_teams_split_at(split: &str) -> testkit::ClusterSpec {
    testkit::ClusterSpec {
        shard_begins: vec![split.into()],
        distribution: Some(cluster::DistributionSettings {
            enabled: false,
            ..Default::default()
        }),
        ..small_recruited_spec(2)
    }
}
