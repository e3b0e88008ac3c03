//! `zeropage` serves missing faults with zeros on anonymous memory and shmem, reports EEXIST and
//! partial progress, and is refused on hugetlbfs with the documented error.

mod support;

use std::sync::Arc;

use support::{join_timeout, pattern, spawn_named, uffd_for, wait_event, MemoryType, Region};
use userfaultfd::{Errno, Error, Event, FaultKind, FeatureFlags, IoctlFlags, ReadWrite};
use userfaultfd::{RegisterMode, Uffd, ZeropageMode};

fn zeropage(uffd: &Uffd, start: *mut u8, len: usize) -> userfaultfd::Result<usize> {
    // SAFETY: the range is part of a test mapping that holds no Rust object.
    unsafe { uffd.zeropage(start.cast(), len, true) }
}

#[test]
fn zeropage_serves_read_faults_with_zeros() {
    for memory in [MemoryType::Anonymous, MemoryType::Shmem] {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let region = Arc::new(Region::new(memory, 2).unwrap());
        let ioctls = uffd.register(region.addr(), region.len()).unwrap();
        assert!(
            ioctls.contains(IoctlFlags::ZEROPAGE),
            "{memory:?}: {ioctls:?}"
        );
        let reader = {
            let region = Arc::clone(&region);
            spawn_named("reader", move || (region.read_page(0), region.read_page(1)))
        };
        for _ in 0..2 {
            let Event::Pagefault { kind, rw, addr, .. } = wait_event(&uffd) else {
                panic!("{memory:?}: expected a page fault");
            };
            assert_eq!((kind, rw), (FaultKind::Missing, ReadWrite::Read));
            let done = zeropage(&uffd, addr.cast(), region.page_size()).unwrap();
            assert_eq!(done, region.page_size(), "{memory:?}");
        }
        let (page0, page1) = join_timeout(reader);
        assert!(page0.iter().chain(&page1).all(|&b| b == 0), "{memory:?}");
    }
}

/// A write to a missing page resolved by a zero page is retried by the kernel (it
/// copies-on-write the zero page) without a second event.
#[test]
fn zeropage_resolves_a_write_fault_without_a_second_event() {
    for memory in [MemoryType::Anonymous, MemoryType::Shmem] {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let region = Arc::new(Region::new(memory, 1).unwrap());
        uffd.register(region.addr(), region.len()).unwrap();
        let writer = {
            let region = Arc::clone(&region);
            spawn_named("writer", move || {
                // SAFETY: offset 10 is inside the page; the write blocks until resolved.
                unsafe { region.ptr().add(10).write_volatile(0xab) };
            })
        };
        let Event::Pagefault { kind, rw, addr, .. } = wait_event(&uffd) else {
            panic!("{memory:?}: expected a page fault");
        };
        assert_eq!((kind, rw), (FaultKind::Missing, ReadWrite::Write));
        zeropage(&uffd, addr.cast(), region.page_size()).unwrap();
        join_timeout(writer);
        assert!(
            uffd.read_event().unwrap().is_none(),
            "{memory:?}: second event"
        );
        let page = region.read_page(0);
        assert_eq!(page[10], 0xab, "{memory:?}");
        assert_eq!(page.iter().filter(|&&b| b != 0).count(), 1, "{memory:?}");
    }
}

#[test]
fn zeropage_on_populated_pages_is_eexist_or_partial() {
    for memory in [MemoryType::Anonymous, MemoryType::Shmem] {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let region = Region::new(memory, 4).unwrap();
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let data = pattern(1, ps);
        for page in [1, 3] {
            // SAFETY: populates a page of our test mapping.
            unsafe { uffd.copy(data.as_ptr().cast(), region.page(page).cast(), ps, true) }.unwrap();
        }

        let err = zeropage(&uffd, region.page(1), ps).unwrap_err();
        assert!(
            matches!(err, Error::ZeropageFailed(Errno::EEXIST)),
            "{memory:?}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("UFFDIO_ZEROPAGE") && text.contains("already populated"),
            "{text}"
        );

        // Pages 0-1: page 0 is zeroed, then the kernel stops at page 1. `zeropage` reports
        // it as userfaultfd 0.9 did (`ZeropageFailed(EAGAIN)`), `zeropage_with_mode` with the
        // count.
        let err = zeropage(&uffd, region.ptr(), 2 * ps).unwrap_err();
        assert!(
            matches!(err, Error::ZeropageFailed(Errno::EAGAIN)),
            "{memory:?}: {err:?}"
        );
        assert!(region.read_page(0).iter().all(|&b| b == 0), "{memory:?}");
        assert!(region.read_page(1) == data, "{memory:?}: page 1 kept");
        // SAFETY: pages 2-3 of our test mapping.
        let err = unsafe {
            uffd.zeropage_with_mode(region.page(2).cast(), 2 * ps, ZeropageMode::empty())
        }
        .unwrap_err();
        assert!(
            matches!(err, Error::PartiallyCopied(n) if n == ps),
            "{memory:?}: {err:?}"
        );
        assert!(region.read_page(2).iter().all(|&b| b == 0), "{memory:?}");
        assert!(region.read_page(3) == data, "{memory:?}: page 3 kept");
    }
}

/// hugetlbfs has no zero page: registration does not offer ZEROPAGE and the ioctl fails with
/// EINVAL, which the message explains.
#[test]
fn zeropage_on_hugetlb_is_einval() {
    let memory = MemoryType::Hugetlb;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let Some(region) = Region::new(memory, 1) else {
        return;
    };
    let ioctls = uffd.register(region.addr(), region.len()).unwrap();
    assert!(!ioctls.contains(IoctlFlags::ZEROPAGE), "{ioctls:?}");
    let err = zeropage(&uffd, region.ptr(), region.len()).unwrap_err();
    assert!(
        matches!(err, Error::ZeropageFailed(Errno::EINVAL)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("UFFDIO_ZEROPAGE") && text.contains("EINVAL"),
        "{text}"
    );
    // Nothing was placed: the page is still missing and a copy fills it.
    let data = pattern(2, region.page_size());
    // SAFETY: fills our test mapping.
    let done = unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), data.len(), true) };
    assert_eq!(done.unwrap(), region.len());
}
