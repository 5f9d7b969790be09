//! The cluster file: one TOML file that every process and tool reads to
//! find the others and to know the cluster's teams.
//!
//! ```toml
//! replication = 2          # TLogs per team
//! broadcast = true         # empty versions for uninvolved teams
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
//! ```
//!
//! Shard begins are UTF-8 strings; `\xNN` escapes give any byte.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use commit_proxy::topology::Topology;
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::{ProxyId, StorageServerId, StorageTeamId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub replication: usize,
    #[serde(default = "default_broadcast")]
    pub broadcast: bool,
    pub sequencer: Endpoint,
    pub proxies: Vec<ProxyEntry>,
    pub tlogs: Vec<Endpoint>,
    #[serde(default)]
    pub storage_servers: Vec<StorageEntry>,
    #[serde(default)]
    pub teams: Vec<TeamEntry>,
    #[serde(default)]
    pub shards: Vec<ShardEntry>,
}

fn default_broadcast() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
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
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading cluster file {}", path.display()))?;
        let cluster: ClusterFile = toml::from_str(&text)
            .with_context(|| format!("parsing cluster file {}", path.display()))?;
        cluster
            .check()
            .with_context(|| format!("checking cluster file {}", path.display()))?;
        Ok(cluster)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        crate::process::write_atomically(path, text.as_bytes())
    }

    /// Checks what the roles would otherwise trip over later.
    pub fn check(&self) -> Result<()> {
        if self.proxies.is_empty() {
            bail!("a cluster needs at least one proxy");
        }
        let ids: BTreeSet<u64> = self.proxies.iter().map(|p| p.id).collect();
        if ids.len() != self.proxies.len() {
            bail!("proxy ids must be distinct");
        }
        self.topology().check()?;
        self.shard_map()?;
        Ok(())
    }

    pub fn proxy_ids(&self) -> BTreeSet<ProxyId> {
        self.proxies.iter().map(|p| ProxyId(p.id)).collect()
    }

    pub fn proxy(&self, id: u64) -> Result<&ProxyEntry> {
        self.proxies
            .iter()
            .find(|p| p.id == id)
            .with_context(|| format!("no proxy {id} in the cluster file"))
    }

    pub fn tlog_addresses(&self) -> Vec<SocketAddr> {
        self.tlogs.iter().map(|t| t.address).collect()
    }

    pub fn topology(&self) -> Topology {
        Topology {
            tlog_count: self.tlogs.len(),
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
        }
    }

    /// The initial shard map; with no shards listed, all keys go to the
    /// first team.
    pub fn shard_map(&self) -> Result<ShardMap> {
        let teams: BTreeMap<u64, ()> = self.teams.iter().map(|t| (t.id, ())).collect();
        let mut entries = Vec::new();
        for shard in &self.shards {
            if !teams.contains_key(&shard.team) {
                bail!("shard {:?} names unknown team {}", shard.begin, shard.team);
            }
            let begin = unescape(&shard.begin)?;
            entries.push((begin, ShardAssignment::to(StorageTeamId(shard.team))));
        }
        if entries.is_empty() {
            let Some(first) = self.teams.first() else {
                bail!("a cluster needs at least one storage team");
            };
            entries.push((Bytes::new(), ShardAssignment::to(StorageTeamId(first.id))));
        }
        Ok(ShardMap::new(entries)?)
    }
}

/// Turns `\xNN` escapes (and `\\`) into bytes.
pub fn unescape(text: &str) -> Result<Bytes> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let digits = std::str::from_utf8(&hex).ok().filter(|h| h.len() == 2);
                let Some(value) = digits.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    bail!("bad \\x escape in {text:?}");
                };
                out.push(value);
            }
            _ => bail!("bad escape in {text:?}: use \\xNN or \\\\"),
        }
    }
    Ok(Bytes::from(out))
}

/// Shows bytes as text, escaping what is not printable ASCII.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
replication = 2

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
        assert!(cluster
            .check()
            .unwrap_err()
            .to_string()
            .contains("unknown team 9"));
        let typo = SAMPLE.replace("replication", "replicaton");
        assert!(toml::from_str::<ClusterFile>(&typo).is_err());
    }

    #[test]
    fn escapes_round_trip() {
        let raw = b"a\\b\xff\x00z";
        assert_eq!(unescape(&escape(raw)).unwrap(), Bytes::from_static(raw));
        assert!(unescape("\\x4").is_err());
        assert!(unescape("\\q").is_err());
    }
}
