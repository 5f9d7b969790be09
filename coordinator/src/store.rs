//! openraft's storage over a `CoordinatorDisk`: the log store (entries,
//! vote, commit and purge marks) and the state machine (the registers, the
//! last applied entry and membership, and the latest snapshot).
//!
//! Every write but the applied state's waits while the disk has no room
//! for it (`write_with_room`): openraft stops a node for good on a storage
//! error, and a full disk loses nothing, so the node stalls instead (to
//! its peers, a node that does not answer) and goes on once there is room.
//! The applied state goes on in memory meanwhile (see `apply`).
//!
//! Everything is JSON on disk: the state is a few registers of a few KiB,
//! written a few times a second, so readability wins over size. The applied
//! state is written with every applied batch, so a restart does not
//! re-apply the whole log.

// openraft's traits fix the error type; it is large, and these helpers
// build it for them.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use proto::signal::Signal;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::disk::{CoordinatorDisk, DiskError, Table, WriteOp};
use crate::raft_types::TypeConfig;
use crate::registers::{Outcome, Registers};

type NodeId = u64;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
const APPLIED: &[u8] = b"applied";
const SNAPSHOT: &[u8] = b"snapshot";

/// What the state machine holds, and what a snapshot carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub registers: Registers,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

fn any<E: std::error::Error + 'static>(error: E) -> AnyError {
    AnyError::new(&error)
}

/// Maps a failure to openraft's error for `what` (e.g. reading the logs).
fn io_error<E: std::error::Error + 'static>(
    what: impl Fn(AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> StorageError<NodeId> {
    move |error| StorageError::from(what(any(error)))
}

fn read_logs(e: DiskError) -> StorageError<NodeId> {
    io_error(StorageIOError::read_logs)(e)
}

fn write_logs(e: DiskError) -> StorageError<NodeId> {
    io_error(StorageIOError::write_logs)(e)
}

fn read_snapshot(source: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_snapshot(None, source)
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl Fn(AnyError) -> StorageIOError<NodeId>,
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(io_error(what))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail: no maps with non-string
    // keys, no custom serializers that error.
    serde_json::to_vec(value).unwrap_or_default()
}

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

/// The shortest and the longest wait before a write refused for lack of
/// room is made again.
const ROOM_WAIT_MIN: Duration = Duration::from_millis(20);
const ROOM_WAIT_MAX: Duration = Duration::from_secs(1);

/// Makes `ops` where the disk says, made again while the disk refuses them
/// for lack of room (which wrote nothing); any other failure is returned.
async fn write_with_room(
    disk: &Arc<dyn CoordinatorDisk>,
    ops: Vec<WriteOp>,
) -> std::result::Result<(), DiskError> {
    let waits = ExponentialBuilder::new()
        .with_min_delay(ROOM_WAIT_MIN)
        .with_max_delay(ROOM_WAIT_MAX)
        .without_max_times();
    let ops: Arc<[WriteOp]> = ops.into();
    (|| write_once(disk, Arc::clone(&ops)))
        .retry(waits)
        .when(|e| matches!(e, DiskError::NoSpace(_)))
        .notify(|e, wait| tracing::warn!(error = %e, ?wait, "a raft write waits for room"))
        .await
}

/// Makes `ops` where the disk says, once.
async fn write_once(
    disk: &Arc<dyn CoordinatorDisk>,
    ops: Arc<[WriteOp]>,
) -> std::result::Result<(), DiskError> {
    let disk = Arc::clone(disk);
    disk.writes().run(move || disk.write(&ops)).await
}

fn put_meta(key: &[u8], value: Vec<u8>) -> WriteOp {
    WriteOp::Put {
        table: Table::Meta,
        key: key.to_vec(),
        value,
    }
}

/// The raft log, with the vote and the commit and purge marks.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<dyn CoordinatorDisk>,
}

