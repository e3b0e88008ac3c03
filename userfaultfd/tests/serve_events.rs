//! The page server and non-cooperative events: discarded pages read as zeros afterwards
//! (never the source's stale contents), on every memory type and both CONTINUE mappings;
//! unmapped ranges stop being served; moved ranges are served at their new address; a
//! placement that meets a pending event reads it first, then retries.

mod support;

use std::sync::Arc;

use support::serve::{mismatches, serve_uffd, snapshot, Gate, TestSource};
use support::{join_timeout, spawn_named, MemoryType, Region};
use userfaultfd::serve::{Backend, Region as Served, Server, Zeros};
use userfaultfd::RegisterMode;

fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 4,
        _ => 256,
    }
}

/// Discards `[first, first + n)` pages of `region` with `advice`.
fn discard(region: &Region, first: usize, n: usize, advice: libc::c_int) {
    // SAFETY: discards pages of our own test mapping.
    let r = unsafe { libc::madvise(region.page(first).cast(), n * region.page_size(), advice) };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
}

/// `expected` with pages `[first, first + n)` zeroed.
fn zeroed(mut expected: Vec<u8>, ps: usize, first: usize, n: usize) -> Vec<u8> {
    expected[first * ps..(first + n) * ps].fill(0);
    expected
}

#[test]
fn discarded_pages_read_as_zeros_on_every_memory_type() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = snapshot(pages, ps);
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(4 * ps)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(TestSource::new(expected.clone(), ps)))
        }
        .unwrap();
        // Place the first half, then discard a placed page and an unplaced one.
        assert!(mismatches(&region, &expected, 0..pages / 2).is_empty());
        // Anonymous memory forgets on DONTNEED; shared memory only on REMOVE (a hole).
        let advice = if memory == MemoryType::Anonymous {
            libc::MADV_DONTNEED
        } else {
            libc::MADV_REMOVE
        };
        let (placed, unplaced) = (1, pages - 1);
        discard(&region, placed, 1, advice);
        discard(&region, unplaced, 1, advice);
        let want = zeroed(zeroed(expected, ps, placed, 1), ps, unplaced, 1);
        let bad = mismatches(&region, &want, 0..pages);
        let s = server.stop().stats;
        assert!(
            bad.is_empty(),
            "{memory:?}: pages {bad:?} differ (stale after discard?)"
        );
        assert!(s.removed_pages >= 2 && s.events >= 2, "{memory:?}: {s:?}");
    }
}

/// CONTINUE backend: what a discard means depends on the mapping (see `Backend::Continue`).
#[test]
fn continue_backend_discards() {
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        for (private, advice) in [
            (false, libc::MADV_DONTNEED),
            (false, libc::MADV_REMOVE),
            (true, libc::MADV_DONTNEED),
        ] {
            let Some(uffd) = serve_uffd(memory, RegisterMode::MINOR | RegisterMode::MISSING) else {
                return;
            };
            let Some(file_region) = Region::new(memory, pages_for(memory)) else {
                return;
            };
            let (ps, pages) = (file_region.page_size(), file_region.pages());
            let expected = snapshot(pages, ps);
            let view = file_region.second_view();
            for i in 0..pages {
                view.write_page(i, &expected[i * ps..(i + 1) * ps]);
            }
            let region = if private {
                let Some(view) = file_region.private_view() else {
                    return;
                };
                view
            } else {
                file_region.second_view()
            };
            // SAFETY: the test region holds no Rust object.
            let server = unsafe {
                Server::builder()
                    .region(
                        Served::new(region.addr(), region.len())
                            .page_size(ps)
                            .backend(Backend::Continue { private }),
                    )
                    .start(uffd, Arc::new(Zeros::new(0)))
            }
            .unwrap();
            assert!(mismatches(&region, &expected, 0..pages).is_empty());
            discard(&region, 1, 1, advice);
            // Shared + DONTNEED: the mapping is the file, which still holds the page.
            let want = if !private && advice == libc::MADV_DONTNEED {
                expected.clone()
            } else {
                zeroed(expected.clone(), ps, 1, 1)
            };
            let bad = mismatches(&region, &want, 0..pages);
            let s = server.stop().stats;
            assert!(
                bad.is_empty(),
                "{memory:?} private={private} advice={advice}: pages {bad:?} differ; {s:?}"
            );
        }
    }
}

