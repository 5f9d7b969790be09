//! What operators change while the cluster runs, kept in the coordinators'
//! register [`CONFIGURATION_REGISTER`] beside the core state:
//! - the teams that are leaving (`teamlog scale --remove-servers`). The
//!   data distributor reads it every round, moves each shard a leaving
//!   team holds to a staying team, and moves none onto a leaving one; once
//!   a leaving team holds nothing, its servers serve nothing.
//! - the storage servers excluded from their teams (`teamlog exclude`):
//!   the controller recovers into a generation whose TLogs and proxies
//!   leave them out, so a server that is gone for good no longer holds
//!   back its teams' data on the TLogs, nor the retirement of old
//!   generations.
//! - the storage servers the controller found failed: silent, or stopped,
//!   for the cluster file's `storage_failure_timeout_ms`. They are left
//!   out as excluded ones are, and taken back once they answer again.
//!
//! ```text
//!  teamlog scale, exclude ─conditional write─▶ "configuration" register
//!  distributor round ─read─▶ leaving teams ─▶ plan: their shards move off first
//!  controller, on each change and every second ─read─▶ excluded ∪ failed servers ≠ the generation's ─▶ recovery
//!  controller, every second ─▶ a server silent past the timeout: failed += it; one failed that answers: failed -= it
//! ```

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The coordinators' register that holds the configuration.
pub const CONFIGURATION_REGISTER: &str = "configuration";

/// What every encoded configuration starts with, so that a register
/// holding a later format is refused instead of misread.
const FORMAT: &str = "teamlog-configuration 1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigurationError {
    #[error("configuration is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("configuration has format {found:?}, this build reads {FORMAT:?}")]
    Format { found: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    format: String,
    /// Teams being emptied: every shard they hold moves to another team,
    /// and none moves onto them.
    #[serde(default)]
    pub leaving_teams: BTreeSet<u64>,
    /// Storage servers left out of their teams: the TLogs keep nothing for
    /// them and they serve nothing.
    #[serde(default)]
    pub excluded_servers: BTreeSet<u64>,
    /// Storage servers the controller left out because they stopped
    /// answering; it takes each back when it answers again.
    #[serde(default)]
    pub failed_servers: BTreeSet<u64>,
}

impl Default for Configuration {
    fn default() -> Self {
        Configuration {
            format: FORMAT.to_owned(),
            leaving_teams: BTreeSet::new(),
            excluded_servers: BTreeSet::new(),
            failed_servers: BTreeSet::new(),
        }
    }
}

impl Configuration {
    /// The configuration a coordinated register holds: the default while
    /// nothing was written there.
    pub fn from_register(value: &[u8]) -> Result<Self, ConfigurationError> {
        if value.is_empty() {
            return Ok(Configuration::default());
        }
        #[derive(Deserialize)]
        struct Head {
            format: String,
        }
        let malformed = |e: serde_json::Error| ConfigurationError::Malformed(e.to_string());
        let head: Head = serde_json::from_slice(value).map_err(malformed)?;
        if head.format != FORMAT {
            return Err(ConfigurationError::Format { found: head.format });
        }
        serde_json::from_slice(value).map_err(malformed)
    }

    /// Every storage server to leave out: excluded or failed.
    pub fn left_out(&self) -> BTreeSet<u64> {
        self.excluded_servers
            .union(&self.failed_servers)
            .copied()
            .collect()
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a configuration always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reads_back_as_written_and_an_empty_register_is_the_default() {
        assert_eq!(
            Configuration::from_register(b""),
            Ok(Configuration::default())
        );
        let mut leaving = Configuration::default();
        leaving.leaving_teams.insert(3);
        leaving.excluded_servers.insert(102);
        leaving.failed_servers.insert(201);
        assert_eq!(leaving.left_out(), BTreeSet::from([102, 201]));
        assert_eq!(
            Configuration::from_register(&leaving.encode()),
            Ok(leaving.clone())
        );
        let later = String::from_utf8(leaving.encode().to_vec())
            .unwrap()
            .replace("configuration 1", "configuration 2");
        assert!(matches!(
            Configuration::from_register(later.as_bytes()),
            Err(ConfigurationError::Format { .. })
        ));
        assert!(matches!(
            Configuration::from_register(b"{\"format\": 1}"),
            Err(ConfigurationError::Malformed(_))
        ));
    }
}
