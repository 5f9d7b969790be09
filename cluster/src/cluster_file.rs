//! The cluster file: one TOML file that every process and tool reads to
//! find the others and to know the cluster's teams.
//!
//! ```toml
//! replication = 2          # TLogs per team
//! broadcast = true         # empty versions for uninvolved teams
//!
//! [[coordinators]]         # 1, 3 or 5: they hold the coordinated state
//! id = 1
//! address = "127.0.0.1:4490"
//!
//! [sequencer]              # also runs the resolver
//! address = "127.0.0.1:4500"
//!
//! [[proxies]]
//! id = 1
//! address = "127.0.0.1:4510"
//!
//! [[tlogs]]
//! address = "127.0.0.1:4520"
//!
//! # Instead of pinning the sequencer, proxies and TLogs above, a cluster
//! # with coordinators may let its controller recruit them on the workers
//! # (`teamlog server`), anew at each recovery:
//! # [generation]
//! # tlogs = 3
//! # proxies = 2
//! # storage_failure_timeout_ms = 60000  # a storage server silent this long is
//! #                                     # left out until it answers (0: never; else ≥ 1000)
//!
//! [[storage_servers]]
//! id = 10
//! address = "127.0.0.1:4530"
//! private_team = 1010
//!
//! [[teams]]
//! id = 1
//! servers = [10, 11]
//!
//! [[shards]]               # the initial shard map: a shard runs to the next begin
//! begin = ""
//! team = 1
//!
//! [tls]                    # optional: mutual TLS (see tls_files)
//! ca = "tls/ca.pem"        # paths relative to this file
//! cert = "tls/member.pem"  # without cert and key: a client
//! key = "tls/member-key.pem"
//! ```
//!
//! Shard begins are UTF-8 strings; `\xNN` escapes give any byte.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use proto::key_text::{unescape, KeyTextError};
use proto::shard_map::{ShardMap, ShardMapError};
use proto::system_keys::{ShardAssignment, METADATA_TEAM};
use proto::transport::tls::TlsSettings;
use proto::transport::{ClientConfig, ServerConfig};
use proto::{ProxyId, StorageServerId, StorageTeamId};
use serde::{Deserialize, Serialize};

use crate::data_dir::{write_atomically, DataDirError};
use crate::tls_files::{self, TlsEntry, TlsFilesError};
use crate::topology::{Topology, TopologyError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("reading cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing cluster file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cluster file {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: Box<ClusterFileError>,
    },
    #[error("writing cluster file: {0}")]
    Write(#[from] DataDirError),
    #[error("a cluster needs at least one proxy")]
    NoProxies,
    #[error("a cluster file pins a sequencer, proxies and TLogs, or lets the controller recruit them ([generation] with coordinators), and not both")]
    CommitPath,
    #[error("[generation] needs at least one proxy and at least `replication` TLogs")]
    GenerationShape,
    #[error(
        "[generation] storage_failure_timeout_ms is {0}: it must be 0 (never) or at least \
         {MIN_STORAGE_FAILURE_TIMEOUT_MS}, several of the controller's status probes"
    )]
    StorageFailureTimeout(u64),
    #[error("[distribution]'s limits must be above zero: {0:?}")]
    DistributionLimits(DistributionSettings),
    #[error("proxy ids must be distinct")]
    DuplicateProxyIds,
    #[error("no proxy {0} in the cluster file")]
    NoSuchProxy(u64),
    #[error("coordinator ids must be distinct and not 0")]
    BadCoordinatorIds,
    #[error("a cluster has 1, 3 or 5 coordinators (a majority must outlive a failure), not {0}")]
    CoordinatorCount(usize),
    #[error("no coordinator {0} in the cluster file")]
    NoSuchCoordinator(u64),
    #[error("no storage server {0} in the cluster file")]
    NoSuchStorageServer(u64),
    #[error("a cluster needs at least one storage team")]
    NoTeams,
    #[error("shard {begin:?} names unknown team {team}")]
    UnknownShardTeam { begin: String, team: u64 },
    #[error("shard begin: {0}")]
    ShardBegin(#[from] KeyTextError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    ShardMap(#[from] ShardMapError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsFilesError),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub replication: usize,
    #[serde(default = "default_broadcast")]
    pub broadcast: bool,
    /// The coordinators; a cluster without them has fixed roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinators: Vec<CoordinatorEntry>,
    /// The pinned commit path; absent when the controller recruits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlogs: Vec<Endpoint>,
    /// What each generation gets when the controller recruits the commit
    /// path on the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationShape>,
    #[serde(default)]
    pub storage_servers: Vec<StorageEntry>,
    #[serde(default)]
    pub teams: Vec<TeamEntry>,
    #[serde(default)]
    pub shards: Vec<ShardEntry>,
    /// Mutual TLS between members; without it every peer is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsEntry>,
    /// How the data distributor splits and balances shards; its defaults
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<DistributionSettings>,
}

