//! A slow page source (one whose fetch is held) delays nothing but the faults waiting for
//! it: events (`madvise`, `munmap`, `mremap`) are read while it is held, with one worker (the
//! default); `stop()` and drop return while it is held, the faulting thread's fault is handed
//! back on the returned descriptor, and the thread left in the fetch places nothing
//! afterwards.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::serve::{serve_uffd, snapshot, Gate, TestSource};
use support::{gettid, join_timeout, spawn_named, wait_blocked_in_userfault, wait_event};
use support::{MemoryType, Region};
use userfaultfd::serve::{Region as Served, Server};
use userfaultfd::{Event, RegisterMode};

/// The tests of this file one at a time: one unmaps and moves parts of its mapping, whose
/// addresses another's mappings could otherwise take meanwhile.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server (defaults: one worker) over `region`, whose source's first fetch is held at the
/// returned gate, and a thread blocked in a fault on page 0 whose fetch is the held one.
fn held_fetch(
    region: &Arc<Region>,
) -> (
    Server,
    Arc<Gate>,
    Arc<TestSource>,
    libc::pid_t,
    support::Waitable<u8>,
) {
    let memory = region.memory();
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let ps = region.page_size();
    let gate = Arc::new(Gate::default());
    let mut source = TestSource::new(snapshot(region.pages(), ps), ps);
    source.gate = Some(Arc::clone(&gate));
    let source = Arc::new(source);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(ps)
            .region(Served::new(region.addr(), region.len()).page_size(ps))
            .start(uffd, Arc::clone(&source) as _)
    }
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let region = Arc::clone(region);
        spawn_named("faulting", move || {
            tx.send(gettid()).unwrap();
            // SAFETY: a byte of our own mapping.
            unsafe { region.page(0).read_volatile() }
        })
    };
    let tid = rx.recv().unwrap();
    gate.wait_entered();
    wait_blocked_in_userfault(tid);
    (server, gate, source, tid, reader)
}

/// With one worker (the default) and its fetch held, `madvise(DONTNEED)`, `munmap` and
/// `mremap` of the region return: their events are read without waiting for the fetch.
#[test]
fn events_are_read_while_a_fetch_is_held() {
    let _serial = one_at_a_time();
    let memory = MemoryType::Anonymous;
    let region = Arc::new(Region::new(memory, 64).unwrap());
    let ps = region.page_size();
    let target = Region::new(memory, 4).unwrap();
    let (server, gate, _source, _tid, reader) = held_fetch(&region);
    let (addr, target_addr) = (region.addr() as usize, target.addr() as usize);
    let events = spawn_named("discarding-unmapping-moving", move || {
        let page = |i: usize| (addr + i * ps) as *mut libc::c_void;
        // SAFETY: pages of our own test mapping, which hold no Rust object.
        unsafe {
            assert_eq!(libc::madvise(page(10), ps, libc::MADV_DONTNEED), 0);
            assert_eq!(libc::munmap(page(60), 4 * ps), 0);
            let moved = libc::mremap(
                page(50),
                4 * ps,
                4 * ps,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target_addr as *mut libc::c_void,
            );
            assert_eq!(moved as usize, target_addr);
        }
    });
    // Before the fix: the events waited for the held fetch, and this timed out.
    join_timeout(events);
    // The kernel lets the discarding thread go on when the server has read the event, a
    // moment before the server counts it.
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    let mut s = server.stats();
    while s.events < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
        s = server.stats();
    }
    assert!(s.events >= 3, "{s:?}");
    gate.open();
    assert_eq!(join_timeout(reader), snapshot(1, ps)[0]);
    let finished = server.stop();
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    drop(finished);
    drop(target); // the moved pages
                  // What is left of the region: pages 0..50 and 54..60 (its drop would unmap the holes
                  // too, and whatever was mapped there since).
    let mut region = Arc::try_unwrap(region).unwrap_or_else(|_| panic!("region still shared"));
    // SAFETY: the parts of our mapping still mapped.
    unsafe {
        libc::munmap(region.addr(), 50 * ps);
        libc::munmap(region.page(54).cast(), 6 * ps);
    }
    region.forget_mapping();
}

/// `stop()` returns while a fetch is held (never opened until after): the faulting thread's
/// fault is pending again on the returned descriptor; the thread left in the fetch, once
/// released, places nothing and lets go of the source.
#[test]
fn stop_returns_while_a_fetch_is_stuck() {
    let _serial = one_at_a_time();
    let memory = MemoryType::Anonymous;
    let region = Arc::new(Region::new(memory, 64).unwrap());
    let (server, gate, source, tid, reader) = held_fetch(&region);
    let stopper = spawn_named("stopping", move || server.stop());
    // Before the fix: stop() joined the worker, stuck in the fetch, and this timed out.
    let finished = join_timeout(stopper);
    assert!(
        matches!(finished.outcome, Ok(userfaultfd::serve::Exit::Stopped)),
        "{:?}",
        finished.outcome
    );
    // The fault is handed back: the thread faults again, on the returned descriptor.
    finished.uffd.set_non_blocking(true).unwrap();
    match wait_event(&finished.uffd) {
        Event::Pagefault { addr, .. } => assert_eq!(addr, region.addr()),
        other => panic!("expected the fault again, got {other:?}"),
    }
    wait_blocked_in_userfault(tid);
    // The owner answers it: a page of its own.
    let mine = support::pattern(77, region.page_size());
    // SAFETY: page 0 of the test region, which holds no Rust object.
    unsafe {
        finished
            .uffd
            .copy(mine.as_ptr().cast(), region.addr(), mine.len(), true)
    }
    .unwrap();
    assert_eq!(join_timeout(reader), mine[0]);
    // Released, the thread left in the fetch places nothing (the page keeps the owner's
    // contents) and exits, dropping its reference to the source.
    gate.open();
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    while Arc::strong_count(&source) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the thread never let go"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(region.read_page(0), mine);
    assert_eq!(finished.stats.pages_copied, 0, "{:?}", finished.stats);
    // The descriptor returned is the only one (the thread left behind kept none open):
    // closing it ends the registration, and a fault on another page gets the kernel's zero
    // page.
    drop(finished);
    let r = Arc::clone(&region);
    assert_eq!(
        join_timeout(spawn_named("after", move || r.read_page(5)[0])),
        0
    );
}

/// Dropping the server returns while a fetch is held, and closes the descriptor: the
/// faulting thread retries without userfaultfd (a zero page on anonymous memory).
#[test]
fn drop_returns_while_a_fetch_is_stuck() {
    let _serial = one_at_a_time();
    let memory = MemoryType::Anonymous;
    let region = Arc::new(Region::new(memory, 64).unwrap());
    let (server, gate, _source, _tid, reader) = held_fetch(&region);
    // Before the fix: drop joined the worker, stuck in the fetch, and this timed out.
    join_timeout(spawn_named("dropping", move || drop(server)));
    assert_eq!(join_timeout(reader), 0);
    gate.open();
}
