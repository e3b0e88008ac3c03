//! The background fill ([`Options::background`](crate::Options::background)): threads of
//! their own, at the lowest CPU priority (nice 19), that fetch the object's chunks in order
//! while no fault, working-set or read-ahead task waits.
//!
//! Why threads of their own rather than a fetch thread lowering its priority for a
//! background task: an unprivileged thread can raise its nice value but not lower it again
//! (that needs `CAP_SYS_NICE` or a matching `RLIMIT_NICE`), so a fetch thread that ran one
//! background task would run every later fault's fetch at nice 19 too. Here the background
//! threads lower their priority once, when they start, and never take a queued task; the
//! fetch threads never run background work and keep the priority of the thread that called
//! [`open`](crate::open) (threads inherit it when they are created). So a fetch a fault
//! waits for never runs at nice 19, on a machine whose vCPUs keep the CPUs busy as on an
//! idle one.
//!
//! A fault on a chunk a background thread is fetching would otherwise wait for that
//! thread. Instead the fault marks the chunk urgent; the background thread notices within
//! one read of the body (at most 256 KiB), stops, and hands the rest of the chunk, from its
//! first page not yet arrived, to the fetch threads as a fault's task (counted in
//! [`Stats::handoffs`](crate::Stats::handoffs)). Single flight holds: one thread owns a
//! chunk's remaining bytes at a time, and the handover passes through the queue's lock.
//!
//! There are [`Options::parallelism`](crate::Options::parallelism) − 1 background threads
//! (at least one). They start a chunk only while the queue is empty, so faults and the
//! working set always find all `parallelism` fetch threads free; the fill then adds at most
//! `parallelism − 1` requests in flight of its own.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::queue::{Priority, Task};
use crate::shared::{Shared, IDLE};

/// The nice value of the background threads: the lowest priority.
pub(crate) const BACKGROUND_NICE: libc::c_int = 19;

/// Sets the calling thread's nice value to [`BACKGROUND_NICE`] (Linux: per thread).
fn lower_priority() -> io::Result<()> {
    // SAFETY: gettid has no memory effects.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority changes only the scheduling priority of this thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many background threads a source of `parallelism` fetch threads has.
pub(crate) fn threads(parallelism: usize) -> usize {
    parallelism.saturating_sub(1).max(1)
}

impl Shared {
    /// A background thread: lowers its priority, then fetches the next chunk nobody has
    /// claimed while the queue is empty, until every chunk has been taken or the source
    /// closes.
    pub(crate) fn background_loop(self: Arc<Shared>) {
        // Raising one's own nice value is always allowed; if it failed anyway, the fill
        // still runs, at the caller's priority.
        let _ = lower_priority();
        while self.queue.wait_empty() {
            let k = self.next_background.fetch_add(1, Ordering::Relaxed);
            if k >= self.chunks {
                return;
            }
            if self.cached(k) || self.state[k].load(Ordering::Acquire) != IDLE {
                continue;
            }
            self.run(Task {
                chunk: k,
                from: k * self.pages_per_chunk,
                to: 0,
                claimed: false,
                priority: Priority::Background,
            });
        }
    }
}
