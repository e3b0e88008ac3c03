//! Stress, after the idea of the kernel's uffd-stress "bounce" test (written anew here).
//!
//! Per memory type, a set of pages each holding a counter moves ("bounces") from a source area
//! to a fresh, registered destination area, again and again. During a bounce:
//! - worker threads pick random pages, lock the page's mutex (kept outside the registered
//!   memory), and increment the counter in the destination page, faulting it in;
//! - handler threads serve the missing faults by copying the page from the source (mapped
//!   write-protected where the memory type supports it, so the increment then takes a
//!   write-protect fault, served by removing the protection);
//! - a background thread pre-copies every page, racing the handlers: the loser gets `EEXIST`
//!   and wakes the faulting thread.
//!
//! After each bounce every counter must equal the number of increments made to it in all
//! bounces so far; the destination becomes the next source. Each memory type runs for
//! `STRESS_SECS` seconds (default 10). It prints faults served, `EEXIST` races, write-protect
//! faults and mismatches (which must be 0).

mod support;

use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{join_timeout, kernel_lacks, spawn_named, MemoryType, Region};
use userfaultfd::{CopyMode, Errno, Error, Event, FaultKind, RegisterMode, Uffd};

const WORKERS: usize = 4;
const HANDLERS: usize = 2;
const INCREMENTS_PER_WORKER: usize = 2_000;

/// What one memory type's run counted.
#[derive(Default)]
struct Counts {
    bounces: AtomicU64,
    faults: AtomicU64,
    handler_copies: AtomicU64,
    wp_faults: AtomicU64,
    eexist: AtomicU64,
    precopied: AtomicU64,
    mismatches: AtomicU64,
}

fn stress_duration() -> Duration {
    let secs = std::env::var("STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

/// A tiny xorshift generator; each worker has its own seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The counter at the start of page `i`.
fn counter(region: &Region, i: usize) -> *mut u64 {
    region.page(i).cast()
}

/// Copies page `i` of `src` into `dst`; `EEXIST` (someone else placed it) wakes the waiters.
fn place(uffd: &Uffd, src: &Region, dst: &Region, i: usize, wp: bool, counts: &Counts) -> bool {
    let mode = if wp {
        CopyMode::WRITE_PROTECT
    } else {
        CopyMode::empty()
    };
    let ps = dst.page_size();
    // SAFETY: the destination page belongs to the test's registered area, which holds no
    // Rust object; the source page is readable.
    let result = unsafe { uffd.copy_with_mode(src.page(i).cast(), dst.page(i).cast(), ps, mode) };
    match result {
        Ok(n) => {
            assert_eq!(n, ps);
            true
        }
        Err(Error::CopyFailed(Errno::EEXIST)) => {
            counts.eexist.fetch_add(1, Ordering::Relaxed);
            uffd.wake(dst.page(i).cast(), ps)
                .expect("wake after EEXIST");
            false
        }
        Err(e) => panic!("copy of page {i}: {e}"),
    }
}

/// Serves faults until `stop`.
fn handle(uffd: &Uffd, src: &Region, dst: &Region, wp: bool, stop: &AtomicBool, counts: &Counts) {
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Acquire) {
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 10) };
        while let Some(event) = uffd.read_event().expect("read_event") {
            let Event::Pagefault { kind, addr, .. } = event else {
                panic!("unexpected event {event:?}");
            };
            let i = (addr as usize - dst.ptr() as usize) / dst.page_size();
            match kind {
                FaultKind::Missing => {
                    counts.faults.fetch_add(1, Ordering::Relaxed);
                    if place(uffd, src, dst, i, wp, counts) {
                        counts.handler_copies.fetch_add(1, Ordering::Relaxed);
                    }
                }
                FaultKind::WriteProtected => {
                    counts.wp_faults.fetch_add(1, Ordering::Relaxed);
                    uffd.remove_write_protection(dst.page(i).cast(), dst.page_size(), true)
                        .expect("remove write protection");
                }
                other => panic!("unexpected fault kind {other:?}"),
            }
        }
    }
}

