//! `r#move` (Linux 6.8, private anonymous memory only): the destination gets the source's
//! bytes and the source is left empty; holes, populated destinations, shared source pages and
//! other memory types give the documented errors.

mod support;

use std::sync::Arc;

use support::{blocked_in_userfault, gettid, join_timeout, kernel_lacks, pattern};
use support::{spawn_child, spawn_named, uffd_for, wait_event, MemoryType, Region};
use userfaultfd::{Errno, Error, Event, FeatureFlags, MoveMode, RegisterMode, Uffd};

/// A descriptor for moving into anonymous memory; `None` (skip) before Linux 6.8.
fn move_uffd() -> Option<Uffd> {
    uffd_for(
        MemoryType::Anonymous,
        RegisterMode::MISSING,
        FeatureFlags::MOVE,
    )
}

/// An anonymous source of `pages` pages filled with `pattern(i)`, in base pages (a large
/// folio could not be moved page by page).
fn source(pages: usize) -> Region {
    let src = Region::new(MemoryType::Anonymous, pages).unwrap();
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(src.addr(), src.len(), libc::MADV_NOHUGEPAGE) };
    for i in 0..pages {
        src.write_page(i, &pattern(i, src.page_size()));
    }
    src
}

/// Whether page `i` of `region` is resident (mincore), without touching it.
fn resident(region: &Region, i: usize) -> bool {
    let mut vec = [0u8; 1];
    // SAFETY: queries one page of our mapping into a one-byte vector.
    let r = unsafe { libc::mincore(region.page(i).cast(), region.page_size(), vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec[0] & 1 != 0
}

fn mv(
    uffd: &Uffd,
    src: *mut u8,
    dst: *mut u8,
    len: usize,
    mode: MoveMode,
) -> userfaultfd::Result<usize> {
    // SAFETY: both ranges are test mappings that hold no Rust object.
    unsafe { uffd.r#move(src.cast(), dst.cast(), len, mode) }
}

#[test]
fn move_serves_a_fault_and_empties_the_source() {
    let Some(uffd) = move_uffd() else { return };
    let src = source(2);
    let dst = Arc::new(Region::new(MemoryType::Anonymous, 2).unwrap());
    let ps = dst.page_size();
    uffd.register(dst.addr(), dst.len()).unwrap();
    let reader = {
        let dst = Arc::clone(&dst);
        spawn_named("reader", move || (dst.read_page(0), dst.read_page(1)))
    };
    for i in 0..2 {
        let Event::Pagefault { addr, .. } = wait_event(&uffd) else {
            panic!("expected a page fault");
        };
        assert_eq!(addr as usize, dst.page(i) as usize);
        assert!(resident(&src, i));
        let done = mv(&uffd, src.page(i), addr.cast(), ps, MoveMode::empty());
        assert_eq!(done.unwrap(), ps);
        assert!(
            !resident(&src, i),
            "page {i}: the source is still populated"
        );
    }
    let (page0, page1) = join_timeout(reader);
    assert!(page0 == pattern(0, ps) && page1 == pattern(1, ps));
    assert!(src
        .read_page(0)
        .iter()
        .chain(&src.read_page(1))
        .all(|&b| b == 0));
}

#[test]
fn move_dontwake_then_wake() {
    let Some(uffd) = move_uffd() else { return };
    let src = source(1);
    let dst = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
    let ps = dst.page_size();
    uffd.register(dst.addr(), dst.len()).unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = {
        let dst = Arc::clone(&dst);
        spawn_named("reader", move || {
            tid_tx.send(gettid()).unwrap();
            dst.read_page(0)
        })
    };
    let tid = tid_rx.recv().unwrap();
    let Event::Pagefault { addr, .. } = wait_event(&uffd) else {
        panic!("expected a page fault");
    };
    mv(&uffd, src.ptr(), addr.cast(), ps, MoveMode::DONTWAKE).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(blocked_in_userfault(tid), "woken despite DONTWAKE");
    uffd.wake(addr, ps).unwrap();
    assert!(join_timeout(reader) == pattern(0, ps));
}

#[test]
fn move_of_a_hole() {
    let Some(uffd) = move_uffd() else { return };
    let hole = Region::new(MemoryType::Anonymous, 1).unwrap();
    let dst = Region::new(MemoryType::Anonymous, 1).unwrap();
    let ps = dst.page_size();
    uffd.register(dst.addr(), dst.len()).unwrap();
    let err = mv(&uffd, hole.ptr(), dst.ptr(), ps, MoveMode::empty()).unwrap_err();
    assert!(matches!(err, Error::MoveFailed(Errno::ENOENT)), "{err:?}");
    assert!(err.to_string().contains("ALLOW_SRC_HOLES"), "{err}");
    // Allowed, the hole counts as moved, and nothing is placed: the page is still missing.
    let done = mv(&uffd, hole.ptr(), dst.ptr(), ps, MoveMode::ALLOW_SRC_HOLES);
    assert_eq!(done.unwrap(), ps);
    let data = pattern(1, ps);
    // SAFETY: fills our test mapping.
    unsafe { uffd.copy(data.as_ptr().cast(), dst.addr(), ps, true) }.unwrap();
}

#[test]
fn move_onto_populated_pages_is_eexist_or_partial() {
    let Some(uffd) = move_uffd() else { return };
    let src = source(2);
    let dst = Region::new(MemoryType::Anonymous, 2).unwrap();
    let ps = dst.page_size();
    uffd.register(dst.addr(), dst.len()).unwrap();
    let data = pattern(9, ps);
    // SAFETY: populates page 1 of our test mapping.
    unsafe { uffd.copy(data.as_ptr().cast(), dst.page(1).cast(), ps, true) }.unwrap();

    let err = mv(&uffd, src.page(1), dst.page(1), ps, MoveMode::empty()).unwrap_err();
    assert!(matches!(err, Error::MoveFailed(Errno::EEXIST)), "{err:?}");
    assert!(resident(&src, 1), "a failed move must leave the source");

    let err = mv(&uffd, src.ptr(), dst.ptr(), 2 * ps, MoveMode::empty()).unwrap_err();
    assert!(
        matches!(err, Error::PartiallyCopied(n) if n == ps),
        "{err:?}"
    );
    assert!(dst.read_page(0) == pattern(0, ps));
    assert!(dst.read_page(1) == data);
    assert!(!resident(&src, 0) && resident(&src, 1));
}

/// A source page shared with a forked child (copy-on-write) cannot be moved.
#[test]
fn move_of_a_page_shared_with_a_child_is_ebusy() {
    let Some(uffd) = move_uffd() else { return };
    let src = source(1);
    let dst = Region::new(MemoryType::Anonymous, 1).unwrap();
    let ps = dst.page_size();
    uffd.register(dst.addr(), dst.len()).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    let r = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    let child = spawn_child(|_| {
        // SAFETY: closes the inherited write end, then blocks until the parent closes its own.
        unsafe {
            libc::close(pipe[1]);
            let mut byte = 0u8;
            libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
        }
        Ok(())
    });
    let result = mv(&uffd, src.ptr(), dst.ptr(), ps, MoveMode::empty());
    // SAFETY: closes both of our ends; the child sees end of file and exits.
    unsafe {
        libc::close(pipe[1]);
        libc::close(pipe[0]);
    }
    child.wait().assert_success();
    let err = result.unwrap_err();
    assert!(matches!(err, Error::MoveFailed(Errno::EBUSY)), "{err:?}");
    assert!(err.to_string().contains("not exclusively mapped"), "{err}");
    // With the child gone, the page is marked exclusive again at the next write fault (the
    // kernel reuses it instead of copying); then it moves.
    src.write_page(0, &pattern(0, ps));
    assert_eq!(
        mv(&uffd, src.ptr(), dst.ptr(), ps, MoveMode::empty()).unwrap(),
        ps
    );
    assert!(dst.read_page(0) == pattern(0, ps));
}

#[test]
fn move_into_shmem_or_hugetlb_is_einval() {
    if kernel_lacks(FeatureFlags::MOVE).is_some() {
        return;
    }
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::MOVE) else {
            continue;
        };
        let Some(dst) = Region::new(memory, 1) else {
            continue;
        };
        let src = source(dst.page_size() / 4096);
        uffd.register(dst.addr(), dst.len()).unwrap();
        let err = mv(&uffd, src.ptr(), dst.ptr(), dst.len(), MoveMode::empty()).unwrap_err();
        assert!(
            matches!(err, Error::MoveFailed(Errno::EINVAL)),
            "{memory:?}: {err:?}"
        );
        assert!(
            err.to_string().contains("only on private anonymous memory"),
            "{err}"
        );
    }
    // A destination not registered with this descriptor.
    let Some(uffd) = move_uffd() else { return };
    let src = source(1);
    let dst = Region::new(MemoryType::Anonymous, 1).unwrap();
    let err = mv(&uffd, src.ptr(), dst.ptr(), dst.len(), MoveMode::empty()).unwrap_err();
    assert!(matches!(err, Error::MoveFailed(Errno::EINVAL)), "{err:?}");
}
