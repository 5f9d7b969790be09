//! The commit path: the sequencer hands out versions, the resolver orders
//! metadata, and commit proxies batch client commits, tag them with storage
//! teams and write them to the TLogs.

pub mod proxy;
pub mod proxy_core;
pub mod resolver;
pub mod sequencer;
pub mod sequencer_service;
pub mod tagging;
#[cfg(test)]
mod test_topology;
pub mod validate;