/// One bounce: moves the counters from `src` into a new destination and returns it.
fn bounce(
    memory: MemoryType,
    uffd: &Arc<Uffd>,
    src: Arc<Region>,
    locks: &Arc<Vec<Mutex<u64>>>,
    wp: bool,
    counts: &Arc<Counts>,
    seed: u64,
) -> Arc<Region> {
    let dst = Arc::new(Region::new(memory, src.pages()).unwrap());
    let mode = if wp {
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
    } else {
        RegisterMode::MISSING
    };
    uffd.register_with_mode(dst.addr(), dst.len(), mode)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let handlers: Vec<_> = (0..HANDLERS)
        .map(|_| {
            let (uffd, src, dst, stop, counts) = (
                Arc::clone(uffd),
                Arc::clone(&src),
                Arc::clone(&dst),
                Arc::clone(&stop),
                Arc::clone(counts),
            );
            spawn_named("handler", move || {
                handle(&uffd, &src, &dst, wp, &stop, &counts)
            })
        })
        .collect();
    let precopy = {
        let (uffd, src, dst, counts) = (
            Arc::clone(uffd),
            Arc::clone(&src),
            Arc::clone(&dst),
            Arc::clone(counts),
        );
        spawn_named("precopy", move || {
            let mut rng = Rng(seed ^ 0x5eed);
            let mut order: Vec<usize> = (0..dst.pages()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for i in order {
                if place(&uffd, &src, &dst, i, wp, &counts) {
                    counts.precopied.fetch_add(1, Ordering::Relaxed);
                }
                // Paced, so that the handlers serve some pages and race for others.
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (dst, locks) = (Arc::clone(&dst), Arc::clone(locks));
            spawn_named("worker", move || {
                let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(w as u64 + 1) | 1);
                for _ in 0..INCREMENTS_PER_WORKER {
                    let i = rng.below(dst.pages());
                    let mut expected = locks[i].lock().unwrap();
                    let c = counter(&dst, i);
                    // SAFETY: the counter lies in the test's mapping; the page's mutex makes
                    // this thread its only user; volatile because the kernel places pages.
                    unsafe { ptr::write_volatile(c, ptr::read_volatile(c) + 1) };
                    *expected += 1;
                }
            })
        })
        .collect();
    for w in workers {
        join_timeout(w);
    }
    join_timeout(precopy);
    stop.store(true, Ordering::Release);
    for h in handlers {
        join_timeout(h);
    }
    for (i, lock) in locks.iter().enumerate() {
        let expected = *lock.lock().unwrap();
        // SAFETY: every page was placed; the workers have finished.
        let got = unsafe { ptr::read_volatile(counter(&dst, i)) };
        if got != expected {
            counts.mismatches.fetch_add(1, Ordering::Relaxed);
            eprintln!("{memory:?}: page {i}: counter {got}, expected {expected}");
        }
    }
    uffd.unregister(dst.addr(), dst.len()).unwrap();
    counts.bounces.fetch_add(1, Ordering::Relaxed);
    dst
}

fn run(memory: MemoryType) {
    let wp_features = memory.features_for(RegisterMode::WRITE_PROTECT);
    let wp = kernel_lacks(wp_features).is_none();
    let mut features = memory.features_for(RegisterMode::MISSING);
    if wp {
        features |= wp_features;
    }
    if kernel_lacks(features).is_some() {
        return;
    }
    let pages = if memory == MemoryType::Hugetlb { 8 } else { 64 };
    let Some(first) = Region::new(memory, pages) else {
        return;
    };
    for i in 0..pages {
        // SAFETY: our own populated mapping.
        unsafe { ptr::write_volatile(counter(&first, i), 0) };
    }
    let uffd = Arc::new(
        userfaultfd::UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(features)
            .create()
            .unwrap(),
    );
    let locks = Arc::new((0..pages).map(|_| Mutex::new(0u64)).collect::<Vec<_>>());
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + stress_duration();
    let started = Instant::now();
    let mut src = Arc::new(first);
    let mut seed = 0x2026_1123;
    loop {
        seed += 1;
        src = bounce(memory, &uffd, src, &locks, wp, &counts, seed);
        if Instant::now() >= deadline {
            break;
        }
    }
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "stress {memory:?}: {:.1}s, {} bounces, {} faults ({} served by the handler's copy), \
         {} pages pre-copied, {} EEXIST races, {} write-protect faults{}, {} mismatches",
        started.elapsed().as_secs_f64(),
        c(&counts.bounces),
        c(&counts.faults),
        c(&counts.handler_copies),
        c(&counts.precopied),
        c(&counts.eexist),
        c(&counts.wp_faults),
        if wp { "" } else { " (no WP on this kernel)" },
        c(&counts.mismatches),
    );
    assert_eq!(
        c(&counts.mismatches),
        0,
        "{memory:?}: counters lost updates"
    );
    assert!(
        c(&counts.handler_copies) > 0,
        "{memory:?}: no fault was served by a handler"
    );
    assert!(
        c(&counts.eexist) > 0,
        "{memory:?}: the EEXIST race never happened"
    );
}

#[test]
fn bounce_stress_on_every_memory_type() {
    for memory in MemoryType::ALL {
        run(memory);
    }
}
