//! One bounce: per CPU a locking thread, a fault-handler thread and a background copier,
//! all started together; the bounce ends when every background copier is done.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, Scope, ScopedJoinHandle};

use userfaultfd::Uffd;

use crate::area::{Area, Memory};
use crate::handler::{poll_thread, read_thread};
use crate::stats::FaultStats;
use crate::stop::Stoppers;
use crate::workers::{background_thread, locking_thread};

/// The mode bits, taken from the number of bounces left: every combination comes up in turn.
pub const RANDOM: i32 = 1 << 0;
pub const RACING: i32 = 1 << 1;
pub const VERIFY: i32 = 1 << 2;
pub const POLL: i32 = 1 << 3;

/// What the threads of one bounce share.
pub struct Bounce<'a> {
    pub uffd: &'a Uffd,
    pub mem: Memory,
    /// The area the pages come from (holding the counters of the last bounce).
    pub src: &'a Area,
    /// The registered area the pages go to: every access faults until the page is copied.
    /// Its alias view (shared memory) is registered too.
    pub dst: &'a Area,
    pub nr_cpus: usize,
    pub nr_pages_per_cpu: usize,
    /// Pages are copied write-protected, and each background copier write-protects its share
    /// halfway: the locking threads' increments then take write-protect faults.
    pub wp: bool,
    /// The value each page's counter must have (written under the page's mutex).
    pub verify: &'a [AtomicU64],
    /// The mode bits (`RANDOM`, ...).
    pub mode: i32,
    /// Set when the background copiers are done: the locking threads stop.
    pub finished: AtomicBool,
    pub stoppers: &'a Stoppers,
}

/// The kernel's program gives every thread a 16 MiB stack; so do we, so that both map the same.
const STACK_SIZE: usize = 16 << 20;

fn spawn<'s, T: Send + 's>(
    scope: &'s Scope<'s, '_>,
    what: &str,
    f: impl FnOnce() -> T + Send + 's,
) -> ScopedJoinHandle<'s, T> {
    thread::Builder::new()
        .stack_size(STACK_SIZE)
        .spawn_scoped(scope, f)
        .unwrap_or_else(|e| fatal!("creating a {what} thread: {e}"))
}

fn join<T>(handle: ScopedJoinHandle<'_, T>, what: &str) -> T {
    handle
        .join()
        .unwrap_or_else(|_| fatal!("a {what} thread panicked"))
}

/// Runs one bounce; returns what each CPU's fault handler counted.
pub fn stress(b: &Bounce<'_>) -> Vec<FaultStats> {
    let poll = b.mode & POLL != 0;
    thread::scope(|s| {
        let mut lockers = Vec::with_capacity(b.nr_cpus);
        let mut handlers = Vec::with_capacity(b.nr_cpus);
        let mut copiers = Vec::with_capacity(b.nr_cpus);
        for cpu in 0..b.nr_cpus {
            lockers.push(spawn(s, "locking", move || locking_thread(b, cpu)));
            if poll {
                handlers.push(spawn(s, "uffd", move || poll_thread(b, cpu)));
            } else {
                // A reader is running before its CPU's background copier starts.
                let (started, running) = mpsc::sync_channel(1);
                handlers.push(spawn(s, "uffd", move || read_thread(b, started)));
                let _ = running.recv();
            }
            copiers.push(spawn(s, "background", move || background_thread(b, cpu)));
        }
        for copier in copiers {
            join(copier, "background");
        }
        // Every page is in place: drop the source right away. A handler still copying from
        // it gets EEXIST (the destination is populated) without reading what it drops.
        if let Err(e) = b.mem.release(b.src) {
            fatal!("releasing the source area: {e}");
        }
        b.finished.store(true, Ordering::Relaxed);
        for locker in lockers {
            join(locker, "locking");
        }
        for cpu in 0..b.nr_cpus {
            let stopped = if poll {
                b.stoppers.stop_poller(cpu)
            } else {
                b.stoppers.stop_reader()
            };
            if let Err(e) = stopped {
                fatal!("stopping fault handler {cpu}: {e}");
            }
        }
        handlers.into_iter().map(|h| join(h, "uffd")).collect()
    })
}
