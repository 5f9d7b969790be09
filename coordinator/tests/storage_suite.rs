//! openraft's own conformance suite for storage implementations, run over
//! both coordinator disks.

use std::sync::Arc;

use coordinator::disk::{HeedDisk, MemDisk};
use coordinator::raft_types::TypeConfig;
use coordinator::store::{LogStore, StateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct OverMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for OverMemory {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<u64>> {
        let disk = Arc::new(MemDisk::default());
        Ok(((), LogStore::new(disk.clone()), StateMachine::open(disk)?))
    }
}

struct OverHeed;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OverHeed {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let disk = Arc::new(HeedDisk::open(dir.path()).expect("a fresh store opens"));
        Ok((dir, LogStore::new(disk.clone()), StateMachine::open(disk)?))
    }
}

#[test]
fn the_store_over_memory_passes_openrafts_suite() {
    Suite::test_all(OverMemory).unwrap();
}

#[test]
fn the_store_over_heed_passes_openrafts_suite() {
    Suite::test_all(OverHeed).unwrap();
}
