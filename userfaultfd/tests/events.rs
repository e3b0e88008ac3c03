//! Events other than fork (see fork.rs): remap, remove and unmap are produced and decoded with
//! their fields on every memory type; page faults carry the thread id only with `THREAD_ID`
//! and the exact address only with `EXACT_ADDRESS`; while a non-cooperative event is
//! pending, the operations that change the address space fail with EAGAIN (never a bogus
//! `PartiallyCopied`).

mod support;

use std::sync::Arc;

use support::{gettid, join_timeout, pattern, spawn_named, uffd_for, wait_event};
use support::{wait_readable, MemoryType, Region};
use userfaultfd::{
    ContinueMode, Errno, Error, Event, FeatureFlags, MoveMode, RegisterMode, Uffd, ZeropageMode,
};

/// `len` bytes of address space aligned to `align`, reserved (PROT_NONE) for a mapping to be
/// moved onto; unmapped on drop.
struct Reserved {
    ptr: *mut u8,
    len: usize,
}

impl Reserved {
    fn new(len: usize, align: usize) -> Reserved {
        // SAFETY: a new inaccessible mapping of the kernel's choosing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + align,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        let start = (raw as usize).next_multiple_of(align);
        let (head, tail) = (start - raw as usize, align - (start - raw as usize));
        // SAFETY: trims the unaligned head and tail of our reservation.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        Reserved {
            ptr: start as *mut u8,
            len,
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: unmaps what is now at our reserved range (the moved mapping).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Copies page 0 at `at` (a page of `memory`).
fn copy_at(uffd: &Uffd, at: *mut u8, page_size: usize) -> userfaultfd::Result<usize> {
    let data = pattern(1, page_size);
    // SAFETY: `at` is a page of a test mapping that holds no Rust object.
    unsafe { uffd.copy(data.as_ptr().cast(), at.cast(), page_size, true) }
}

/// Moves `region` onto `to` with mremap on another thread (the call blocks until the event is
/// read when EVENT_REMAP is on).
fn start_remap(region: &Region, to: &Reserved) -> support::Waitable<usize> {
    let (from, len, to) = (region.ptr() as usize, region.len(), to.ptr as usize);
    spawn_named("mremap", move || {
        // SAFETY: moves our test mapping onto our reservation.
        let r = unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        assert_ne!(
            r,
            libc::MAP_FAILED,
            "mremap: {}",
            std::io::Error::last_os_error()
        );
        r as usize
    })
}

#[test]
fn remap_event() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::EVENT_REMAP) else {
            continue;
        };
        let Some(mut region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let target = Reserved::new(region.len(), ps);
        let mover = start_remap(&region, &target);
        match wait_event(&uffd) {
            Event::Remap { from, to, len } => {
                assert_eq!(from as usize, region.ptr() as usize, "{memory:?}");
                assert_eq!(to as usize, target.ptr as usize, "{memory:?}");
                assert_eq!(len, region.len(), "{memory:?}");
            }
            other => panic!("{memory:?}: expected Remap, got {other:?}"),
        }
        assert_eq!(join_timeout(mover), target.ptr as usize);
        region.forget_mapping(); // moved: `target` unmaps it
                                 // The registration moved with the mapping.
        assert_eq!(copy_at(&uffd, target.ptr, ps).unwrap(), ps, "{memory:?}");
    }
}

/// Without EVENT_REMAP, the moved mapping is no longer registered.
#[test]
fn remap_without_the_event_drops_the_registration() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(mut region) = Region::new(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let target = Reserved::new(region.len(), ps);
        join_timeout(start_remap(&region, &target));
        region.forget_mapping();
        assert!(uffd.read_event().unwrap().is_none(), "{memory:?}");
        let result = copy_at(&uffd, target.ptr, ps);
        assert!(
            matches!(result, Err(Error::CopyFailed(Errno::ENOENT))),
            "{memory:?}: {result:?}"
        );
    }
}

/// The advice that drops pages: MADV_DONTNEED for private memory, MADV_REMOVE (which also
/// frees the file's pages) for shared memory.
fn drop_advice(memory: MemoryType) -> libc::c_int {
    match memory {
        MemoryType::Anonymous => libc::MADV_DONTNEED,
        _ => libc::MADV_REMOVE,
    }
}

