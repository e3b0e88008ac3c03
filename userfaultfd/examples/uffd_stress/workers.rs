//! The threads that make the faults and the one that races them: per CPU, a locking thread
//! that increments page counters in the destination, and a background copier that moves its
//! share of the pages over as fast as it can.

use std::sync::atomic::Ordering;

use crate::bounce::{Bounce, RACING, RANDOM};
use crate::handler::copy_page;

/// Until the bounce is finished: picks a page (at random, or the next one, all CPUs on the
/// same pages when racing), locks its mutex (the first access faults the page in), checks
/// its counter against the expected value and increments both.
pub fn locking_thread(b: &Bounce<'_>, cpu: usize) {
    let nr_pages = b.mem.nr_pages as u64;
    let random = b.mode & RANDOM != 0;
    // In sequence, each bounce starts elsewhere; without racing, each CPU in its own share.
    let mut page_nr = (b.mode as i64).wrapping_neg() as u64;
    if b.mode & RACING == 0 {
        page_nr = page_nr.wrapping_add((cpu * b.nr_pages_per_cpu) as u64);
    }
    while !b.finished.load(Ordering::Relaxed) {
        if random {
            // SAFETY: getrandom writes at most 8 bytes into `page_nr`.
            let got = unsafe { libc::getrandom((&mut page_nr as *mut u64).cast(), 8, 0) };
            if got != 8 {
                fatal!("getrandom failed: {}", std::io::Error::last_os_error());
            }
        } else {
            page_nr = page_nr.wrapping_add(1);
        }
        page_nr %= nr_pages;
        let nr = page_nr as usize;
        let mutex = b.mem.mutex(b.dst.base, nr);
        let count = b.mem.count(b.dst.base, nr);
        // SAFETY: the mutex lives in page `nr` of the destination, initialised in the source
        // and carried over by the copy; no thread holds it when it is copied (the locking
        // threads of the last bounce are gone, and this bounce's only lock destination pages).
        let locked = unsafe { libc::pthread_mutex_lock(mutex) };
        if locked != 0 {
            fatal!(
                "pthread_mutex_lock: {}",
                std::io::Error::from_raw_os_error(locked)
            );
        }
        // SAFETY: the counter is in the same page, read and written only under its mutex.
        let value = unsafe { count.read_volatile() };
        let expected = b.verify[nr].load(Ordering::Relaxed);
        if value != expected {
            fatal!("page_nr {nr} memory corruption {value} {expected}");
        }
        // SAFETY: as above.
        unsafe { count.write_volatile(value + 1) };
        b.verify[nr].store(value + 1, Ordering::Relaxed);
        // SAFETY: locked above by this thread.
        unsafe { libc::pthread_mutex_unlock(mutex) };
    }
}

/// Copies this CPU's share of the pages: the first half, then (when testing write
/// protection) write-protects the whole share, then the second half.
pub fn background_thread(b: &Bounce<'_>, cpu: usize) {
    let page_size = b.mem.page_size;
    let start = cpu * b.nr_pages_per_cpu;
    let end = start + b.nr_pages_per_cpu;
    let mid = (start + end) / 2;
    for nr in start..mid {
        copy_page(b, nr * page_size, true);
    }
    if b.wp {
        let from = b.dst.base.wrapping_add(start * page_size);
        let len = b.nr_pages_per_cpu * page_size;
        if let Err(e) = b.uffd.write_protect(from.cast(), len) {
            fatal!("write-protecting {from:p}+{len}: {e}");
        }
    }
    for nr in mid..end {
        copy_page(b, nr * page_size, true);
    }
}
