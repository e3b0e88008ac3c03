//! Write protection: `copy_with_mode(WRITE_PROTECT)` and `write_protect` make the next write
//! a `WriteProtected` fault, `remove_write_protection` resolves it, and misuse gives the
//! documented errors. On every memory type (shmem and hugetlbfs need `WP_HUGETLBFS_SHMEM`).

mod support;

use std::sync::Arc;

use support::{join_timeout, pattern, spawn_named, uffd_for, wait_event, MemoryType, Region};
use userfaultfd::{CopyMode, Errno, Error, Event, FaultKind, FeatureFlags, IoctlFlags};
use userfaultfd::{ReadWrite, RegisterMode, Uffd};

/// Writes `byte` at offset 5 of page 0 of `region` on a new thread.
fn start_writer(region: &Arc<Region>, byte: u8) -> support::timeout::Waitable<()> {
    let region = Arc::clone(region);
    spawn_named("writer", move || {
        // SAFETY: offset 5 is inside page 0; the write blocks until its faults are resolved.
        unsafe { region.ptr().add(5).write_volatile(byte) };
    })
}

#[track_caller]
fn expect_fault(uffd: &Uffd, kind: FaultKind, rw: ReadWrite, at: *mut u8) {
    match wait_event(uffd) {
        Event::Pagefault {
            kind: k,
            rw: r,
            addr,
            ..
        } => {
            assert_eq!((k, r), (kind, rw));
            assert_eq!(addr as usize, at as usize);
        }
        other => panic!("expected a {kind:?} fault, got {other:?}"),
    }
}

const MISSING_WP: RegisterMode = RegisterMode::MISSING.union(RegisterMode::WRITE_PROTECT);

/// A write to a missing page is served by a write-protected copy; the retried write is then a
/// write-protect fault, resolved by removing the protection.
#[test]
fn copy_with_write_protect_then_write_protect_fault() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, MISSING_WP, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        let ioctls = uffd
            .register_with_mode(region.addr(), region.len(), MISSING_WP)
            .unwrap();
        assert!(ioctls.contains(IoctlFlags::WRITE_PROTECT), "{ioctls:?}");
        let writer = start_writer(&region, 0xee);
        expect_fault(&uffd, FaultKind::Missing, ReadWrite::Write, region.ptr());
        let data = pattern(3, ps);
        // SAFETY: the destination is the missing page of our test mapping.
        let done = unsafe {
            uffd.copy_with_mode(
                data.as_ptr().cast(),
                region.addr(),
                ps,
                CopyMode::WRITE_PROTECT,
            )
        };
        assert_eq!(done.unwrap(), ps);
        expect_fault(
            &uffd,
            FaultKind::WriteProtected,
            ReadWrite::Write,
            region.ptr(),
        );
        // Reading a write-protected page does not fault: the write has not happened yet.
        assert!(region.read_page(0) == data, "{memory:?}");
        uffd.remove_write_protection(region.addr(), ps, true)
            .unwrap();
        join_timeout(writer);
        let mut expected = data;
        expected[5] = 0xee;
        assert!(region.read_page(0) == expected, "{memory:?}");
        assert!(
            uffd.read_event().unwrap().is_none(),
            "{memory:?}: extra event"
        );
    }
}

/// `write_protect` on a populated page: reads go on, a write faults, and removing the
/// protection without waking leaves the writer blocked until `wake`.
#[test]
fn write_protect_populated_page() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, MISSING_WP, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        uffd.register_with_mode(region.addr(), region.len(), MISSING_WP)
            .unwrap();
        let data = pattern(4, ps);
        // SAFETY: populates our test mapping.
        unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), ps, true) }.unwrap();
        uffd.write_protect(region.addr(), ps).unwrap();

        let reader = {
            let region = Arc::clone(&region);
            spawn_named("reader", move || region.read_page(0))
        };
        assert!(join_timeout(reader) == data, "{memory:?}: read");
        assert!(
            uffd.read_event().unwrap().is_none(),
            "{memory:?}: a read faulted"
        );

        let writer = start_writer(&region, 0x11);
        expect_fault(
            &uffd,
            FaultKind::WriteProtected,
            ReadWrite::Write,
            region.ptr(),
        );
        uffd.remove_write_protection(region.addr(), ps, false)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(region.read_page(0)[5], data[5], "{memory:?}: woken early");
        uffd.wake(region.addr(), ps).unwrap();
        join_timeout(writer);
        assert_eq!(region.read_page(0)[5], 0x11, "{memory:?}");
    }
}

#[test]
fn write_protect_errors() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, MISSING_WP, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        // Registered for missing faults only: no write protection.
        uffd.register(region.addr(), ps).unwrap();
        let err = uffd.write_protect(region.addr(), ps).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::ENOENT)),
            "{memory:?}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("UFFDIO_WRITEPROTECT")
                && text.contains("not registered with RegisterMode::WRITE_PROTECT"),
            "{text}"
        );
        let data = pattern(1, ps);
        // SAFETY: rejected (the range is not registered for write protection).
        let result = unsafe {
            uffd.copy_with_mode(
                data.as_ptr().cast(),
                region.addr(),
                ps,
                CopyMode::WRITE_PROTECT,
            )
        };
        assert!(
            matches!(result, Err(Error::CopyFailed(Errno::EINVAL))),
            "{memory:?}: {result:?}"
        );
        if memory == MemoryType::Hugetlb {
            uffd.register_with_mode(region.addr(), ps, MISSING_WP)
                .unwrap();
            let err = uffd.write_protect(region.addr(), 4096).unwrap_err();
            assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
        }
    }
}
