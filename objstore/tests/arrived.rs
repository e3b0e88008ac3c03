//! The source reports its chunks as they arrive (`PageSource::arrivals`), so that a page
//! server with `place_arrived` places them before they are faulted on: a warm cache's
//! chunks as they are found intact, a working set's as they are fetched. On every memory
//! type, over a real nginx.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::nginx::Nginx;
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::{wait_until, write_snapshot, TempDir};
use userfaultfd_objstore::{open, ObjectSource, Options};

const MIB: u64 = 1 << 20;
const LEN: u64 = 8 * MIB;

fn options(memory: Memory) -> Options {
    let mut o = Options::default();
    o.page_size = memory.page_size();
    o.chunk_size = (1 << 20).max(memory.page_size());
    o.hedge_after = None;
    o
}

/// A restore into `memory` with `place_arrived` on; `None` when the machine lacks huge pages.
fn start(memory: Memory, source: &Arc<ObjectSource>) -> Option<Restore> {
    Restore::start_configured(memory, source.clone(), LEN as usize, 1, |b| {
        b.place_arrived(true);
    })
}

/// A warm restore with nothing touched: every chunk of the disk cache is placed as the
/// source finds it intact, without a fault or a request; then every byte reads right.
#[test]
fn a_warm_cache_is_placed_without_a_fault() {
    let Some(nginx) = Nginx::start() else { return };
    write_snapshot(&nginx.www().join("mem"), 31, LEN);
    for memory in Memory::ALL {
        let cache = TempDir::new("cache");
        let mut opts = options(memory);
        opts.cache_dir = Some(cache.path().to_path_buf());
        // Fill the cache.
        let source = open(&nginx.url("mem"), &opts).unwrap();
        let Some(r) = Restore::start_on(memory, source.clone(), LEN as usize, 1, None) else {
            break;
        };
        r.touch(
            &shuffled(LEN as usize / PAGE, 31),
            1,
            Duration::from_secs(60),
        )
        .unwrap();
        wait_until(|| source.complete(), || format!("{:?}", source.stats()));
        drop(r);
        drop(source);

        let source = open(&nginx.url("mem"), &opts).unwrap();
        let r = start(memory, &source).expect("huge pages were free for the first restore");
        let pages = LEN / memory.page_size() as u64;
        wait_until(
            || r.server().stats().background_pages >= pages,
            || format!("{memory:?}: {:?} {:?}", r.server().stats(), source.stats()),
        );
        let s = r.server().stats();
        assert_eq!(
            (s.faults, s.background_pages),
            (0, pages),
            "{memory:?}: {s:?}"
        );
        assert_eq!(r.mismatches(31), Vec::<usize>::new(), "{memory:?}");
        assert_eq!(
            r.server().stats().faults,
            0,
            "{memory:?}: read after placement"
        );
        let st = source.stats();
        assert_eq!(
            (st.requests, st.bytes_fetched),
            (0, 0),
            "{memory:?}: {st:?}"
        );
    }
}

/// A cold restore given a working set of two chunks, nothing touched: the prefetch fetches
/// them and they are placed as they arrive, whole, and nothing else (the fill's reads of
/// arrived chunks fetch nothing and read nothing ahead); no fault.
#[test]
fn a_working_set_is_placed_as_it_arrives() {
    let Some(nginx) = Nginx::start() else { return };
    write_snapshot(&nginx.www().join("mem"), 32, LEN);
    for memory in Memory::ALL {
        let mut opts = options(memory);
        let chunk = opts.chunk_size as u64;
        // One page in chunk 0 and one in chunk 2: their chunks are fetched whole. (A fetch
        // in chunk 0 is where a sequential restore starts: a read-ahead would follow it.)
        opts.working_set = vec![PAGE as u64, 2 * chunk];
        let source = open(&nginx.url("mem"), &opts).unwrap();
        let Some(r) = start(memory, &source) else {
            break;
        };
        let want = 2 * chunk / memory.page_size() as u64;
        wait_until(
            || r.server().stats().background_pages >= want,
            || format!("{memory:?}: {:?} {:?}", r.server().stats(), source.stats()),
        );
        // Only those: the fill's reads of arrived chunks do not read ahead.
        std::thread::sleep(Duration::from_millis(50));
        let s = r.server().stats();
        assert_eq!(
            (s.faults, s.background_pages),
            (0, want),
            "{memory:?}: {s:?}"
        );
        assert_eq!(
            source.stats().chunks_fetched,
            2,
            "{memory:?}: {:?}",
            source.stats()
        );
        for k in [0, 2] {
            // Placed whole: the source dropped them (`PageSource::placed`).
            wait_until(
                || !source.arrived(k * chunk),
                || format!("{memory:?}: chunk {k} kept: {:?}", source.stats()),
            );
        }
        assert_eq!(r.mismatches(32), Vec::<usize>::new(), "{memory:?}");
    }
}