#[test]
fn unmapped_ranges_stop_being_served() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let mut region = Region::new(memory, 256).unwrap();
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = snapshot(pages, ps);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(16 * ps)
            .background_fill(true)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(TestSource::new(expected.clone(), ps)))
    }
    .unwrap();
    // SAFETY: unmaps the middle of our own test mapping.
    assert_eq!(unsafe { libc::munmap(region.page(64).cast(), 64 * ps) }, 0);
    let bad = mismatches(&region, &expected, (0..64).chain(128..pages));
    let finished = server.stop();
    assert!(bad.is_empty(), "pages {bad:?} differ");
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    assert!(finished.stats.events >= 1, "{:?}", finished.stats);
    drop(finished); // its descriptor would make the munmaps below wait for readers
                    // SAFETY: the two remaining parts of our mapping.
    unsafe {
        libc::munmap(region.addr(), 64 * ps);
        libc::munmap(region.page(128).cast(), (pages - 128) * ps);
    }
    region.forget_mapping();
}

#[test]
fn moved_ranges_are_served_at_their_new_address() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Region::new(memory, 256).unwrap();
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = snapshot(pages, ps);
    let target = Region::new(memory, 64).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(16 * ps)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(TestSource::new(expected.clone(), ps)))
    }
    .unwrap();
    // Place a few pages of the range to move, then move it (placed and missing pages).
    assert!(mismatches(&region, &expected, 100..101).is_empty());
    // SAFETY: moves pages 96..160 of our mapping over our other test mapping.
    let moved = unsafe {
        libc::mremap(
            region.page(96).cast(),
            64 * ps,
            64 * ps,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target.addr(),
        )
    };
    assert_eq!(
        moved,
        target.addr(),
        "mremap: {}",
        std::io::Error::last_os_error()
    );
    let bad_moved = mismatches(&target, &expected[96 * ps..160 * ps], 0..64);
    let bad_rest = mismatches(&region, &expected, (0..96).chain(160..pages));
    let s = server.stop().stats;
    assert!(bad_moved.is_empty(), "moved pages {bad_moved:?} differ");
    assert!(bad_rest.is_empty(), "pages {bad_rest:?} differ");
    assert!(s.events >= 1, "{s:?}");
    // What is left of the region (its drop would unmap the hole too, and whatever another
    // test mapped there since).
    let mut region = region;
    // SAFETY: the two parts of our mapping still mapped.
    unsafe {
        libc::munmap(region.addr(), 96 * ps);
        libc::munmap(region.page(160).cast(), (pages - 160) * ps);
    }
    region.forget_mapping();
}

/// A `REMOVE` of a page of a block whose fetch is held. A worker that reads and serves
/// itself (a source that never blocks) is held in the fetch: the event stays pending, the
/// placement meets it (`EAGAIN`, nothing done), reads it, marks the page discarded, and
/// retries. With a reader thread (a source that may block), the event is read at once (the
/// `madvise` returns while the fetch is held) and the placement sees the mark. Either way the
/// discarded page gets zeros, the rest the source.
#[test]
fn pending_event_is_read_before_the_retry() {
    pending_event(true);
    pending_event(false);
}

fn pending_event(never_blocks: bool) {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let watcher = uffd.try_clone().unwrap();
    let region = Arc::new(Region::new(memory, 64).unwrap());
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = snapshot(pages, ps);
    let gate = Arc::new(Gate::default());
    let mut source = TestSource::new(expected.clone(), ps);
    source.gate = Some(Arc::clone(&gate));
    source.never_blocks = never_blocks;
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    // A fault whose block (all 64 pages) is held in the source...
    let reader = {
        let region = Arc::clone(&region);
        let expected = expected.clone();
        spawn_named("faulting", move || mismatches(&region, &expected, 0..1))
    };
    gate.wait_entered();
    // ... while page 5 of that block is discarded: the madvise waits for its event to be read.
    let discarder = {
        let region = Arc::clone(&region);
        spawn_named("discarding", move || {
            discard(&region, 5, 1, libc::MADV_DONTNEED)
        })
    };
    let discarder = if never_blocks {
        // Pending until the worker, held in the fetch, meets it.
        support::wait_readable(&watcher);
        Some(discarder)
    } else {
        // Read by the reader thread while the fetch is held.
        join_timeout(discarder);
        None
    };
    // Closed before the region is unmapped: an open copy of the descriptor would make that
    // munmap wait for a reader of its UNMAP event.
    drop(watcher);
    gate.open();
    assert!(join_timeout(reader).is_empty());
    discarder.map(join_timeout);
    let want = zeroed(expected, ps, 5, 1);
    let bad = mismatches(&region, &want, 0..pages);
    let s = server.stop().stats;
    assert!(
        bad.is_empty(),
        "never_blocks {never_blocks}: pages {bad:?} differ"
    );
    assert_eq!(s.removed_pages, 1, "{s:?}");
    if never_blocks {
        assert!(s.eagain_retries >= 1, "{s:?}");
    }
}
