//! The source drops a chunk's bytes once the page server has placed every page of it
//! (`PageSource::placed`), so a restore does not hold the guest's memory twice; a page of a
//! dropped chunk asked for again (a duplicate fault, a discard the server was not told of)
//! is answered with zeros, never fetched again.

mod support;

use std::time::Duration;

use support::nginx::Nginx;
use support::restore::{shuffled, Restore, PAGE};
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
/// ends in a partial page (the object's length is not a multiple of the page size), and is
/// dropped once that page too is reported. A count that took a report's length rather than
/// the pages it newly marked would drop chunks early, or twice, or never.
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
        (4, 4 * MIB),
        "chunk 4's partial page is not reported yet: {stats:?}"
    );
    assert!((0..4).all(|k| !source.arrived(k * MIB)));
    assert!(source.arrived(4 * MIB) && source.arrived(whole));
    // The partial page (a report of its whole page), twice: chunk 4 is dropped, once.
    source.placed(whole, PAGE);
    source.placed(4 * MIB, MIB as usize);
    let stats = source.stats();
    assert_eq!(
        (stats.chunks_released, stats.bytes_released),
        (5, 4 * MIB + 129 * PAGE as u64),
        "{stats:?}"
    );
    assert!(!source.arrived(whole));
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
