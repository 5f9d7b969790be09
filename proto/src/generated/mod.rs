//! Rust code that flatc 25.12.19 generates from `proto/schema/*.fbs`.
//!
//! Do not edit: run `scripts/regen-flatbuffers` after changing a schema.
//! Role code uses the owned types of `crate::rpc` instead of these.

#[allow(warnings, clippy::all, clippy::pedantic, clippy::nursery)]
#[rustfmt::skip]
mod rpc_generated;

pub use rpc_generated::teamlog::rpc;
