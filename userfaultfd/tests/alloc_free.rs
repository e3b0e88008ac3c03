//! Serving a fault allocates nothing: a counting global allocator, enabled only on the handler
//! thread, counts the allocations made while serving N and then 2N faults; the count must
//! not grow with the number of events (it is in fact zero).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use support::{join_timeout, pattern, spawn_named, MemoryType, Region};
use userfaultfd::{Event, EventBuffer, Uffd, UffdBuilder};

/// Counts, per thread, the allocations made while that thread has counting on (so tests
/// running in parallel do not disturb each other's counts).
struct Counting;

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    if COUNT_HERE.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

fn allocations_here() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How events are read.
#[derive(Clone, Copy, Debug)]
enum Reading {
    OneAtATime,
    Batched,
}

/// Serves `faults` missing faults of anonymous memory from this thread, counting the
/// allocations of the serving loop only (setup is done before counting starts).
fn allocations_serving(faults: usize, reading: Reading) -> usize {
    let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
    let region = Arc::new(Region::new(MemoryType::Anonymous, faults).unwrap());
    uffd.register(region.addr(), region.len()).unwrap();
    let data = pattern(7, region.page_size());
    let mut buf = EventBuffer::new(16);
    let toucher = {
        let region = Arc::clone(&region);
        spawn_named("faulting", move || {
            (0..region.pages()).all(|p| region.read_page(p)[0] == pattern(7, 1)[0])
        })
    };
    let before = allocations_here();
    COUNT_HERE.with(|c| c.set(true));
    let mut served = 0;
    while served < faults {
        match reading {
            Reading::OneAtATime => {
                let event = uffd.read_event().unwrap().unwrap();
                serve(&uffd, event, &data);
                served += 1;
            }
            Reading::Batched => {
                for event in uffd.read_events(&mut buf).unwrap() {
                    serve(&uffd, event.unwrap(), &data);
                    served += 1;
                }
            }
        }
    }
    COUNT_HERE.with(|c| c.set(false));
    let counted = allocations_here() - before;
    assert!(
        join_timeout(toucher),
        "the faulting thread read the served bytes"
    );
    counted
}

/// COPY with DONTWAKE, then WAKE: both per-fault ioctls on the path.
fn serve(uffd: &Uffd, event: Event, data: &[u8]) {
    let Event::Pagefault { addr, .. } = event else {
        panic!("unexpected event");
    };
    // SAFETY: a missing page of the test mapping.
    unsafe { uffd.copy(data.as_ptr().cast(), addr, data.len(), false) }.unwrap();
    uffd.wake(addr, data.len()).unwrap();
}

#[test]
fn serving_faults_allocates_nothing() {
    for reading in [Reading::OneAtATime, Reading::Batched] {
        let n = allocations_serving(64, reading);
        let two_n = allocations_serving(128, reading);
        assert_eq!(
            n, two_n,
            "{reading:?}: allocations grow with the events read"
        );
        assert_eq!(n, 0, "{reading:?}: the serving loop allocated");
    }
}

#[test]
fn the_counter_counts() {
    // The allocator really counts on a counting thread, so zero above means zero.
    let before = allocations_here();
    COUNT_HERE.with(|c| c.set(true));
    let v = std::hint::black_box(vec![1u8; 10]);
    COUNT_HERE.with(|c| c.set(false));
    drop(v);
    assert!(allocations_here() > before);
}
