//! The source drops a chunk's bytes once the page server has placed every page of it
//! (`PageSource::placed`), so a restore does not hold the guest's memory twice; a page of a
//! dropped chunk asked for again (a duplicate fault, a discard the server was not told of)
//! is answered with zeros, never fetched again.

mod support;

use std::time::Duration;

use support::nginx::Nginx;
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::{wait_until, write_snapshot};
use userfaultfd::serve::{Chunk, PageSource};
use userfaultfd_objstore::{open, Options};

const MIB: u64 = 1 << 20;

fn options() -> Options {
    let mut o = Options::default();
    o.chunk_size = 1 << 20;
    o.parallelism = 4;
    o.hedge_after = None;
    o.deadline = Duration::from_secs(60);
    o
}

/// The bytes of page `offset` as the source answers them now.
fn fetch_page(source: &dyn PageSource, offset: u64) -> Vec<u8> {
    let mut scratch = vec![0u8; PAGE];
    match source.fetch(offset, PAGE, &mut scratch).unwrap() {
        Chunk::Data(d) => d[..PAGE].to_vec(),
        Chunk::Zeros(_) => panic!("zeros"),
    }
}

#[test]
fn chunks_placed_whole_are_dropped() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 21, len);
    let source = open(&nginx.url("mem"), &options()).unwrap();
    // Two workers and two touching threads: duplicate faults, overlapping blocks.
    let restore = Restore::start(source.clone(), len as usize, 2);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 21),
            2,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(restore.mismatches(21), Vec::<usize>::new());
    // The last placements are reported just after their faulting threads were woken.
    wait_until(
        || source.stats().chunks_released >= 16,
        || format!("{:?}", source.stats()),
    );
    let stats = source.stats();
    assert_eq!((stats.chunks_released, stats.bytes_released), (16, len));
    assert_eq!(
        stats.chunks_fetched, 16,
        "a dropped chunk was fetched again: {stats:?}"
    );
    let kept: Vec<u64> = (0..16).filter(|&k| source.arrived(k * MIB)).collect();
    assert!(
        kept.is_empty(),
        "chunks {kept:?} read as arrived: {stats:?}"
    );
    assert!(source.complete(), "every chunk arrived (and was dropped)");
    // Asked again (a duplicate fault): zeros, no request.
    let mut scratch = vec![0u8; 2 * PAGE];
    match source.fetch(5 * MIB, 2 * PAGE, &mut scratch).unwrap() {
        Chunk::Zeros(n) => assert_eq!(n, 2 * PAGE),
        Chunk::Data(_) => panic!("data from a dropped chunk"),
    }
    let after = source.stats();
    assert_eq!(after.requests, stats.requests, "{after:?}");
    assert_eq!(after.asked_after_release, stats.asked_after_release + 1);
    // The restored memory is untouched by all this.
    assert_eq!(restore.mismatches(21), Vec::<usize>::new());
}

/// An object whose length is not a whole number of pages, restored by a page server over
/// its whole pages (the most a region can cover), on every memory type (hugetlbfs: 2 MiB
/// pages and chunks, the last chunk only the cut page): every chunk fetched is dropped,
/// the last one too, though its cut last page is never placed.
#[test]
fn the_last_chunk_is_dropped_though_its_last_page_is_cut() {
    let Some(nginx) = Nginx::start() else { return };
    for memory in Memory::ALL {
        let page = memory.page_size();
        let mut opts = options();
        opts.page_size = page;
        opts.chunk_size = opts.chunk_size.max(page);
        let chunk = opts.chunk_size as u64;
        // Three whole chunks, then half a chunk of whole pages (none of 2 MiB ones) and a
        // page cut 100 bytes in.
        let len = 3 * chunk + (chunk / page as u64 / 2) * page as u64 + 100;
        write_snapshot(&nginx.www().join("mem"), 24, len);
        let whole = (len as usize / page) * page;
        let placeable_chunks = (whole as u64).div_ceil(chunk);
        let source = open(&nginx.url("mem"), &opts).unwrap();
        let Some(restore) = Restore::start_on(memory, source.clone(), whole, 2, None) else {
            break;
        };
        restore
            .touch(&shuffled(whole / PAGE, 24), 2, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
        assert_eq!(restore.mismatches(24), Vec::<usize>::new(), "{memory:?}");
        // The chunk of only the cut page is fetched if read-ahead asked for it, and dropped
        // as soon as it arrives (nothing of it can be placed).
        wait_until(
            || {
                let s = source.stats();
                s.chunks_released >= placeable_chunks && s.chunks_released == s.chunks_fetched
            },
            || format!("{memory:?}: chunks kept: {:?}", source.stats()),
        );
        assert!(
            (0..=len / chunk).all(|k| !source.arrived(k * chunk)),
            "{memory:?}: {:?}",
            source.stats()
        );
    }
}

/// Without a page server (nothing reported placed), nothing is dropped; reports of ranges
/// outside the object or of partial pages are ignored.
#[test]
fn nothing_is_dropped_unless_placed_whole() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 4 * MIB;
    write_snapshot(&nginx.www().join("mem"), 22, len);
    let source = open(&nginx.url("mem"), &options()).unwrap();
    for k in 0..4 {
        fetch_page(&*source, k * MIB);
    }
    wait_until(|| source.complete(), || format!("{:?}", source.stats()));
    // Chunk 0 placed but its last page; chunk 1 by halves, the second one partial; then
    // ranges past the end.
    source.placed(0, MIB as usize - PAGE);
    source.placed(MIB, MIB as usize / 2);
    source.placed(MIB + MIB / 2 + 1, MIB as usize / 2 - 1);
    source.placed(len, PAGE);
    source.placed(u64::MAX - 5, 10);
    assert_eq!(source.stats().chunks_released, 0);
    assert!((0..4).all(|k| source.arrived(k * MIB)));
    // The rest of chunk 0: dropped.
    source.placed(MIB - PAGE as u64, PAGE);
    assert_eq!(source.stats().chunks_released, 1);
    assert!(!source.arrived(0) && source.arrived(MIB));
    // With `release_placed` off, a chunk placed whole stays.
    let mut opts = options();
    opts.release_placed = false;
    let kept = open(&nginx.url("mem"), &opts).unwrap();
    fetch_page(&*kept, 0);
    wait_until(
        || kept.arrived(MIB - PAGE as u64),
        || format!("{:?}", kept.stats()),
    );
    kept.placed(0, MIB as usize);
    assert_eq!(kept.stats().chunks_released, 0);
    assert!(kept.arrived(0));
}

