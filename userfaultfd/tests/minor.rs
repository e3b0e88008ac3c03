//! Minor faults (shmem and hugetlbfs): pages put in the page cache through a second view fault
//! in the registered view, and `r#continue` maps them; `continue_with_mode(WRITE_PROTECT)`
//! maps them write-protected. Misuse gives the documented errors.

mod support;

use std::sync::Arc;

use support::{blocked_in_userfault, join_timeout, kernel_lacks, pattern, spawn_named};
use support::{uffd_for, wait_event, MemoryType, Region};
use userfaultfd::{ContinueMode, Errno, Error, Event, FaultKind, FeatureFlags, IoctlFlags};
use userfaultfd::{ReadWrite, RegisterMode, Uffd};

const SHARED: [MemoryType; 2] = [MemoryType::Shmem, MemoryType::Hugetlb];

/// A region whose pages are in the page cache (written through a second view that stays
/// mapped), and which is not yet mapped in its own view.
fn populated_through_second_view(
    memory: MemoryType,
    pages: usize,
) -> Option<(Arc<Region>, Region)> {
    let region = Region::new(memory, pages)?;
    let view = region.second_view();
    for i in 0..pages {
        view.write_page(i, &pattern(i, region.page_size()));
    }
    Some((Arc::new(region), view))
}

#[track_caller]
fn expect_fault(uffd: &Uffd, kind: FaultKind, rw: ReadWrite) -> *mut libc::c_void {
    match wait_event(uffd) {
        Event::Pagefault {
            kind: k,
            rw: r,
            addr,
            ..
        } => {
            assert_eq!((k, r), (kind, rw));
            addr
        }
        other => panic!("expected a {kind:?} fault, got {other:?}"),
    }
}