/// Drops page 0 of `region` with madvise on another thread.
fn start_drop(region: &Region) -> support::Waitable<i32> {
    let (at, len, advice) = (
        region.ptr() as usize,
        region.page_size(),
        drop_advice(region.memory()),
    );
    spawn_named("madvise", move || {
        // SAFETY: drops a page of our test mapping, which holds no Rust object.
        unsafe { libc::madvise(at as *mut libc::c_void, len, advice) }
    })
}

#[test]
fn remove_event() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::EVENT_REMOVE) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        copy_at(&uffd, region.ptr(), ps).unwrap();
        let dropper = start_drop(&region);
        match wait_event(&uffd) {
            Event::Remove { start, end } => {
                assert_eq!(start as usize, region.ptr() as usize, "{memory:?}");
                assert_eq!(end as usize, region.ptr() as usize + ps, "{memory:?}");
            }
            other => panic!("{memory:?}: expected Remove, got {other:?}"),
        }
        assert_eq!(join_timeout(dropper), 0, "{memory:?}: madvise failed");
        // The page is missing again: a copy fills it instead of failing with EEXIST.
        assert_eq!(copy_at(&uffd, region.ptr(), ps).unwrap(), ps, "{memory:?}");
    }
}

#[test]
fn unmap_event() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::EVENT_UNMAP) else {
            continue;
        };
        let Some(mut region) = Region::new(memory, 2) else {
            continue;
        };
        uffd.register(region.addr(), region.len()).unwrap();
        let (start, len) = (region.ptr() as usize, region.len());
        region.forget_mapping(); // unmapped by the thread below
        let unmapper = spawn_named("munmap", move || {
            // SAFETY: unmaps our test mapping, which nothing uses any more.
            unsafe { libc::munmap(start as *mut libc::c_void, len) }
        });
        match wait_event(&uffd) {
            Event::Unmap { start: s, end } => {
                assert_eq!(s as usize, start, "{memory:?}");
                assert_eq!(end as usize, start + len, "{memory:?}");
            }
            other => panic!("{memory:?}: expected Unmap, got {other:?}"),
        }
        assert_eq!(join_timeout(unmapper), 0, "{memory:?}: munmap failed");
    }
}

/// Reads the byte at `offset` of `region` on a new thread; returns the thread's id and the
/// address of the fault it raised, after resolving it.
fn fault_once(uffd: &Uffd, region: &Arc<Region>, offset: usize) -> (libc::pid_t, Event) {
    let reader = {
        let region = Arc::clone(region);
        spawn_named("reader", move || {
            // SAFETY: `offset` is inside the region; the read blocks until resolved.
            let _ = unsafe { region.ptr().add(offset).read_volatile() };
            gettid()
        })
    };
    let event = wait_event(uffd);
    copy_at(uffd, region.ptr(), region.page_size()).unwrap();
    (join_timeout(reader), event)
}

#[test]
fn thread_id_only_with_the_feature() {
    for memory in MemoryType::ALL {
        for with_tid in [true, false] {
            let extra = if with_tid {
                FeatureFlags::THREAD_ID
            } else {
                FeatureFlags::empty()
            };
            let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, extra) else {
                continue;
            };
            let Some(region) = Region::new(memory, 1) else {
                continue;
            };
            let region = Arc::new(region);
            uffd.register(region.addr(), region.len()).unwrap();
            let (tid, event) = fault_once(&uffd, &region, 0);
            let Event::Pagefault { thread_id, .. } = event else {
                panic!("expected a page fault, got {event:?}");
            };
            let expected = with_tid.then_some(tid);
            assert_eq!(thread_id, expected, "{memory:?}, THREAD_ID {with_tid}");
        }
    }
}

#[test]
fn exact_address_only_with_the_feature() {
    for memory in MemoryType::ALL {
        for exact in [true, false] {
            let extra = if exact {
                FeatureFlags::EXACT_ADDRESS
            } else {
                FeatureFlags::empty()
            };
            let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, extra) else {
                continue;
            };
            let Some(region) = Region::new(memory, 1) else {
                continue;
            };
            let region = Arc::new(region);
            uffd.register(region.addr(), region.len()).unwrap();
            // Past the first base page: on hugetlbfs the rounded address is the huge page's.
            let offset = if memory == MemoryType::Hugetlb {
                4096 + 123
            } else {
                123
            };
            let (_, event) = fault_once(&uffd, &region, offset);
            let Event::Pagefault { addr, .. } = event else {
                panic!("expected a page fault, got {event:?}");
            };
            let expected = region.ptr() as usize + if exact { offset } else { 0 };
            assert_eq!(addr as usize, expected, "{memory:?}, EXACT_ADDRESS {exact}");
        }
    }
}

