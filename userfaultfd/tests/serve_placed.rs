//! `PageSource::placed`: the server tells the source which of its bytes it placed (or found
//! present), on every memory type, with one worker or several placing overlapping blocks; it
//! reports nothing it placed as zeros (the source's `Chunk::Zeros`, a discarded page placed
//! again), and nothing outside the source.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use support::serve::{mismatches, serve_uffd, snapshot, zero_page, TestSource};
use support::{join_timeout, spawn_named, wait_until, MemoryType, Region};
use userfaultfd::serve::{Region as Served, Server};
use userfaultfd::RegisterMode;

fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 8,
        _ => 256,
    }
}

/// Every page the source answered with data is reported, and no other: zero pages (which
/// the test source answers as `Chunk::Zeros`) are not.
#[test]
fn placed_pages_are_reported() {
    for memory in MemoryType::ALL {
        for workers in [1, 3] {
            let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
                continue;
            };
            let Some(region) = Region::new(memory, pages_for(memory)) else {
                continue;
            };
            let region = Arc::new(region);
            let (ps, pages) = (region.page_size(), region.pages());
            let expected = Arc::new(snapshot(pages, ps));
            let source = Arc::new(TestSource::new(expected.to_vec(), ps));
            // SAFETY: the test region holds no Rust object.
            let server = unsafe {
                Server::builder()
                    .workers(workers)
                    .fault_around(4 * ps)
                    .region(Served::new(region.addr(), region.len()).page_size(ps))
                    .start(uffd, source.clone())
            }
            .unwrap();
            // Three threads touching every page, from three starting points: their blocks
            // overlap, and with several workers some are placed twice (EEXIST).
            let readers: Vec<_> = (0..3)
                .map(|t| {
                    let (region, expected) = (Arc::clone(&region), Arc::clone(&expected));
                    spawn_named("faulting", move || {
                        let order = (0..pages).map(move |i| (i + t * pages / 3) % pages);
                        mismatches(&region, &expected, order)
                    })
                })
                .collect();
            for r in readers {
                assert_eq!(join_timeout(r), Vec::<usize>::new(), "{memory:?}");
            }
            server.stop();
            let data: Vec<usize> = (0..pages).filter(|&p| !zero_page(p)).collect();
            assert_eq!(
                source.reported(),
                data,
                "{memory:?}, {workers} workers: the pages reported placed"
            );
            assert_eq!(source.bad_reports.load(Ordering::Relaxed), 0, "{memory:?}");
        }
    }
}

/// A page the process discarded (`MADV_DONTNEED`, read as a `REMOVE` event) faults again and
/// is placed as zeros: not reported a second time.
#[test]
fn a_discarded_page_placed_again_is_not_reported_again() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 16).unwrap());
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = Arc::new(snapshot(pages, ps));
    let source = Arc::new(TestSource::new(expected.to_vec(), ps));
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(0)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, source.clone())
    }
    .unwrap();
    let page = 5;
    assert!(!zero_page(page));
    let r = Arc::clone(&region);
    let e = Arc::clone(&expected);
    let wrong = join_timeout(spawn_named("faulting", move || {
        mismatches(&r, &e, page..page + 1)
    }));
    assert_eq!(wrong, Vec::<usize>::new());
    // The copy wakes the faulting thread before the server reports the page placed.
    wait_until(
        || source.placed[page].load(Ordering::Relaxed) == 1,
        "the first placement's report",
    );
    // SAFETY: discards one page of our own mapping (the kernel waits for the server to read
    // the REMOVE event before it returns).
    let rc = unsafe { libc::madvise(region.page(page).cast(), ps, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    let r = Arc::clone(&region);
    let zeros = join_timeout(spawn_named("faulting", move || {
        // SAFETY: the page is in our mapping; the read faults and is answered.
        let bytes = unsafe { std::slice::from_raw_parts(r.page(page), ps) };
        bytes.iter().all(|&b| b == 0)
    }));
    assert!(zeros, "a discarded page reads as zeros");
    server.stop();
    assert_eq!(source.placed[page].load(Ordering::Relaxed), 1);
    assert_eq!(source.reported(), vec![page]);
}
