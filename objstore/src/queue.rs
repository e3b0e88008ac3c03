//! The fetch threads' work: ranges of chunks by priority — faults first, then the working
//! set and read-ahead. The background fill is not queued: its threads
//! ([`crate::background`]) take the next chunk of the object while this queue is empty.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};

/// How urgent a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A fault waits for it.
    Demand,
    /// The working set, read-ahead of sequential access.
    Prefetch,
    /// The rest of the object, when [`Options::background`](crate::Options::background): run
    /// by the background threads only, never queued here.
    Background,
}

/// A range of a chunk to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Task {
    pub chunk: usize,
    /// The page to start at (the faulting page first).
    pub from: usize,
    /// Fetch up to this page (exclusive); for a claimed chunk's remainder only.
    pub to: usize,
    /// Whether the chunk is already claimed by the fetch this task is the rest of.
    pub claimed: bool,
    pub priority: Priority,
}

#[derive(Default)]
struct Queues {
    demand: VecDeque<Task>,
    prefetch: VecDeque<Task>,
    closed: bool,
}

impl Queues {
    fn empty(&self) -> bool {
        self.demand.is_empty() && self.prefetch.is_empty()
    }
}

/// The queues, and the conditions the fetch threads and the background threads wait on
/// (two: a task pushed must wake a thread that can take it).
pub(crate) struct WorkQueue {
    queues: Mutex<Queues>,
    ready: Condvar,
    empty: Condvar,
}

impl WorkQueue {
    pub(crate) fn new() -> WorkQueue {
        WorkQueue {
            queues: Mutex::default(),
            ready: Condvar::new(),
            empty: Condvar::new(),
        }
    }

    /// Adds a task: a claimed remainder goes first among demands.
    pub(crate) fn push(&self, task: Task) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match task.priority {
            Priority::Demand if task.claimed => q.demand.push_front(task),
            Priority::Demand => q.demand.push_back(task),
            Priority::Prefetch => q.prefetch.push_back(task),
            Priority::Background => unreachable!("background work is not queued"),
        }
        drop(q);
        self.ready.notify_one();
    }

    /// The most urgent task; blocks until there is one. `None` once closed.
    pub(crate) fn pop(&self) -> Option<Task> {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if q.closed {
                return None;
            }
            let task = q.demand.pop_front().or_else(|| q.prefetch.pop_front());
            if let Some(task) = task {
                if q.empty() {
                    self.empty.notify_all();
                }
                return Some(task);
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until no fault, working-set or read-ahead task is waiting (`true`), or the
    /// queue is closed (`false`): the background fill starts nothing while they wait.
    pub(crate) fn wait_empty(&self) -> bool {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if q.closed {
                return false;
            }
            if q.empty() {
                return true;
            }
            q = self.empty.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes every thread: `pop` returns `None` and `wait_empty` `false` from now on.
    pub(crate) fn close(&self) {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
        self.empty.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn task(chunk: usize, priority: Priority) -> Task {
        Task {
            chunk,
            from: 0,
            to: 0,
            claimed: false,
            priority,
        }
    }

    #[test]
    fn faults_first_and_the_background_waits_for_an_empty_queue() {
        let q = Arc::new(WorkQueue::new());
        q.push(task(1, Priority::Prefetch));
        q.push(task(2, Priority::Demand));
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.wait_empty())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "background started with tasks queued"
        );
        assert_eq!(q.pop().map(|t| t.chunk), Some(2));
        assert_eq!(q.pop().map(|t| t.chunk), Some(1));
        assert!(waiter.join().unwrap());
        q.close();
        assert!(!q.wait_empty());
        assert_eq!(q.pop(), None);
    }
}
