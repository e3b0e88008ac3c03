//! Dirty-page tracking: a worker thread writes to pages of a region while the main thread
//! prints, every interval, which pages were written since the previous one.
//!
//! Run: `cargo run --example dirty_tracking` (Linux 6.7+).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use userfaultfd::dirty::DirtyTracker;

const PAGES: usize = 64;
const INTERVALS: usize = 5;

fn main() -> userfaultfd::Result<()> {
    // SAFETY: sysconf has no memory effects.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize;
    let len = PAGES * page;
    // SAFETY: a fresh private anonymous mapping; only raw pointers access it.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap");
    let mut tracker = DirtyTracker::new()?;
    tracker.track(mem, len)?;

    let base = mem as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Each step writes one page: a stride that visits pages in a scattered order.
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let p = (i * 7) % PAGES;
                // SAFETY: a byte inside the mapping, which stays mapped until the end.
                unsafe { ((base + p * page) as *mut u8).write_volatile(i as u8) };
                i += 1;
                std::thread::sleep(Duration::from_millis(7));
            }
        })
    };

    let mut written: Vec<Range<usize>> = Vec::new();
    for interval in 1..=INTERVALS {
        std::thread::sleep(Duration::from_millis(100));
        written.clear();
        tracker.collect_written(mem, len, &mut written)?;
        let pages: Vec<String> = written
            .iter()
            .map(|r| {
                let (first, end) = ((r.start - base) / page, (r.end - base) / page);
                if end - first == 1 {
                    format!("{first}")
                } else {
                    format!("{first}-{}", end - 1)
                }
            })
            .collect();
        println!("interval {interval}: pages written: {}", pages.join(" "));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    // The writes never produced a userfaultfd event: the kernel resolved them.
    assert!(tracker.uffd().read_event()?.is_none());
    // SAFETY: the mapping made above; the worker has finished.
    unsafe { libc::munmap(mem, len) };
    Ok(())
}