#[test]
fn operations_fail_with_eagain_while_an_event_is_pending() {
    let memory = MemoryType::Anonymous;
    let mode = RegisterMode::MISSING | RegisterMode::WRITE_PROTECT;
    let extra = FeatureFlags::EVENT_REMOVE | FeatureFlags::POISON | FeatureFlags::MOVE;
    let Some(uffd) = uffd_for(memory, mode, extra) else {
        return;
    };
    let region = Region::new(memory, 2).unwrap();
    let source = Region::new(memory, 1).unwrap();
    source.write_page(0, &pattern(0, source.page_size()));
    let ps = region.page_size();
    uffd.register_with_mode(region.addr(), region.len(), mode)
        .unwrap();
    copy_at(&uffd, region.ptr(), ps).unwrap();
    let dropper = start_drop(&region);
    wait_readable(&uffd);

    let page1 = region.page(1).cast();
    let data = pattern(2, ps);
    // Page 1 of our test mapping, where nothing lives; the kernel refuses each operation
    // while the event is pending.
    // SAFETY: as above.
    let copy = unsafe { uffd.copy(data.as_ptr().cast(), page1, ps, true) };
    // SAFETY: as above.
    let zeropage = unsafe { uffd.zeropage_with_mode(page1, ps, ZeropageMode::empty()) };
    let poison = uffd.poison(page1, ps, true);
    // SAFETY: as above; the source is our own anonymous page.
    let moved = unsafe { uffd.r#move(source.addr(), page1, ps, MoveMode::empty()) };
    let results = [
        ("copy", copy),
        ("zeropage_with_mode", zeropage),
        ("poison", poison),
        ("move", moved),
    ];
    // Nothing done, and still `PartiallyCopied(0)`: the variant correct 0.9 handlers defer
    // the fault on (0.9 gave `PartiallyCopied((-EAGAIN) as usize)` for copy).
    for (what, result) in results {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::PartiallyCopied(0)),
            "{what}: nothing done must be PartiallyCopied(0): {err:?}"
        );
        assert_eq!(err.errno(), Some(Errno::EAGAIN), "{what}: {err:?}");
        assert!(
            err.to_string().contains("non-cooperative event"),
            "{what}: {err}"
        );
    }
    // The 0.9 zeropage keeps 0.9's variant.
    // SAFETY: as above.
    let err = unsafe { uffd.zeropage(page1, ps, true) }.unwrap_err();
    assert!(
        matches!(err, Error::ZeropageFailed(Errno::EAGAIN)),
        "{err:?}"
    );
    let err = uffd.write_protect(region.addr(), ps).unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EAGAIN)), "{err:?}");

    assert!(matches!(wait_event(&uffd), Event::Remove { .. }));
    assert_eq!(join_timeout(dropper), 0);
    // With the event read, the same copy succeeds.
    // SAFETY: page 1 of our test mapping.
    let done = unsafe { uffd.copy(data.as_ptr().cast(), page1, ps, true) };
    assert_eq!(done.unwrap(), ps);
}

#[test]
fn continue_fails_with_eagain_while_an_event_is_pending() {
    let mode = RegisterMode::MINOR;
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        let Some(uffd) = uffd_for(memory, mode, FeatureFlags::EVENT_REMOVE) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        let view = region.second_view();
        view.write_page(0, &pattern(0, ps));
        view.write_page(1, &pattern(1, ps));
        uffd.register_with_mode(region.addr(), region.len(), mode)
            .unwrap();
        let dropper = start_drop(&region);
        wait_readable(&uffd);
        let result = uffd.continue_with_mode(region.page(1).cast(), ps, ContinueMode::empty());
        assert!(
            matches!(result, Err(Error::PartiallyCopied(0))),
            "{memory:?}: {result:?}"
        );
        // The 0.9 function keeps 0.9's variant.
        let result = uffd.r#continue(region.page(1).cast(), ps, true);
        assert!(
            matches!(result, Err(Error::SystemError(Errno::EAGAIN))),
            "{memory:?}: {result:?}"
        );
        assert!(matches!(wait_event(&uffd), Event::Remove { .. }));
        assert_eq!(join_timeout(dropper), 0);
        assert_eq!(
            uffd.r#continue(region.page(1).cast(), ps, true).unwrap(),
            ps as u64
        );
        assert!(region.read_page(1) == pattern(1, ps), "{memory:?}");
    }
}
