//! `ServerBuilder::place_arrived`: the bytes a source reports arrived (`PageSource::arrivals`)
//! are placed before they are touched, only those (whole pages of the ranges reported), never
//! over a page the process discarded; a stopped server drops later reports; with the
//! background fill on, the source is not asked for its arrivals. On every memory type, with
//! a source that never blocks (the workers take the fill's placements) and one that may (the
//! reader does).

mod support;

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::serve::{discard, mismatches, serve_uffd, snapshot, zero_page, TestSource};
use support::{wait_until_showing, MemoryType, Region};
use userfaultfd::serve::{Arrivals, Chunk, PageSource, Region as Served, Server, ServerBuilder};
use userfaultfd::RegisterMode;

/// A test source that reports `held` when the server asks for its arrivals, and keeps the
/// handle for the test to report more.
struct Arriving {
    inner: TestSource,
    held: Range<u64>,
    handle: Mutex<Option<Arrivals>>,
    /// Source offsets `fetch_held` fails with an error for.
    held_fails: Range<u64>,
    /// Source offsets `fetch_held` says it no longer holds (`None`).
    held_gone: Range<u64>,
}

impl Arriving {
    fn new(bytes: Vec<u8>, page_size: usize, never_blocks: bool, held: Range<u64>) -> Arriving {
        let mut inner = TestSource::new(bytes, page_size);
        inner.never_blocks = never_blocks;
        Arriving {
            inner,
            held,
            handle: Mutex::new(None),
            held_fails: 0..0,
            held_gone: 0..0,
        }
    }

    /// Reports `[offset, offset + len)` arrived through the server's handle.
    fn arrive(&self, offset: u64, len: u64) {
        let handle = self.handle.lock().unwrap();
        handle
            .as_ref()
            .expect("the server asked for the arrivals")
            .arrived(offset, len);
    }

    fn handle(&self) -> Option<Arrivals> {
        self.handle.lock().unwrap().clone()
    }
}

impl PageSource for Arriving {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn never_blocks(&self) -> bool {
        self.inner.never_blocks()
    }

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Chunk<'a>> {
        self.inner.fetch(offset, len, scratch)
    }

    fn fetch_held<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Option<Chunk<'a>>> {
        let end = (offset + len as u64).min(self.inner.len());
        let hits = |r: &Range<u64>| offset < r.end && r.start < end;
        if hits(&self.held_fails) {
            return Err(io::Error::other("injected failure of fetch_held"));
        }
        if hits(&self.held_gone) {
            return Ok(None);
        }
        self.inner.fetch(offset, len, scratch).map(Some)
    }

    fn placed(&self, offset: u64, len: usize) {
        self.inner.placed(offset, len);
    }

    fn arrivals(&self, arrivals: Arrivals) {
        arrivals.arrived(self.held.start, self.held.end - self.held.start);
        *self.handle.lock().unwrap() = Some(arrivals);
    }
}

fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 8,
        _ => 256,
    }
}

/// A server with `place_arrived` (and `configure`'s settings) over a fresh region of
/// `memory`, from the source `make` builds over the test snapshot (its bytes, page size and
/// page count); `None` to skip (the reason printed).
fn serve_arriving(
    memory: MemoryType,
    configure: impl FnOnce(&mut ServerBuilder),
    make: impl FnOnce(Vec<u8>, usize, usize) -> Arriving,
) -> Option<(Region, Vec<u8>, Arc<Arriving>, Server)> {
    let uffd = serve_uffd(memory, RegisterMode::MISSING)?;
    let region = Region::new(memory, pages_for(memory))?;
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = snapshot(pages, ps);
    let source = Arc::new(make(expected.clone(), ps, pages));
    let mut builder = Server::builder();
    builder
        .place_arrived(true)
        .region(Served::new(region.addr(), region.len()).page_size(ps));
    configure(&mut builder);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe { builder.start(uffd, source.clone()) }.unwrap();
    Some((region, expected, source, server))
}

