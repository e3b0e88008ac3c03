//! `Uffd::set_non_blocking` / `is_non_blocking`: switching between blocking reads and a
//! `poll(2)` loop on one descriptor (what the kernel's uffd-stress does between bounces).
//!
//! The flag is a property of the descriptor, not of the memory: these tests use anonymous
//! memory only.

mod support;

use std::os::fd::AsRawFd;

use support::{join_timeout, kernel_lacks, spawn_named, MemoryType, Region};
use userfaultfd::{Event, FaultKind, FeatureFlags, UffdBuilder};

fn status_flags(fd: &impl AsRawFd) -> libc::c_int {
    // SAFETY: F_GETFL only reads the file status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", std::io::Error::last_os_error());
    flags
}

#[test]
fn the_flag_switches_both_ways_and_is_shared_with_clones() {
    if kernel_lacks(FeatureFlags::empty()).is_some() {
        return;
    }
    let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
    let clone = uffd.try_clone().unwrap();
    assert!(!uffd.is_non_blocking().unwrap());
    let before = status_flags(&uffd);

    uffd.set_non_blocking(true).unwrap();
    assert!(uffd.is_non_blocking().unwrap());
    assert!(clone.is_non_blocking().unwrap(), "one open file, one flag");
    assert_eq!(
        status_flags(&uffd),
        before | libc::O_NONBLOCK,
        "only O_NONBLOCK changed"
    );
    // Non-blocking now: with nothing pending, a read returns at once.
    assert!(uffd.read_event().unwrap().is_none());
    uffd.set_non_blocking(true).unwrap();
    assert!(uffd.is_non_blocking().unwrap(), "setting it twice keeps it");

    clone.set_non_blocking(false).unwrap();
    assert!(!uffd.is_non_blocking().unwrap());
    assert_eq!(status_flags(&uffd), before);
}

/// A fault pending on a blocking descriptor makes `poll` report `POLLERR`; switched to
/// non-blocking, the same descriptor reports `POLLIN` and the event is read. Switched back,
/// a blocking read waits for the next fault.
#[test]
fn poll_works_after_switching_and_blocking_reads_after_switching_back() {
    let memory = MemoryType::Anonymous;
    if kernel_lacks(FeatureFlags::empty()).is_some() {
        return;
    }
    let Some(region) = Region::new(memory, 2) else {
        return;
    };
    let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
    uffd.register(region.addr(), region.len()).unwrap();
    let region = std::sync::Arc::new(region);
    let page_size = region.page_size();

    let toucher = {
        let region = std::sync::Arc::clone(&region);
        // SAFETY: reads the registered pages; each read blocks until the test serves it.
        spawn_named("toucher", move || unsafe {
            (
                region.page(0).read_volatile(),
                region.page(1).read_volatile(),
            )
        })
    };

    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, support::TIMEOUT.as_millis() as libc::c_int) };
    assert_eq!(ready, 1);
    assert_ne!(
        pfd.revents & libc::POLLERR,
        0,
        "a blocking userfaultfd polls as POLLERR"
    );

    uffd.set_non_blocking(true).unwrap();
    pfd.revents = 0;
    // SAFETY: as above.
    let ready = unsafe { libc::poll(&mut pfd, 1, support::TIMEOUT.as_millis() as libc::c_int) };
    assert_eq!(ready, 1);
    assert_eq!(pfd.revents, libc::POLLIN);
    let first = uffd.read_event().unwrap().expect("the pending fault");
    assert!(matches!(
        first,
        Event::Pagefault { kind: FaultKind::Missing, addr, .. } if addr == region.addr()
    ));

    // Blocking again: the reader waits for the second fault, which comes once the first is
    // served and the toucher moves on.
    uffd.set_non_blocking(false).unwrap();
    let zeros = vec![0u8; page_size];
    // SAFETY: a missing page of our own mapping, holding no Rust object.
    unsafe { uffd.copy(zeros.as_ptr().cast(), region.addr(), page_size, true) }.unwrap();
    let second = uffd
        .read_event()
        .unwrap()
        .expect("a blocking read returns an event");
    let second_page = region.page(1).cast::<libc::c_void>();
    assert!(matches!(
        second,
        Event::Pagefault { addr, .. } if addr == second_page
    ));
    // SAFETY: as above.
    unsafe { uffd.copy(zeros.as_ptr().cast(), second_page, page_size, true) }.unwrap();
    assert_eq!(join_timeout(toucher), (0, 0));
}
