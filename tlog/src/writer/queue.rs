//! Commands on their way from the core to the writer threads, in order.
//!
//! The core pushes; a writer thread waits until something is queued, then
//! takes a prefix of the queue while it holds the log's append lock, so
//! commands reach the log in the order they were pushed whichever thread
//! takes them. Pushing wakes a writer only when one sleeps, so while the
//! writers are busy, queueing a command costs no system call.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::WriterCommand;

#[derive(Default)]
pub struct CommandQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Wakes a writer that runs as a task of the runtime.
    ready_task: tokio::sync::Notify,
    /// Notified when the queue closes.
    closing: Condvar,
}

#[derive(Default)]
struct QueueState {
    commands: VecDeque<WriterCommand>,
    writer_sleeps: bool,
    /// Set by [`CommandQueue::close`] or when the writer stops; later
    /// commands are dropped.
    closed: bool,
}

impl CommandQueue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        // Every operation leaves the state consistent, so a panic elsewhere
        // while holding the lock does not matter.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command; true when a writer sleeps and the caller must
    /// [`wake`](CommandQueue::wake) it, best after releasing its own locks
    /// so the woken writer's reports do not find them taken.
    #[must_use = "a sleeping writer must be woken"]
    pub fn push(&self, command: WriterCommand) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.commands.push_back(command);
        std::mem::take(&mut state.writer_sleeps)
    }

    pub fn wake(&self) {
        self.ready.notify_one();
        self.ready_task.notify_one();
    }

    /// Lets the writers finish what is queued, then stop.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_all();
        self.ready_task.notify_one();
        self.closing.notify_all();
    }

    /// Puts commands taken but not appended back at the head of the queue,
    /// in their order.
    pub(super) fn put_back(&self, commands: impl DoubleEndedIterator<Item = WriterCommand>) {
        let mut state = self.state();
        for command in commands.rev() {
            state.commands.push_front(command);
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Waits up to `timeout` for the queue to close; true once it is.
    pub(super) fn wait_closed(&self, timeout: std::time::Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .closing
            .wait_timeout_while(state, timeout, |state| !state.closed)
            .unwrap_or_else(|e| e.into_inner());
        state.closed
    }

    /// Waits until a command is queued; false once the queue is closed and
    /// empty.
    pub(super) fn wait_for_commands(&self) -> bool {
        let mut state = self.state();
        while state.commands.is_empty() {
            if state.closed {
                return false;
            }
            state.writer_sleeps = true;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        true
    }

    /// The same as [`wait_for_commands`](Self::wait_for_commands), for a
    /// writer that runs as a task: a wake-up that comes between looking and
    /// waiting is kept by the `Notify`, so none is lost.
    pub(super) async fn commands_queued(&self) -> bool {
        loop {
            {
                let mut state = self.state();
                if !state.commands.is_empty() {
                    return true;
                }
                if state.closed {
                    return false;
                }
                state.writer_sleeps = true;
            }
            self.ready_task.notified().await;
        }
    }

    /// Moves queued commands into `into`, oldest first, until their record
    /// bytes reach `max_bytes` (at least one command when any is queued).
    pub(super) fn take(&self, into: &mut Vec<WriterCommand>, max_bytes: usize) {
        let mut state = self.state();
        let mut bytes = 0;
        let count = state
            .commands
            .iter()
            .take_while(|command| {
                let fits = bytes < max_bytes;
                bytes += command.record_bytes();
                fits
            })
            .count();
        into.extend(state.commands.drain(..count));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::log::ChecksummedPayload;
    use crate::record::Record;
    use crate::store::SegmentId;

    fn removal(id: SegmentId) -> WriterCommand {
        WriterCommand::RemoveSegmentsBefore(id)
    }

    fn append(seq: u64, payload_len: usize) -> WriterCommand {
        WriterCommand::Append {
            seq,
            record: Record::Lock,
            payload: ChecksummedPayload::new(Bytes::from(vec![0; payload_len])),
        }
    }

    /// What a command names: a removal's segment or an append's sequence.
    fn ids(commands: &[WriterCommand]) -> Vec<u64> {
        commands
            .iter()
            .map(|c| match c {
                WriterCommand::RemoveSegmentsBefore(id) => *id,
                WriterCommand::Append { seq, .. } => *seq,
            })
            .collect()
    }

    #[test]
    fn commands_are_taken_in_order_then_the_writers_stop_after_close() {
        let queue = CommandQueue::default();
        for id in 1..=3 {
            assert!(!queue.push(removal(id)), "no writer sleeps");
        }
        queue.close();
        assert!(!queue.push(removal(4)));
        assert!(queue.wait_for_commands());
        let mut taken = Vec::new();
        queue.take(&mut taken, usize::MAX);
        assert_eq!(ids(&taken), [1, 2, 3]);
        assert!(!queue.wait_for_commands(), "closed and empty");
        taken.clear();
        queue.take(&mut taken, usize::MAX);
        assert!(taken.is_empty(), "a command pushed after close is dropped");
    }

    #[test]
    fn a_take_stops_once_its_byte_limit_is_reached() {
        let queue = CommandQueue::default();
        let _ = queue.push(append(1, 600));
        let _ = queue.push(removal(9));
        let _ = queue.push(append(2, 600));
        let _ = queue.push(append(3, 600));
        let mut taken = Vec::new();
        queue.take(&mut taken, 1000);
        assert_eq!(
            ids(&taken),
            [1, 9, 2],
            "the command that crosses the limit is taken"
        );
        taken.clear();
        queue.take(&mut taken, 1);
        assert_eq!(ids(&taken), [3], "one command even when it alone is over");
        taken.clear();
        queue.take(&mut taken, 1000);
        assert!(taken.is_empty());
    }

    /// Runs `wait_for_commands` on a thread and waits until it sleeps; the
    /// receiver yields what it returned.
    fn sleeping_writer(queue: &Arc<CommandQueue>) -> std::sync::mpsc::Receiver<bool> {
        let (done, result) = std::sync::mpsc::channel();
        let writer_queue = Arc::clone(queue);
        std::thread::spawn(move || {
            let _ = done.send(writer_queue.wait_for_commands());
        });
        let deadline = Instant::now() + WAIT;
        while !queue.state().writer_sleeps {
            assert!(Instant::now() < deadline, "the writer never went to sleep");
            std::thread::yield_now();
        }
        result
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_push_tells_to_wake_a_sleeping_writer_once() {
        let queue = Arc::new(CommandQueue::default());
        let result = sleeping_writer(&queue);
        assert!(queue.push(removal(7)), "the writer sleeps");
        assert!(!queue.push(removal(8)), "the first push took the wake");
        queue.wake();
        let woken = result.recv_timeout(WAIT).expect("the wake woke the writer");
        assert!(woken, "commands are queued");
        let mut taken = Vec::new();
        queue.take(&mut taken, usize::MAX);
        assert_eq!(ids(&taken), [7, 8]);
    }

    #[test]
    fn close_wakes_a_sleeping_writer_and_ends_it() {
        let queue = Arc::new(CommandQueue::default());
        let result = sleeping_writer(&queue);
        queue.close();
        let woken = result.recv_timeout(WAIT).expect("close woke the writer");
        assert!(!woken, "closed and empty");
    }
}
