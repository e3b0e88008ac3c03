//! A deadline per blocking access, for soak runs: each thread announces what it is about to
//! do and at which address (a page it reads, a page it discards); a watchdog thread reports
//! any that is still there after the deadline — a hang, with its address — instead of letting
//! the test hang. The test then releases the blocked threads itself (unregistering the range
//! wakes them) and ends.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Not in an access.
const IDLE: u64 = u64::MAX;

struct Slot {
    thread: String,
    what: Mutex<&'static str>,
    addr: AtomicUsize,
    /// Nanoseconds since the watchdog's start when the access began, or `IDLE`.
    since: AtomicU64,
    /// The `since` already reported (each blocked access is reported once).
    reported: AtomicU64,
}

/// The slots of the watched threads and the hangs found.
pub struct Watchdog {
    deadline: Duration,
    start: Instant,
    slots: Box<[Slot]>,
    hung: AtomicBool,
    hangs: Mutex<Vec<String>>,
    /// Turns an address into words for the report (which page of what).
    describe: Box<dyn Fn(usize) -> String + Send + Sync>,
}

/// One thread's access in progress: ends (the slot goes idle) when dropped.
pub struct Access<'a> {
    slot: &'a Slot,
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        self.slot.since.store(IDLE, Ordering::Release);
    }
}

impl Watchdog {
    /// One slot per name in `threads` (a slot is used by one thread at a time); accesses
    /// longer than `deadline` are hangs.
    pub fn new(
        deadline: Duration,
        threads: &[String],
        describe: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            deadline,
            start: Instant::now(),
            slots: threads
                .iter()
                .map(|t| Slot {
                    thread: t.clone(),
                    what: Mutex::new(""),
                    addr: AtomicUsize::new(0),
                    since: AtomicU64::new(IDLE),
                    reported: AtomicU64::new(IDLE),
                })
                .collect(),
            hung: AtomicBool::new(false),
            hangs: Mutex::new(Vec::new()),
            describe: Box::new(describe),
        })
    }

    /// Slot `slot` starts `what` at `addr`, until the returned guard is dropped.
    pub fn enter(&self, slot: usize, what: &'static str, addr: usize) -> Access<'_> {
        let s = &self.slots[slot];
        *s.what.lock().unwrap() = what;
        s.addr.store(addr, Ordering::Relaxed);
        s.since
            .store(self.start.elapsed().as_nanos() as u64, Ordering::Release);
        Access { slot: s }
    }

    /// Whether a hang was found.
    pub fn hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    /// The hangs found, one line each.
    pub fn hangs(&self) -> Vec<String> {
        self.hangs.lock().unwrap().clone()
    }

    /// Records a hang found by other means (a child process that did not end).
    pub fn report(&self, line: String) {
        self.hangs.lock().unwrap().push(line);
        self.hung.store(true, Ordering::Release);
    }

    /// One look at every slot.
    fn scan(&self) {
        let now = self.start.elapsed().as_nanos() as u64;
        for s in self.slots.iter() {
            let since = s.since.load(Ordering::Acquire);
            if since == IDLE || now.saturating_sub(since) < self.deadline.as_nanos() as u64 {
                continue;
            }
            if s.reported.swap(since, Ordering::Relaxed) == since {
                continue;
            }
            let addr = s.addr.load(Ordering::Relaxed);
            self.report(format!(
                "thread {:?}: {} at {addr:#x} ({}) not done after {:?}",
                s.thread,
                *s.what.lock().unwrap(),
                (self.describe)(addr),
                self.deadline
            ));
        }
    }

    /// Starts the watching thread (it looks every 20 ms), stopped when the guard drops.
    pub fn watch(self: &Arc<Self>) -> Watching {
        let stop = Arc::new(AtomicBool::new(false));
        let (me, stopped) = (Arc::clone(self), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    me.scan();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .expect("spawning the watchdog");
        Watching {
            stop,
            handle: Some(handle),
        }
    }
}

/// The running watchdog thread; stops and joins it when dropped.
pub struct Watching {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
