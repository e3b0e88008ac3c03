//! The page server allocates nothing per served fault after start-up: a counting global
//! allocator, switched on for the whole process (this file has one test, so no other test
//! thread runs), counts the allocations made while N and then 2N faults are served, one page
//! per fault, with the events path (REMOVE) exercised too, and the working-set recording
//! on; the count is zero.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use support::serve::{mismatches, serve_uffd, snapshot, TestSource};
use support::{MemoryType, Region};
use userfaultfd::serve::{Region as Served, Server};
use userfaultfd::RegisterMode;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (all threads) while `f` runs.
fn counted(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Relaxed);
    COUNTING.store(true, Relaxed);
    f();
    COUNTING.store(false, Relaxed);
    ALLOCATIONS.load(Relaxed) - before
}

/// Waits until `n` server threads sleep: in `poll` (a thread that reads the messages) or on
/// a futex (a fetch worker waiting for a fault).
fn wait_workers_polling(n: usize) {
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    loop {
        let polling = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let wchan = std::fs::read_to_string(t.join("wchan")).ok()?;
                let idle = wchan.contains("poll") || wchan.contains("futex");
                (comm.starts_with("uffd-serve-") && idle).then_some(())
            })
            .count();
        if polling >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{polling} of {n} workers polling"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn serving_faults_allocates_nothing() {
    // The counter counts (so zero below means zero).
    assert!(counted(|| drop(std::hint::black_box(vec![1u8; 10]))) > 0);
    // Workers that read and serve (a source that never blocks), then a reader handing the
    // faults to fetch workers (the test source may block).
    serve_counting(true);
    serve_counting(false);
}

fn serve_counting(never_blocks: bool) {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 512).unwrap());
    let ps = region.page_size();
    let expected = snapshot(region.pages(), ps);
    let mut source = TestSource::new(expected.clone(), ps);
    source.never_blocks = never_blocks;
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(2)
            .fault_around(0) // one page per fault: as many faults as pages
            .record(true)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    // Warm up: the first faults, and one REMOVE event; and every worker started (a thread's
    // start-up allocates) and waiting in poll.
    assert!(mismatches(&region, &expected, 0..16).is_empty());
    // Two workers, and the reader when the source may block.
    wait_workers_polling(if never_blocks { 2 } else { 3 });
    let read = |pages: std::ops::Range<usize>| {
        for p in pages {
            // SAFETY: a byte of our own served mapping.
            let b = unsafe { region.page(p).add(5).read_volatile() };
            assert_eq!(b, expected[p * ps + 5]);
        }
    };
    let discard = |p: usize| {
        // SAFETY: discards one page of our own mapping.
        let r = unsafe { libc::madvise(region.page(p).cast(), ps, libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
    };
    discard(1);
    let n = counted(|| {
        read(16..144);
        discard(2);
    });
    let two_n = counted(|| {
        read(144..400);
        discard(3);
    });
    let finished = server.stop();
    let s = finished.stats;
    assert!(s.faults >= 16 + 128 + 256, "{s:?}");
    // Every faulting page was recorded, in order (one reading thread).
    let recorded = finished.working_set.unwrap();
    let want: Vec<u64> = (0..400).collect();
    assert_eq!(recorded.order(), &want[..]);
    assert_eq!(s.removed_pages, 3, "{s:?}");
    assert_eq!(
        (n, two_n),
        (0, 0),
        "allocations while serving 128 and 256 faults (never_blocks: {never_blocks})"
    );
}
