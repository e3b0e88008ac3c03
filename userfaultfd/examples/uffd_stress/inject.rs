//! Fault injection, to show that the checks catch a bad page: with `UFFD_STRESS_CORRUPT=1` in
//! the environment, the first missing fault a handler serves gets a page of zeros instead of
//! the source page. The locking thread that faulted then finds its counter at 0 and the run
//! must fail with "memory corruption" (`ci/stress-vs-kernel --short` checks that it does).

use std::sync::atomic::{AtomicBool, Ordering};

use userfaultfd::CopyMode;

use crate::bounce::Bounce;

static CORRUPT_NEXT: AtomicBool = AtomicBool::new(false);

/// Reads `UFFD_STRESS_CORRUPT` (once, at start).
pub fn arm_from_env() {
    let on = std::env::var_os("UFFD_STRESS_CORRUPT").is_some_and(|v| v == "1");
    CORRUPT_NEXT.store(on, Ordering::Relaxed);
}

/// Whether this missing fault is the one to corrupt (clears the request).
#[inline]
pub fn take() -> bool {
    CORRUPT_NEXT.load(Ordering::Relaxed) && CORRUPT_NEXT.swap(false, Ordering::Relaxed)
}

/// Places a page of zeros at `offset` of the destination (as the copy would place the
/// source page); returns whether it did (`false`: the background copier was first).
pub fn place_zeros(b: &Bounce<'_>, offset: usize) -> bool {
    let page_size = b.mem.page_size;
    let zeros = vec![0u8; page_size];
    let dst = b.dst.base.wrapping_add(offset);
    let mode = if b.wp {
        CopyMode::WRITE_PROTECT
    } else {
        CopyMode::empty()
    };
    // SAFETY: as in `handler::copy_page`: a page of the registered destination area, which
    // holds no Rust object; `zeros` is readable for a page.
    match unsafe {
        b.uffd
            .copy_with_mode(zeros.as_ptr().cast(), dst.cast(), page_size, mode)
    } {
        Ok(_) => true,
        Err(e) if e.errno() == Some(userfaultfd::Errno::EEXIST) => {
            // Too late for this page: corrupt the next one.
            CORRUPT_NEXT.store(true, Ordering::Relaxed);
            if let Err(e) = b.uffd.wake(dst.cast(), page_size) {
                fatal!("error waking {dst:p}: {e}");
            }
            false
        }
        Err(e) => fatal!("UFFDIO_COPY (injected zeros) at offset {offset}: {e}"),
    }
}