/// How the data distributor splits shards and balances them across teams
/// (`[distribution]`; every field has a default). It runs in the cluster
/// controller while the controller recruits the commit path.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributionSettings {
    pub enabled: bool,
    /// A shard holding more bytes than this is split.
    pub max_shard_bytes: u64,
    /// A shard taking more writes a second than this is split.
    pub max_shard_writes_per_sec: u64,
    /// Teams whose bytes differ by less than this are left as they are.
    pub min_imbalance_bytes: u64,
    /// Teams whose writes a second differ by less than this are left as
    /// they are.
    pub min_imbalance_writes_per_sec: u64,
    /// The most a destination server copies for a move, in stored bytes
    /// (keys, values and a per-pair overhead) a second; a storage server's
    /// `--move-rate` overrides it. A move the distributor starts is taken
    /// back when it is not done within twice the time its shard's bytes
    /// (and those of the moves to the same team planned before it) take
    /// at this rate, plus 30 s.
    pub move_bytes_per_sec: u64,
    /// The most moves the distributor plans in one round and runs at once.
    pub max_moves_in_flight: usize,
}

impl Default for DistributionSettings {
    fn default() -> Self {
        DistributionSettings {
            enabled: true,
            max_shard_bytes: 256 << 20,
            max_shard_writes_per_sec: 4_000,
            min_imbalance_bytes: 64 << 20,
            min_imbalance_writes_per_sec: 2_000,
            move_bytes_per_sec: 64 << 20,
            max_moves_in_flight: 8,
        }
    }
}

fn default_broadcast() -> bool {
    true
}

/// How many TLogs and proxies a recruited generation gets.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GenerationShape {
    pub tlogs: usize,
    pub proxies: usize,
    /// How long a storage server may not answer (or answer that it stopped)
    /// before the controller leaves it out of its teams, so that the TLogs
    /// stop keeping their data for it and old generations retire; it is
    /// taken back, and copies its teams again, once it answers. Long enough
    /// for a restart; 0 leaves that to the operator (`teamlog exclude`).
    #[serde(default = "default_storage_failure_timeout_ms")]
    pub storage_failure_timeout_ms: u64,
}

/// The shortest storage failure timeout: a server is probed every 250 ms,
/// and one lost answer or reconnect must not make it fail.
pub const MIN_STORAGE_FAILURE_TIMEOUT_MS: u64 = 1_000;

fn default_storage_failure_timeout_ms() -> u64 {
    60_000
}

