//! Serving the faults: the copy that places a page (shared with the background copier), and
//! the two kinds of handler thread, blocking `read(2)` and `poll(2)`.

use std::sync::mpsc::SyncSender;

use userfaultfd::{CopyMode, Errno, Event, FaultKind, ReadWrite};

use crate::alarm;
use crate::bounce::Bounce;
use crate::inject;
use crate::stats::FaultStats;

/// Copies the page at `offset` from the source area into the destination, write-protected
/// when the bounce tests write protection. Returns whether this call placed it; when another
/// thread did first (`EEXIST`), wakes whoever waits on the page instead.
///
/// With `retry` (the background copier), a successful copy is sometimes repeated through the
/// alias view (see [`alarm`]), which must fail with `EEXIST`.
pub fn copy_page(b: &Bounce<'_>, offset: usize, retry: bool) -> bool {
    let page_size = b.mem.page_size;
    if offset >= b.mem.bytes() {
        fatal!("unexpected offset {offset}");
    }
    let src = b.src.base.wrapping_add(offset);
    let dst = b.dst.base.wrapping_add(offset);
    let mode = if b.wp {
        CopyMode::WRITE_PROTECT
    } else {
        CopyMode::empty()
    };
    // SAFETY: `dst` is a page of the registered destination area, which holds no Rust
    // object (its contents are read only through raw pointers); `src` is readable.
    match unsafe {
        b.uffd
            .copy_with_mode(src.cast(), dst.cast(), page_size, mode)
    } {
        Ok(n) if n == page_size => {
            if retry && alarm::take_eexist_check() {
                copy_again(b, offset, mode);
            }
            true
        }
        Ok(n) => fatal!("UFFDIO_COPY copied {n} bytes instead of {page_size}"),
        Err(e) if e.errno() == Some(Errno::EEXIST) => {
            if let Err(e) = b.uffd.wake(dst.cast(), page_size) {
                fatal!("error waking {dst:p}: {e}");
            }
            false
        }
        Err(e) => fatal!("UFFDIO_COPY at offset {offset}: {e}"),
    }
}

/// Copies the page just placed at `offset` again, through the alias view where there is
/// one: the kernel must refuse with `EEXIST`.
fn copy_again(b: &Bounce<'_>, offset: usize, mode: CopyMode) {
    let page_size = b.mem.page_size;
    let src = b.src.base.wrapping_add(offset);
    let dst = b.dst.alias.unwrap_or(b.dst.base).wrapping_add(offset);
    // SAFETY: as in `copy_page`; the page is populated, so nothing is written to it.
    match unsafe {
        b.uffd
            .copy_with_mode(src.cast(), dst.cast(), page_size, mode)
    } {
        Err(e) if e.errno() == Some(Errno::EEXIST) => {}
        Err(e) => fatal!("UFFDIO_COPY retry error: {e}"),
        Ok(n) => fatal!("UFFDIO_COPY retry unexpected: copied {n} bytes over a present page"),
    }
}

/// Serves one fault: a write-protect fault by removing the protection, a missing fault by
/// copying the page in.
fn handle_fault(b: &Bounce<'_>, event: Event, stats: &mut FaultStats) {
    let Event::Pagefault { kind, rw, addr, .. } = event else {
        fatal!("unexpected event {event:?}");
    };
    let page_size = b.mem.page_size;
    if kind == FaultKind::WriteProtected {
        if let Err(e) = b.uffd.remove_write_protection(addr, page_size, true) {
            fatal!("clear WP failed: address={addr:p}: {e}");
        }
        stats.wp += 1;
    } else if kind == FaultKind::Missing {
        // The only faulting accesses are the locking threads' pthread_mutex_lock, whose first
        // access to the page is a read (glibc reads the mutex type first): a missing fault on
        // a write means the page was mapped and dropped under our feet.
        if rw == ReadWrite::Write {
            fatal!("unexpected write fault at {addr:p}");
        }
        let offset = (addr as usize).wrapping_sub(b.dst.base as usize) & !(page_size - 1);
        let placed = if inject::take() {
            inject::place_zeros(b, offset)
        } else {
            copy_page(b, offset, false)
        };
        if placed {
            stats.missing += 1;
        }
    } else {
        fatal!("unexpected {kind:?} fault at {addr:p}: no range is registered for it");
    }
}

/// A handler that blocks in `read(2)`; returns when it reads the sentinel's fault (see
/// [`crate::stop`]). Says on `started` that it runs.
pub fn read_thread(b: &Bounce<'_>, started: SyncSender<()>) -> FaultStats {
    let _ = started.send(());
    let mut stats = FaultStats::default();
    loop {
        match b.uffd.read_event() {
            Ok(Some(Event::Pagefault { addr, .. })) if b.stoppers.is_sentinel(addr) => {
                if let Err(e) = b.stoppers.release_sentinel(b.uffd) {
                    fatal!("resolving the sentinel fault: {e}");
                }
                return stats;
            }
            Ok(Some(event)) => handle_fault(b, event, &mut stats),
            Ok(None) => continue,
            Err(e) => fatal!("blocking read error: {e}"),
        }
    }
}

/// A handler that polls the (non-blocking) userfaultfd and its CPU's pipe; returns when the
/// pipe has a byte.
pub fn poll_thread(b: &Bounce<'_>, cpu: usize) -> FaultStats {
    let mut stats = FaultStats::default();
    let pipe = b.stoppers.pipe(cpu);
    let mut fds = [
        libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(b.uffd),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pipe,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready <= 0 {
            let err = std::io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                continue;
            }
            fatal!("poll error: {ready} ({err})");
        }
        if fds[1].revents != 0 {
            if fds[1].revents & libc::POLLIN == 0 {
                fatal!("pollfd[1].revents {}", fds[1].revents);
            }
            let mut byte = 0u8;
            // SAFETY: reads one byte from our pipe into a local.
            if unsafe { libc::read(pipe, (&mut byte as *mut u8).cast(), 1) } != 1 {
                fatal!("read pipefd error");
            }
            return stats;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            fatal!("pollfd[0].revents {}", fds[0].revents);
        }
        match b.uffd.read_event() {
            Ok(Some(event)) => handle_fault(b, event, &mut stats),
            Ok(None) => continue,
            Err(e) => fatal!("read error: {e}"),
        }
    }
}