/// Reports that repeat, overlap, come from several threads at once, or cover several chunks
/// (a 2 MiB page of a hugetlbfs region over a source of 4 KiB pages) drop each chunk exactly
/// once, when its last page is first reported; the last chunk is shorter than the others and
/// ends in a partial page (the object's length is not a multiple of the page size), which no
/// page server can place (a region lies inside its source): that chunk is dropped once its
/// whole pages are reported, and a report of the partial page changes nothing. A count that
/// took a report's length rather than the pages it newly marked would drop chunks early, or
/// twice, or never; one that waited for the partial page would keep the last chunk for ever.
#[test]
fn each_chunk_is_dropped_once_whatever_the_reports() {
    let Some(nginx) = Nginx::start() else { return };
    // Chunks of 1 MiB: 0..=3 whole, 4 of 128 whole pages and a partial one.
    let len = 4 * MIB + MIB / 2 + 100;
    write_snapshot(&nginx.www().join("mem"), 23, len);
    let source = open(&nginx.url("mem"), &options()).unwrap();
    for k in 0..5 {
        fetch_page(&*source, k * MIB);
    }
    wait_until(|| source.complete(), || format!("{:?}", source.stats()));
    // The partial page's offset.
    let whole = (len / PAGE as u64) * PAGE as u64;
    // Four threads report chunks 0..=3 and the whole pages of chunk 4, each in its own
    // pieces (a page at a time, 2 MiB at a time across two chunks, 64 KiB blocks, all of it
    // at once), overlapping each other's and themselves.
    let reporters: Vec<_> = (0..4u64)
        .map(|t| {
            let source = source.clone();
            std::thread::spawn(move || {
                let step = [PAGE as u64, 2 * MIB, 64 << 10, whole][t as usize];
                for _ in 0..3 {
                    let mut at = (t * PAGE as u64 * 7) % step;
                    at -= at % PAGE as u64;
                    while at < whole {
                        let n = step.min(whole - at);
                        source.placed(at, n as usize);
                        at += n;
                    }
                    source.placed(0, whole as usize);
                }
            })
        })
        .collect();
    for r in reporters {
        r.join().unwrap();
    }
    let stats = source.stats();
    assert_eq!(
        (stats.chunks_released, stats.bytes_released),
        (5, 4 * MIB + 129 * PAGE as u64),
        "chunk 4 without its partial page: {stats:?}"
    );
    assert!((0..5).all(|k| !source.arrived(k * MIB)));
    assert!(!source.arrived(whole));
    // The partial page (a report of its whole page), and chunk 4 again: nothing more.
    source.placed(whole, PAGE);
    source.placed(4 * MIB, MIB as usize);
    assert_eq!(source.stats(), stats);
    assert_eq!(stats.chunks_fetched, 5, "{stats:?}");
    // Asked again: zeros up to the end of the chunk, no request.
    let mut scratch = vec![0u8; 4 * PAGE];
    match source
        .fetch(whole - PAGE as u64, 4 * PAGE, &mut scratch)
        .unwrap()
    {
        Chunk::Zeros(n) => assert_eq!(n, 2 * PAGE),
        Chunk::Data(_) => panic!("data from a dropped chunk"),
    }
    assert_eq!(source.stats().requests, stats.requests);
}
