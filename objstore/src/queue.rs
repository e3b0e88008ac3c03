//! The fetch threads' work: ranges of chunks by priority — faults first, then the working
//! set and read-ahead, then the background fill.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};

/// How urgent a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A fault waits for it.
    Demand,
    /// The working set, read-ahead of sequential access.
    Prefetch,
    /// The rest of the object, when [`Options::background`](crate::Options::background).
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
    background: VecDeque<Task>,
    /// Background tasks being fetched: at most `background_limit`, so that a fault finds a
    /// free fetch thread.
    background_running: usize,
    closed: bool,
}

/// The queues, and the condition the fetch threads wait on.
pub(crate) struct WorkQueue {
    queues: Mutex<Queues>,
    ready: Condvar,
    background_limit: usize,
}

impl WorkQueue {
    pub(crate) fn new(threads: usize) -> WorkQueue {
        WorkQueue {
            queues: Mutex::default(),
            ready: Condvar::new(),
            background_limit: threads.saturating_sub(1).max(1),
        }
    }

    /// Adds a task: a claimed remainder goes first among demands.
    pub(crate) fn push(&self, task: Task) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match task.priority {
            Priority::Demand if task.claimed => q.demand.push_front(task),
            Priority::Demand => q.demand.push_back(task),
            Priority::Prefetch => q.prefetch.push_back(task),
            Priority::Background => q.background.push_back(task),
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
            if let Some(t) = q.demand.pop_front() {
                return Some(t);
            }
            if let Some(t) = q.prefetch.pop_front() {
                return Some(t);
            }
            if q.background_running < self.background_limit {
                if let Some(t) = q.background.pop_front() {
                    q.background_running += 1;
                    return Some(t);
                }
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A background task popped earlier is finished.
    pub(crate) fn background_done(&self) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        q.background_running -= 1;
        drop(q);
        self.ready.notify_one();
    }

    /// Wakes every thread: `pop` returns `None` from now on.
    pub(crate) fn close(&self) {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
    }
}
