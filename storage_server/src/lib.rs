//! The storage server role (see docs/ARCHITECTURE.md).
//!
//! ```text
//!   server::StorageService      consume (mutable cursor), flush, pop, reads
//!        ├── generations        where the TLogs of each generation are; rollback points
//!        ├── ownership          which ranges this server answers for, when
//!        ├── sample             bytes held and writes taken per key, for the data distributor
//!        ├── delivery           the cursor's order: strictly rising (version, subsequence)
//!        └── versioned store (below)
//! ```
//!
//! The storage layer, bottom up:
//!
//! ```text
//!   versioned::VersionedStore   reads at a version, apply, flush
//!        ├── window::Window     recent versions in memory (MVCC window)
//!        └── engine::KvEngine   durable state at the durable version
//!               ├── heed_engine::HeedEngine   LMDB
//!               └── mem_engine::MemEngine     in memory, for tests
//! ```

pub mod adding;
#[cfg(feature = "broken-variants")]
pub mod broken;
pub mod copied;
pub mod delivery;
pub mod engine;
pub mod generations;
pub mod heed_engine;
pub mod mem_engine;
pub mod ownership;
pub mod sample;
pub mod server;
pub mod versioned;
pub mod window;