/// The quarter the source holds at start and the quarter reported after it are placed
/// before anything is touched (no fault); a range that covers a page in part leaves that
/// page; nothing else is placed; then every page reads right.
#[test]
fn arrived_bytes_are_placed_before_they_are_touched() {
    for memory in MemoryType::ALL {
        for never_blocks in [true, false] {
            // The source holds the first quarter at start.
            let Some((region, expected, source, server)) = serve_arriving(
                memory,
                |_| {},
                |bytes, ps, pages| {
                    let q = (pages / 4 * ps) as u64;
                    Arriving::new(bytes, ps, never_blocks, 0..q)
                },
            ) else {
                break;
            };
            let (ps, pages) = (region.page_size(), region.pages());
            let q = (pages / 4) as u64 * ps as u64;
            let what = format!("{memory:?}, never_blocks {never_blocks}");
            // The second quarter, in two reports; then the third quarter's pages but its
            // first and last one only in part.
            source.arrive(q, q / 2);
            source.arrive(q + q / 2, q / 2);
            source.arrive(2 * q + 1, q - 2);
            let want: Vec<usize> = (0..pages / 2)
                .chain(pages / 2 + 1..3 * pages / 4 - 1)
                .collect();
            // (Zero pages are placed as zeros, which the source is not told of; a placement
            // is counted before the source is told.)
            let data: Vec<usize> = want.iter().copied().filter(|&p| !zero_page(p)).collect();
            // Zero pages too: counted, not told.
            wait_until_showing(
                || {
                    source.inner.reported() == data
                        && server.stats().background_pages >= want.len() as u64
                },
                || {
                    let told = source.inner.reported();
                    format!("{what}: told {told:?}, {:?}", server.stats())
                },
            );
            // A moment for anything placed beyond them to show.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(source.inner.reported(), data, "{what}");
            assert_eq!(
                server.stats().background_pages,
                want.len() as u64,
                "{what}: {:?}",
                server.stats()
            );
            let bad = mismatches(&region, &expected, want.iter().copied());
            assert!(bad.is_empty(), "{what}: pages {bad:?} differ");
            assert_eq!(server.stats().faults, 0, "{what}: {:?}", server.stats());
            // The rest is served by faults.
            let bad = mismatches(&region, &expected, 0..pages);
            let s = server.stop().stats;
            assert!(bad.is_empty(), "{what}: pages {bad:?} differ");
            assert!(s.faults > 0, "{what}: {s:?}");
            assert_eq!(
                source
                    .inner
                    .bad_reports
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
        }
    }
}

/// Pages the process discarded (a balloon's) are not placed when they arrive: they stay
/// free, and read as zeros when touched.
#[test]
fn discarded_pages_are_not_placed_when_they_arrive() {
    for memory in MemoryType::ALL {
        let Some((region, expected, source, server)) = serve_arriving(
            memory,
            |_| {},
            |bytes, ps, _| Arriving::new(bytes, ps, false, 0..0),
        ) else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        // Discard pages 1..3 before they arrive: the madvise returns once the server has
        // read its event.
        discard(&region, 1, 2);
        source.arrive(0, (pages * ps) as u64);
        let data: Vec<usize> = (0..pages)
            .filter(|&p| !(1..3).contains(&p) && !zero_page(p))
            .collect();
        wait_until_showing(
            || {
                source.inner.reported() == data
                    && server.stats().background_pages >= pages as u64 - 2
            },
            || {
                let told = source.inner.reported();
                format!("{memory:?}: told {told:?}, {:?}", server.stats())
            },
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(source.inner.reported(), data, "{memory:?}");
        let s = server.stats();
        assert_eq!(s.background_pages, pages as u64 - 2, "{memory:?}: {s:?}");
        let mut want = expected.clone();
        want[ps..3 * ps].fill(0);
        let bad = mismatches(&region, &want, 0..pages);
        let s = server.stop().stats;
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        assert!(s.removed_pages >= 2, "{memory:?}: {s:?}");
    }
}

/// A stopped server closes the handle (reports are dropped); with the background fill on,
/// the source is not asked for its arrivals (the fill places everything anyway).
#[test]
fn a_stopped_server_closes_the_handle_and_the_fill_needs_none() {
    let memory = MemoryType::Anonymous;
    let region = Region::new(memory, 64).unwrap();
    let ps = region.page_size();
    let expected = snapshot(64, ps);
    for fill in [false, true] {
        let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
        let source = Arc::new(Arriving::new(expected.clone(), ps, false, 0..0));
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .place_arrived(true)
                .background_fill(fill)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, source.clone())
        }
        .unwrap();
        let handle = source.handle();
        assert_eq!(handle.is_none(), fill, "fill {fill}");
        let _ = server.stop();
        if let Some(handle) = handle {
            assert!(handle.is_closed());
            handle.arrived(0, ps as u64); // dropped, no panic
            assert!(format!("{handle:?}").contains("pending: 0"), "{handle:?}");
        }
    }
}

/// What the source cannot answer when the fill asks (`fetch_held` fails, or no longer holds
/// the bytes) is left to the faults: the server keeps running, places everything else, and
/// the faults then get those pages from `fetch`.
#[test]
fn what_the_source_no_longer_holds_is_left_to_the_faults() {
    for memory in MemoryType::ALL {
        let configure = |b: &mut ServerBuilder| {
            b.fault_around(memory.page_size());
        };
        let Some((region, expected, source, server)) =
            serve_arriving(memory, configure, |bytes, ps, pages| {
                let mut source = Arriving::new(bytes, ps, false, 0..0);
                // The second quarter fails, the last one is gone: one fault-around block
                // or more each, so that the blocks around them are placed.
                let q = (pages / 4 * ps) as u64;
                source.held_fails = q..2 * q;
                source.held_gone = 3 * q..4 * q;
                source
            })
        else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        source.arrive(0, (pages * ps) as u64);
        let placed = pages as u64 / 2;
        wait_until_showing(
            || server.stats().background_pages >= placed,
            || format!("{memory:?}: {:?}", server.stats()),
        );
        std::thread::sleep(Duration::from_millis(20));
        let s = server.stats();
        assert_eq!(s.background_pages, placed, "{memory:?}: {s:?}");
        assert!(
            server.outcome().is_none(),
            "{memory:?}: {:?}",
            server.outcome()
        );
        let bad = mismatches(&region, &expected, 0..pages);
        let s = server.stop().stats;
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        assert_eq!(s.faults, placed, "{memory:?}: one per page left: {s:?}");
    }
}
