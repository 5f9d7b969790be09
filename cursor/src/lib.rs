//! Peek cursors: how storage servers (and tools) read the TLogs' team
//! streams, in the shape of FoundationDB's partitioned-transaction cursors.
//!
//! ```text
//!  TLogs ══TCP══▶ TLogSource ─┐
//!                             ├─ PeekSource::peek(team, begin, max_bytes) ─▶ PeekReply
//!  (tests) ──▶ MemorySource ──┘                          │
//!                                                        ▼
//!  StorageTeamPeekCursor            one team
//!  BroadcastedStorageTeamPeekCursor a fixed set of teams, merged behind the version barrier
//!  MutableTeamPeekCursor            a server's private team + its team set, changing on the fly
//!                                                        │
//!                                 PeekCursor: get / next / reset / advance_to
//! ```
//!
//! Every cursor implements [`PeekCursor`]: [`fetch`] (or
//! [`remote_more_available`]) fetches and says what came ([`Fetched`]),
//! then [`has_remaining`]/[`get`]/[`next`] walk the local data, which stays
//! re-iterable with [`reset`] until the next fetch. [`PeekCursor::iter`] and
//! [`PeekCursor::next_mutation`] are the iterator forms.
//!
//! # Merged cursors and the version barrier
//!
//! A merged cursor yields version `V` only once every team it reads *has*
//! `V`: the team's stream reached `V` (a message or an empty-version message
//! at `V`, in broadcast mode) or a peek reply's `end` passed `V` (every
//! version below `end` is complete on that TLog, which is all a team gets in
//! the mode without broadcasting). Both modes yield the same mutations.
//! A refill fetches only the teams that ran dry and hold the barrier back,
//! all at once. [`Ordered`] yields a version's mutations by subsequence;
//! [`Unordered`] yields them team by team in team-id order.
//!
//! # End of stream
//!
//! After a TLog's lock, its peek replies say `end_of_stream`: the team is
//! retired once its tail was delivered, and [`PeekCursor::is_end_of_stream`]
//! turns true once every team is retired.
//!
//! [`fetch`]: PeekCursor::fetch
//! [`remote_more_available`]: PeekCursor::remote_more_available
//! [`has_remaining`]: PeekCursor::has_remaining
//! [`get`]: PeekCursor::get
//! [`next`]: PeekCursor::next
//! [`reset`]: PeekCursor::reset

mod broadcast;
mod error;
mod group;
pub mod metadata_team;
mod mutable;
mod peek_cursor;
pub mod source;
mod stream;
mod team;

pub use broadcast::BroadcastedStorageTeamPeekCursor;
pub use error::{CorruptData, CursorError, SourceError};
pub use group::{MergeOrder, Ordered, Unordered};
pub use mutable::MutableTeamPeekCursor;
pub use peek_cursor::{Fetched, LocalMutations, PeekCursor};
pub use proto::team_set::{team_set_key, TeamSet, TeamSetError};
pub use source::{
    BroadcastMode, GenerationRoute, GenerationSource, MemorySource, PeekSource, TLogSource,
    TLogSourceConfig,
};
pub use team::StorageTeamPeekCursor;

/// Bytes of blocks one peek asks for per team unless a cursor is told
/// otherwise.
pub const DEFAULT_MAX_BYTES: u32 = 1 << 20;
