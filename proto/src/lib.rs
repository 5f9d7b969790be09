//! What two teamlog processes must agree on: the domain types, the team
//! message block format, the RPC messages (flatbuffers) and the framed
//! transport that carries them.

pub mod types;

pub use types::*;
