//! The sequencer process: the sequencer hands out commit versions in order
//! and read versions, and the resolver orders the metadata the proxies
//! commit. Both are pure cores; `service` serves them over RPC.
//!
//! ```text
//!  proxies ─get_commit_version / report_committed─▶ SequencerCore
//!          ─resolve──────────────────────────────▶ ResolverCore
//!  clients ─get_read_version─────────────────────▶ SequencerCore
//! ```

pub mod resolver;
pub mod sequencer;
pub mod service;
