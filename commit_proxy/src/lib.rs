//! The commit path: the sequencer hands out versions, the resolver orders
//! metadata, and commit proxies batch client commits, tag them with storage
//! teams and write them to the TLogs.

pub mod shard_map;
pub mod validate;
pub mod tagging;
pub mod topology;