#[test]
fn minor_faults_are_resolved_by_continue() {
    for memory in SHARED {
        let Some(uffd) = uffd_for(memory, RegisterMode::MINOR, FeatureFlags::empty()) else {
            continue;
        };
        let Some((region, _view)) = populated_through_second_view(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        let ioctls = uffd
            .register_with_mode(region.addr(), region.len(), RegisterMode::MINOR)
            .unwrap();
        assert!(ioctls.contains(IoctlFlags::CONTINUE), "{ioctls:?}");
        let reader = {
            let region = Arc::clone(&region);
            spawn_named("reader", move || (region.read_page(0), region.read_page(1)))
        };
        for i in 0..2 {
            let addr = expect_fault(&uffd, FaultKind::Minor, ReadWrite::Read);
            assert_eq!(addr as usize, region.page(i) as usize, "{memory:?}");
            assert_eq!(uffd.r#continue(addr, ps, true).unwrap(), ps as u64);
        }
        let (page0, page1) = join_timeout(reader);
        assert!(page0 == pattern(0, ps), "{memory:?}: page 0");
        assert!(page1 == pattern(1, ps), "{memory:?}: page 1");

        let err = uffd.r#continue(region.addr(), ps, true).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::EEXIST)),
            "{memory:?}: {err:?}"
        );
        assert!(err.to_string().contains("UFFDIO_CONTINUE"), "{err}");
    }
}

#[test]
fn continue_dontwake_then_wake() {
    for memory in SHARED {
        let Some(uffd) = uffd_for(memory, RegisterMode::MINOR, FeatureFlags::THREAD_ID) else {
            continue;
        };
        let Some((region, _view)) = populated_through_second_view(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register_with_mode(region.addr(), region.len(), RegisterMode::MINOR)
            .unwrap();
        let reader = {
            let region = Arc::clone(&region);
            spawn_named("reader", move || region.read_page(0))
        };
        let Event::Pagefault {
            addr, thread_id, ..
        } = wait_event(&uffd)
        else {
            panic!("expected a page fault");
        };
        let tid = thread_id.expect("THREAD_ID enabled");
        let mapped = uffd.continue_with_mode(addr, ps, ContinueMode::DONTWAKE);
        assert_eq!(mapped.unwrap(), ps as u64);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(blocked_in_userfault(tid), "{memory:?}: woken without wake");
        uffd.wake(addr, ps).unwrap();
        assert!(join_timeout(reader) == pattern(0, ps), "{memory:?}");
    }
}

/// A write to a page in the page cache: minor fault, resolved write-protected (Linux 6.4),
/// so the retried write is a write-protect fault.
#[test]
fn continue_with_write_protect_then_write_protect_fault() {
    // CONTINUE_MODE_WP came with Linux 6.4, as did WP_UNPOPULATED: the kernel's feature list
    // is the only run-time witness of that version.
    if kernel_lacks(FeatureFlags::WP_UNPOPULATED).is_some() {
        return;
    }
    let mode = RegisterMode::MINOR | RegisterMode::WRITE_PROTECT;
    for memory in SHARED {
        let Some(uffd) = uffd_for(memory, mode, FeatureFlags::empty()) else {
            continue;
        };
        let Some((region, view)) = populated_through_second_view(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register_with_mode(region.addr(), region.len(), mode)
            .unwrap();
        let writer = {
            let region = Arc::clone(&region);
            spawn_named("writer", move || {
                // SAFETY: offset 7 is inside the page; the write blocks until resolved.
                unsafe { region.ptr().add(7).write_volatile(0x5a) };
            })
        };
        let addr = expect_fault(&uffd, FaultKind::Minor, ReadWrite::Write);
        let mapped = uffd.continue_with_mode(addr, ps, ContinueMode::WRITE_PROTECT);
        assert_eq!(mapped.unwrap(), ps as u64);
        let wp_addr = expect_fault(&uffd, FaultKind::WriteProtected, ReadWrite::Write);
        assert_eq!(wp_addr, addr);
        assert_eq!(
            view.read_page(0)[7],
            pattern(0, ps)[7],
            "{memory:?}: written early"
        );
        uffd.remove_write_protection(addr, ps, true).unwrap();
        join_timeout(writer);
        // Shared memory: the write shows through the other view.
        assert_eq!(view.read_page(0)[7], 0x5a, "{memory:?}");
    }
}

#[test]
fn continue_errors() {
    for memory in SHARED {
        let Some(uffd) = uffd_for(memory, RegisterMode::MINOR, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        // Not registered yet.
        let err = uffd.r#continue(region.addr(), ps, true).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::ENOENT)),
            "{memory:?}: {err:?}"
        );
        uffd.register_with_mode(region.addr(), region.len(), RegisterMode::MINOR)
            .unwrap();
        // Nothing in the page cache.
        let err = uffd.r#continue(region.addr(), ps, true).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::EFAULT)),
            "{memory:?}: {err:?}"
        );
        assert!(err.to_string().contains("not in the page cache"), "{err}");
        // Write protection requested on a range not registered for it.
        region.second_view().write_page(0, &pattern(0, ps));
        let result = uffd.continue_with_mode(region.addr(), ps, ContinueMode::WRITE_PROTECT);
        assert!(
            matches!(result, Err(Error::ContinueFailed(Errno::EINVAL))),
            "{memory:?}: {result:?}"
        );
        if memory == MemoryType::Hugetlb {
            let result = uffd.r#continue(region.addr(), 4096, true);
            assert!(
                matches!(result, Err(Error::SystemError(Errno::EINVAL))),
                "{result:?}"
            );
        }
    }

    // Anonymous memory has no page cache: no MINOR registration, no CONTINUE.
    let memory = MemoryType::Anonymous;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let region = Region::new(memory, 1).unwrap();
    let err = uffd
        .register_with_mode(region.addr(), region.len(), RegisterMode::MINOR)
        .unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
    let ioctls = uffd.register(region.addr(), region.len()).unwrap();
    assert!(!ioctls.contains(IoctlFlags::CONTINUE), "{ioctls:?}");
    let err = uffd
        .r#continue(region.addr(), region.len(), true)
        .unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
}
