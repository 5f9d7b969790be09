//! The types openraft is instantiated with: register commands as the log's
//! payload, their outcomes as replies, and nodes named by id and address.

use std::io::Cursor;

use crate::registers::{Command, Outcome};

openraft::declare_raft_types!(
    /// The coordinators' raft: node ids are the cluster file's coordinator
    /// ids, a node's address is its `host:port`.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::CoordinatorRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