impl LogStore {
    pub fn new(disk: Arc<dyn CoordinatorDisk>) -> LogStore {
        LogStore { disk }
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>> {
        match self.disk.get(Table::Meta, key).map_err(io_error(what))? {
            Some(bytes) => decode(&bytes, what).map(Some),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let to_key = to.map(index_key);
        self.disk
            .range(Table::Log, &index_key(from), to_key.as_deref())
            .map_err(read_logs)?
            .iter()
            .map(|(_, value)| decode(value, StorageIOError::read_logs))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.meta(PURGED, StorageIOError::read_logs)?;
        let last = match self.disk.last(Table::Log).map_err(read_logs)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = decode(&value, StorageIOError::read_logs)?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        write_with_room(&self.disk, vec![put_meta(VOTE, encode(vote))])
            .await
            .map_err(io_error(StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.meta(VOTE, StorageIOError::read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        write_with_room(&self.disk, vec![put_meta(COMMITTED, encode(&committed))])
            .await
            .map_err(write_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .meta::<Option<LogId<NodeId>>>(COMMITTED, StorageIOError::read_logs)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let ops: Vec<WriteOp> = entries
            .into_iter()
            .map(|entry| WriteOp::Put {
                table: Table::Log,
                key: index_key(entry.log_id.index),
                value: encode(&entry),
            })
            .collect();
        match write_with_room(&self.disk, ops).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(write_logs(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        write_with_room(
            &self.disk,
            vec![WriteOp::DeleteRange {
                table: Table::Log,
                from: index_key(log_id.index),
                to: None,
            }],
        )
        .await
        .map_err(write_logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        write_with_room(
            &self.disk,
            vec![
                put_meta(PURGED, encode(&log_id)),
                WriteOp::DeleteRange {
                    table: Table::Log,
                    from: index_key(0),
                    to: log_id.index.checked_add(1).map(index_key),
                },
            ],
        )
        .await
        .map_err(write_logs)
    }
}

/// The applied state, shared with the service that reads registers.
pub type SharedState = Arc<RwLock<AppliedState>>;

pub fn read_shared(state: &SharedState) -> std::sync::RwLockReadGuard<'_, AppliedState> {
    state.read().unwrap_or_else(|e| e.into_inner())
}

fn write_shared(state: &SharedState) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
    state.write().unwrap_or_else(|e| e.into_inner())
}

/// The registers, applied entry by entry, and the latest snapshot of them.
pub struct StateMachine {
    disk: Arc<dyn CoordinatorDisk>,
    state: SharedState,
    /// Counts the changes of `state`, for those who wait on one.
    changes: Arc<Signal<u64>>,
}

impl StateMachine {
    /// Loads the newest applied state the disk holds: the one written as
    /// entries were applied, or the latest snapshot's when that is newer
    /// (applying went on while the disk had no room, and the log up to the
    /// snapshot may be purged).
    pub fn open(disk: Arc<dyn CoordinatorDisk>) -> Result<StateMachine> {
        let applied: AppliedState = match disk
            .get(Table::Meta, APPLIED)
            .map_err(io_error(StorageIOError::read_state_machine))?
        {
            Some(bytes) => decode(&bytes, StorageIOError::read_state_machine)?,
            None => AppliedState::default(),
        };
        let machine = StateMachine {
            disk,
            state: Arc::new(RwLock::new(applied)),
            changes: Arc::new(Signal::new(0)),
        };
        if let Some(stored) = machine.stored_snapshot()? {
            if stored.meta.last_log_id > read_shared(&machine.state).last_applied {
                *write_shared(&machine.state) = decode(&stored.data, read_snapshot)?;
            }
        }
        Ok(machine)
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// A count that grows once the shared state changed. Its waiters wake
    /// in the order they began to wait, as a simulation's replay needs
    /// (raft's metrics channel wakes them in a random order).
    pub fn changes(&self) -> Arc<Signal<u64>> {
        self.changes.clone()
    }

    fn changed(&self) {
        self.changes.update(|count| {
            *count += 1;
            true
        });
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>> {
        match self
            .disk
            .get(Table::Meta, SNAPSHOT)
            .map_err(io_error(read_snapshot))?
        {
            Some(bytes) => decode(&bytes, read_snapshot).map(Some),
            None => Ok(None),
        }
    }
}

/// Builds a snapshot of the applied state as it stands.
pub struct SnapshotBuilder {
    disk: Arc<dyn CoordinatorDisk>,
    state: SharedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, last_log_id, last_membership) = {
            let state = read_shared(&self.state);
            (
                encode(&*state),
                state.last_applied,
                state.membership.clone(),
            )
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write_with_room(&self.disk, vec![put_meta(SNAPSHOT, encode(&stored))])
            .await
            .map_err(io_error(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), e)
            }))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = read_shared(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut next = read_shared(&self.state).clone();
        let mut outcomes = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            outcomes.push(match &entry.payload {
                EntryPayload::Blank => Outcome::default(),
                EntryPayload::Normal(command) => next.registers.apply(command),
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Outcome::default()
                }
            });
        }
        // A restart never takes back what a reader saw here: openraft makes
        // the commit mark durable before it applies, and a restart applies
        // the log again up to that mark. So the applied state on disk only
        // spares a restart that work, and a full disk does not hold applying
        // back (it would hold back a restart's start as well): the state
        // goes on in memory, and the next write that finds room writes it
        // whole.
        match write_once(&self.disk, vec![put_meta(APPLIED, encode(&next))].into()).await {
            Ok(()) => {}
            Err(DiskError::NoSpace(why)) => {
                tracing::warn!(%why, "the applied state waits for room; applying goes on")
            }
            Err(error) => return Err(io_error(StorageIOError::write_state_machine)(error)),
        }
        *write_shared(&self.state) = next;
        self.changed();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            disk: self.disk.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let signature = meta.signature();
        let installed: AppliedState = serde_json::from_slice(&data).map_err(io_error(|e| {
            StorageIOError::read_snapshot(Some(signature.clone()), e)
        }))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_with_room(
            &self.disk,
            vec![
                put_meta(APPLIED, encode(&installed)),
                put_meta(SNAPSHOT, encode(&stored)),
            ],
        )
        .await
        .map_err(io_error(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), e)
        }))?;
        *write_shared(&self.state) = installed;
        self.changed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(self.stored_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::disk::{KeyValue, MemDisk};
    use proto::disk_writes::DiskWrites;

    /// A disk whose writes wait, once armed, until the test opens the gate
    /// or a bound passes: a sync on a crowded disk.
    #[derive(Default)]
    struct SlowDisk {
        inner: MemDisk,
        gate: Mutex<Gate>,
        opened: Condvar,
    }

    #[derive(Default)]
    struct Gate {
        armed: bool,
        waiting: bool,
    }

    const GATE_BOUND: Duration = Duration::from_secs(10);

    impl CoordinatorDisk for SlowDisk {
        fn get(&self, table: Table, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, DiskError> {
            self.inner.get(table, key)
        }

        fn range(
            &self,
            table: Table,
            from: &[u8],
            to: Option<&[u8]>,
        ) -> std::result::Result<Vec<KeyValue>, DiskError> {
            self.inner.range(table, from, to)
        }

        fn last(&self, table: Table) -> std::result::Result<Option<KeyValue>, DiskError> {
            self.inner.last(table)
        }

        fn write(&self, ops: &[WriteOp]) -> std::result::Result<(), DiskError> {
            let mut gate = self.gate.lock().unwrap();
            if gate.armed {
                gate.waiting = true;
                let (mut gate, _) = self
                    .opened
                    .wait_timeout_while(gate, GATE_BOUND, |g| g.armed)
                    .unwrap();
                gate.waiting = false;
            }
            self.inner.write(ops)
        }

        fn short_of_room(&self) -> Option<String> {
            self.inner.short_of_room()
        }

        fn writes(&self) -> DiskWrites {
            DiskWrites::BlockingPool
        }
    }

    /// On one runtime thread, shared with other roles: while a raft write
    /// waits for its sync, the thread runs the others.
    #[tokio::test(flavor = "current_thread")]
    async fn a_raft_write_waiting_for_its_sync_leaves_the_runtime_to_others() {
        let slow = Arc::new(SlowDisk::default());
        slow.gate.lock().unwrap().armed = true;
        let disk: Arc<dyn CoordinatorDisk> = slow.clone();
        let write = tokio::spawn(async move {
            write_with_room(&disk, vec![put_meta(VOTE, b"v".to_vec())]).await
        });
        let waiting = async {
            while !slow.gate.lock().unwrap().waiting {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the write never waited while the runtime ran");
        // Another task of the runtime runs to its end meanwhile.
        tokio::spawn(async { tokio::task::yield_now().await })
            .await
            .unwrap();
        assert!(
            slow.gate.lock().unwrap().waiting,
            "the other task ran only once the write was done"
        );
        slow.gate.lock().unwrap().armed = false;
        slow.opened.notify_all();
        write.await.unwrap().unwrap();
        assert_eq!(slow.get(Table::Meta, VOTE).unwrap(), Some(b"v".to_vec()));
    }

    fn write_entry(index: u64, value: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::registers::Command::Write {
                name: "r".into(),
                expected_revision: index - 1,
                value: value.as_bytes().to_vec(),
            }),
        }
    }

    /// A full disk does not hold applying back (a restart applies the log
    /// again up to its commit mark); a restart starts from the newest state
    /// the disk holds, the latest snapshot's when that is newer than the
    /// state written as entries were applied.
    #[tokio::test(flavor = "current_thread")]
    async fn applying_goes_on_over_a_full_disk_and_a_restart_starts_from_the_newest_state() {
        let mem = Arc::new(MemDisk::default());
        let disk: Arc<dyn CoordinatorDisk> = mem.clone();
        let mut machine = StateMachine::open(disk.clone()).unwrap();
        machine.apply([write_entry(1, "a")]).await.unwrap();

        mem.fill(true);
        let outcomes = tokio::time::timeout(
            Duration::from_secs(30),
            machine.apply([write_entry(2, "b")]),
        )
        .await
        .expect("applying waited for room")
        .unwrap();
        assert_eq!(outcomes[0].register.revision, 2);
        assert_eq!(
            read_shared(&machine.shared()).registers.read("r").value,
            b"b"
        );
        assert!(mem.refused_for_room() > 0);
        let reopened = StateMachine::open(disk.clone()).unwrap();
        assert_eq!(
            read_shared(&reopened.shared())
                .last_applied
                .map(|id| id.index),
            Some(1),
            "the disk holds the state from before it filled"
        );

        mem.fill(false);
        let mut builder = machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let reopened = StateMachine::open(disk).unwrap();
        let state = reopened.shared();
        let state = read_shared(&state);
        assert_eq!(state.last_applied.map(|id| id.index), Some(2));
        assert_eq!(state.registers.read("r").value, b"b");
    }
}
