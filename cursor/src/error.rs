//! What can go wrong while peeking, split by what the caller does about it.
//!
//! ```text
//!  PeekSource ──SourceError──▶ cursor ──CursorError::Source { team, begin, .. }──▶ caller
//!  block bytes ──parse/check──▶ cursor ──CursorError::Corrupt { team, .. }──────▶ caller
//! ```
//!
//! - [`SourceError::Popped`]: the data is gone; the consumer must restart
//!   from a snapshot (a storage server refetches its shards).
//! - [`SourceError::UnknownTeam`]: configuration; the team is not (yet) on
//!   the TLogs asked.
//! - [`SourceError::Unavailable`] / [`SourceError::Timeout`]: transient;
//!   call again ([`CursorError::is_retryable`]). The cursor state is intact.
//! - [`CursorError::Corrupt`]: a source handed back bytes that break the
//!   block format or the stream's order; retrying the same replica will not
//!   help.

use proto::{BlockError, StorageTeamId, Version};

use proto::team_set::TeamSetError;

/// Why a [`PeekSource`](crate::PeekSource) could not answer a peek.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// `begin` is below the team's popped version: that data was discarded.
    /// `popped` is where the team's data now starts, when the source says
    /// (a TLog's refusal names it).
    #[error("peek at {begin} is below the popped version{}", fmt_popped(.popped))]
    Popped {
        begin: Version,
        popped: Option<Version>,
    },
    /// No TLog asked knows the team.
    #[error("the team is unknown to the source")]
    UnknownTeam,
    /// Every attempt failed (connection refused or lost, the TLog overloaded
    /// or stopped); worth trying again later.
    #[error("no replica answered after {attempts} attempts: {reason}")]
    Unavailable { attempts: u32, reason: String },
    /// Every attempt ran out of time.
    #[error("no reply within the timeout after {attempts} attempts")]
    Timeout { attempts: u32 },
    /// The reply could not be understood at all.
    #[error("unusable reply: {0}")]
    Corrupt(String),
}

fn fmt_popped(popped: &Option<Version>) -> String {
    popped.map(|p| format!(" {p}")).unwrap_or_default()
}

impl SourceError {
    /// Whether calling again may succeed without anything else changing.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. } | SourceError::Timeout { .. }
        )
    }
}

/// Bad data in a team's stream, as seen by the cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptData {
    #[error("block does not parse: {0}")]
    Block(#[from] BlockError),
    #[error("block of {found} in the reply for another team")]
    WrongTeam { found: StorageTeamId },
    #[error("version {version} below the peek's begin {begin}")]
    BelowBegin { begin: Version, version: Version },
    #[error("version {version} does not follow {previous}")]
    VersionNotIncreasing { previous: Version, version: Version },
    #[error("team set at version {version}: {error}")]
    TeamSet {
        version: Version,
        error: TeamSetError,
    },
}

/// Why a cursor could not move on. The cursor stays usable: what was
/// fetched before the error is kept, and a retryable error can simply be
/// followed by another `remote_more_available`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("peeking {team} from {begin}: {source}")]
    Source {
        team: StorageTeamId,
        begin: Version,
        #[source]
        source: SourceError,
    },
    #[error("corrupt stream of {team}: {source}")]
    Corrupt {
        team: StorageTeamId,
        #[source]
        source: CorruptData,
    },
}

impl CursorError {
    /// Whether calling again may succeed without anything else changing.
    pub fn is_retryable(&self) -> bool {
        match self {
            CursorError::Source { source, .. } => source.is_retryable(),
            CursorError::Corrupt { .. } => false,
        }
    }

    /// The team whose stream failed.
    pub fn team(&self) -> StorageTeamId {
        match self {
            CursorError::Source { team, .. } | CursorError::Corrupt { team, .. } => *team,
        }
    }
}