impl GenerationShape {
    pub fn new(tlogs: usize, proxies: usize) -> GenerationShape {
        GenerationShape {
            tlogs,
            proxies,
            storage_failure_timeout_ms: default_storage_failure_timeout_ms(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEntry {
    pub id: u64,
    pub address: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxyEntry {
    pub id: u64,
    pub address: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageEntry {
    pub id: u64,
    pub address: SocketAddr,
    pub private_team: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TeamEntry {
    pub id: u64,
    pub servers: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub begin: String,
    pub team: u64,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cluster: ClusterFile =
            toml::from_str(&text).map_err(|source| ClusterFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if let (Some(tls), Some(dir)) = (&cluster.tls, path.parent()) {
            cluster.tls = Some(tls.resolved_against(dir));
        }
        cluster
            .check()
            .map_err(|source| ClusterFileError::Invalid {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(cluster)
    }

    /// Writes the file atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), ClusterFileError> {
        let text = toml::to_string_pretty(self).expect("a cluster file serializes as TOML");
        Ok(write_atomically(path, text.as_bytes())?)
    }

    /// Checks what the roles would otherwise trip over later.
    pub fn check(&self) -> Result<(), ClusterFileError> {
        match &self.generation {
            Some(shape) => {
                if self.sequencer.is_some()
                    || !self.proxies.is_empty()
                    || !self.tlogs.is_empty()
                    || self.coordinators.is_empty()
                {
                    return Err(ClusterFileError::CommitPath);
                }
                if shape.proxies == 0 || shape.tlogs < self.replication.max(1) {
                    return Err(ClusterFileError::GenerationShape);
                }
                let failure = shape.storage_failure_timeout_ms;
                if failure != 0 && failure < MIN_STORAGE_FAILURE_TIMEOUT_MS {
                    return Err(ClusterFileError::StorageFailureTimeout(failure));
                }
            }
            None => {
                if self.sequencer.is_none() || self.tlogs.is_empty() {
                    return Err(ClusterFileError::CommitPath);
                }
                if self.proxies.is_empty() {
                    return Err(ClusterFileError::NoProxies);
                }
            }
        }
        if let Some(d) = self.distribution {
            if d.max_shard_bytes == 0
                || d.max_shard_writes_per_sec == 0
                || d.move_bytes_per_sec == 0
                || d.max_moves_in_flight == 0
            {
                return Err(ClusterFileError::DistributionLimits(d));
            }
        }
        let ids: BTreeSet<u64> = self.proxies.iter().map(|p| p.id).collect();
        if ids.len() != self.proxies.len() {
            return Err(ClusterFileError::DuplicateProxyIds);
        }
        let coordinators = self.coordinator_members();
        if coordinators.len() != self.coordinators.len() || coordinators.contains_key(&0) {
            return Err(ClusterFileError::BadCoordinatorIds);
        }
        if !matches!(self.coordinators.len(), 0 | 1 | 3 | 5) {
            return Err(ClusterFileError::CoordinatorCount(self.coordinators.len()));
        }
        self.topology().check()?;
        self.shard_map()?;
        Ok(())
    }

    /// The TLS settings the `[tls]` section names, read from their files.
    pub fn tls_settings(&self) -> Result<Option<TlsSettings>, ClusterFileError> {
        Ok(self.tls.as_ref().map(TlsEntry::settings).transpose()?)
    }

    /// How a process of this cluster calls others.
    pub fn client_config(&self) -> Result<ClientConfig, ClusterFileError> {
        Ok(tls_files::client_config(self.tls_settings()?.as_ref()))
    }

    /// How a process of this cluster serves.
    pub fn server_config(&self) -> Result<ServerConfig, ClusterFileError> {
        tls_files::server_config(self.tls_settings()?.as_ref())
            .map_err(|e| ClusterFileError::Tls(e.into()))
    }

    /// Whether the controller recruits the commit path (`[generation]`).
    pub fn is_recruited(&self) -> bool {
        self.generation.is_some()
    }

    /// The pinned sequencer's address.
    pub fn sequencer_address(&self) -> Result<SocketAddr, ClusterFileError> {
        self.sequencer
            .as_ref()
            .map(|s| s.address)
            .ok_or(ClusterFileError::CommitPath)
    }

    pub fn proxy_ids(&self) -> BTreeSet<ProxyId> {
        self.proxies.iter().map(|p| ProxyId(p.id)).collect()
    }

    pub fn proxy(&self, id: u64) -> Result<&ProxyEntry, ClusterFileError> {
        self.proxies
            .iter()
            .find(|p| p.id == id)
            .ok_or(ClusterFileError::NoSuchProxy(id))
    }

    /// The coordinators by id.
    pub fn coordinator_members(&self) -> BTreeMap<u64, SocketAddr> {
        self.coordinators
            .iter()
            .map(|c| (c.id, c.address))
            .collect()
    }

    pub fn coordinator(&self, id: u64) -> Result<&CoordinatorEntry, ClusterFileError> {
        self.coordinators
            .iter()
            .find(|c| c.id == id)
            .ok_or(ClusterFileError::NoSuchCoordinator(id))
    }

    pub fn coordinator_addresses(&self) -> Vec<SocketAddr> {
        self.coordinators.iter().map(|c| c.address).collect()
    }

    pub fn tlog_addresses(&self) -> Vec<SocketAddr> {
        self.tlogs.iter().map(|t| t.address).collect()
    }

    /// The teams as the roles see them, for a generation of `tlog_count`
    /// TLogs.
    pub fn topology_for(&self, tlog_count: usize) -> Topology {
        Topology {
            tlog_count,
            ..self.topology()
        }
    }

    pub fn topology(&self) -> Topology {
        let tlog_count = match &self.generation {
            Some(shape) => shape.tlogs,
            None => self.tlogs.len(),
        };
        Topology {
            tlog_count,
            replication: self.replication,
            broadcast: self.broadcast,
            teams: self
                .teams
                .iter()
                .map(|t| {
                    let servers = t.servers.iter().map(|s| StorageServerId(*s)).collect();
                    (StorageTeamId(t.id), servers)
                })
                .collect(),
            private_teams: self
                .storage_servers
                .iter()
                .map(|s| (StorageServerId(s.id), StorageTeamId(s.private_team)))
                .collect(),
            metadata_team: self.generation.as_ref().map(|_| METADATA_TEAM),
        }
    }

    /// The initial shard map; with no shards listed, all keys go to the
    /// first team.
    pub fn shard_map(&self) -> Result<ShardMap, ClusterFileError> {
        let teams: BTreeMap<u64, ()> = self.teams.iter().map(|t| (t.id, ())).collect();
        let mut entries = Vec::new();
        for shard in &self.shards {
            if !teams.contains_key(&shard.team) {
                return Err(ClusterFileError::UnknownShardTeam {
                    begin: shard.begin.clone(),
                    team: shard.team,
                });
            }
            let begin = unescape(&shard.begin)?;
            entries.push((begin, ShardAssignment::to(StorageTeamId(shard.team))));
        }
        if entries.is_empty() {
            let Some(first) = self.teams.first() else {
                return Err(ClusterFileError::NoTeams);
            };
            entries.push((Bytes::new(), ShardAssignment::to(StorageTeamId(first.id))));
        }
        Ok(ShardMap::new(entries)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
replication = 2

[[coordinators]]
id = 1
address = "127.0.0.1:4490"

[sequencer]
address = "127.0.0.1:4500"

[[proxies]]
id = 1
address = "127.0.0.1:4510"

[[tlogs]]
address = "127.0.0.1:4520"

[[tlogs]]
address = "127.0.0.1:4521"

[[storage_servers]]
id = 10
address = "127.0.0.1:4530"
private_team = 1010

[[teams]]
id = 1
servers = [10]

[[teams]]
id = 2
servers = [10]

[[shards]]
begin = ""
team = 1

[[shards]]
begin = "m\\xff"
team = 2
"#;

    #[test]
    fn a_cluster_file_parses_round_trips_and_builds_its_shard_map() {
        let cluster: ClusterFile = toml::from_str(SAMPLE).unwrap();
        cluster.check().unwrap();
        assert!(cluster.broadcast);
        let map = cluster.shard_map().unwrap();
        assert_eq!(
            map.assignment_of(b"m\xff"),
            &ShardAssignment::to(StorageTeamId(2))
        );
        assert_eq!(
            map.assignment_of(b"m"),
            &ShardAssignment::to(StorageTeamId(1))
        );
        let again: ClusterFile =
            toml::from_str(&toml::to_string_pretty(&cluster).unwrap()).unwrap();
        assert_eq!(again, cluster);
    }

    #[test]
    fn mistakes_are_reported() {
        let unknown_team = SAMPLE.replace("team = 2", "team = 9");
        let cluster: ClusterFile = toml::from_str(&unknown_team).unwrap();
        assert!(matches!(
            cluster.check(),
            Err(ClusterFileError::UnknownShardTeam { team: 9, .. })
        ));
        let two_coordinators = SAMPLE.replace(
            "[sequencer]",
            "[[coordinators]]\nid = 2\naddress = \"127.0.0.1:4491\"\n\n[sequencer]",
        );
        let cluster: ClusterFile = toml::from_str(&two_coordinators).unwrap();
        assert!(matches!(
            cluster.check(),
            Err(ClusterFileError::CoordinatorCount(2))
        ));
        let typo = SAMPLE.replace("replication", "replicaton");
        assert!(toml::from_str::<ClusterFile>(&typo).is_err());
    }

    /// The sample with its commit path recruited instead of pinned.
    fn recruited() -> String {
        let start = SAMPLE.find("[sequencer]").unwrap();
        let end = SAMPLE.find("[[storage_servers]]").unwrap();
        format!(
            "{}[generation]\ntlogs = 3\nproxies = 2\n\n{}",
            &SAMPLE[..start],
            &SAMPLE[end..]
        )
    }

    #[test]
    fn a_recruited_commit_path_takes_its_shape_from_the_generation_section() {
        let cluster: ClusterFile = toml::from_str(&recruited()).unwrap();
        cluster.check().unwrap();
        assert!(cluster.is_recruited());
        assert_eq!(cluster.topology().tlog_count, 3);
        assert_eq!(cluster.topology_for(5).tlog_count, 5);
        assert!(matches!(
            cluster.sequencer_address(),
            Err(ClusterFileError::CommitPath)
        ));
        let again: ClusterFile =
            toml::from_str(&toml::to_string_pretty(&cluster).unwrap()).unwrap();
        assert_eq!(again, cluster);
    }

    #[test]
    fn a_commit_path_is_pinned_or_recruited_never_both_nor_neither() {
        let both = format!("{SAMPLE}\n[generation]\ntlogs = 3\nproxies = 2\n");
        let no_coordinators = recruited().replace(
            "[[coordinators]]\nid = 1\naddress = \"127.0.0.1:4490\"\n",
            "",
        );
        let neither = recruited().replace("[generation]\ntlogs = 3\nproxies = 2\n", "");
        for text in [both, no_coordinators, neither] {
            let cluster: ClusterFile = toml::from_str(&text).unwrap();
            assert!(
                matches!(cluster.check(), Err(ClusterFileError::CommitPath)),
                "{text}"
            );
        }
        let too_few = recruited().replace("tlogs = 3", "tlogs = 1");
        let cluster: ClusterFile = toml::from_str(&too_few).unwrap();
        assert!(matches!(
            cluster.check(),
            Err(ClusterFileError::GenerationShape)
        ));
        let timeout = |ms: u64| {
            let text = recruited().replace(
                "proxies = 2\n",
                &format!("proxies = 2\nstorage_failure_timeout_ms = {ms}\n"),
            );
            let cluster: ClusterFile = toml::from_str(&text).unwrap();
            cluster.check()
        };
        assert!(matches!(
            timeout(300),
            Err(ClusterFileError::StorageFailureTimeout(300))
        ));
        assert!(timeout(0).is_ok() && timeout(1_000).is_ok());
        let unsaid: ClusterFile = toml::from_str(&recruited()).unwrap();
        let shape = unsaid.generation.expect("recruited");
        assert_eq!(shape.storage_failure_timeout_ms, 60_000);
    }

    #[test]
    fn load_names_the_file_and_the_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            SAMPLE.replace("begin = \"m\\\\xff\"", "begin = \"\\\\q\""),
        )
        .unwrap();
        let error = ClusterFile::load(&path).unwrap_err();
        assert!(matches!(&error, ClusterFileError::Invalid { source, .. }
            if matches!(**source, ClusterFileError::ShardBegin(_))));
        assert!(error.to_string().contains("cluster.toml"), "{error}");
        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            ClusterFile::load(&missing),
            Err(ClusterFileError::Read { .. })
        ));
        let cluster: ClusterFile = toml::from_str(SAMPLE).unwrap();
        cluster.save(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), cluster);
    }
}
