//! Every fault the page server reads gets an answer, on every memory type: a fault-around
//! block that crosses a VMA boundary made after registration (`mprotect`), or that runs into
//! a range unmapped without `EVENT_UNMAP`, still places the faulting page (`ENOENT` is not
//! "done"); a fault outside the served regions (a range the caller registered itself, a
//! region grown by `mremap`) is answered by the error policy, never retried forever; pages the
//! process discarded are not placed again by fault-around or the background fill.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::serve::{discard, mismatches, serve_uffd, snapshot, Gate, TestSource};
use support::{blocked_in_userfault, gettid, join_timeout, spawn_named, uffd_for};
use support::{MemoryType, Region};
use userfaultfd::serve::{Memory, Region as Served, Server};
use userfaultfd::{FeatureFlags, RegisterMode};

fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 4,
        _ => 64,
    }
}

/// Whether the page at `addr` is present (mapped) in this process: bit 63 of its
/// `/proc/self/pagemap` entry.
fn present(addr: *const u8) -> bool {
    use std::os::unix::fs::FileExt;
    let ps = MemoryType::Anonymous.page_size();
    let file = std::fs::File::open("/proc/self/pagemap").expect("open /proc/self/pagemap");
    let mut entry = [0u8; 8];
    file.read_exact_at(&mut entry, (addr as usize / ps * 8) as u64)
        .expect("read /proc/self/pagemap");
    u64::from_ne_bytes(entry) >> 63 == 1
}

/// Reads page `page` of `region` on a thread (the read blocks until the fault is answered)
/// and returns the pages that differ from `expected` among `check`.
fn read_on_thread(
    region: &Arc<Region>,
    expected: &Arc<Vec<u8>>,
    check: std::ops::Range<usize>,
) -> Vec<usize> {
    let (region, expected) = (Arc::clone(region), Arc::clone(expected));
    join_timeout(spawn_named("faulting", move || {
        mismatches(&region, &expected, check)
    }))
}

/// `mprotect` after registration splits the VMA (both parts stay registered): a copy of the
/// fault-around block across the split fails with `ENOENT`. The faulting page must still be
/// placed, and the rest of the block too.
#[test]
fn fault_around_across_a_vma_split_places_the_faulting_page() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let region = Arc::new(region);
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = Arc::new(snapshot(pages, ps));
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(pages * ps) // one block: the whole region
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(Memory::new(expected.to_vec())))
        }
        .unwrap();
        // SAFETY: changes the protection of the second half of our own mapping (reads only
        // follow).
        let r = unsafe {
            libc::mprotect(
                region.page(pages / 2).cast(),
                pages / 2 * ps,
                libc::PROT_READ,
            )
        };
        assert_eq!(r, 0, "mprotect: {}", std::io::Error::last_os_error());
        let bad = read_on_thread(&region, &expected, 0..1);
        assert!(bad.is_empty(), "{memory:?}: the faulting page differs");
        let bad = read_on_thread(&region, &expected, 0..pages);
        let finished = server.stop();
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    }
}

/// Without `EVENT_UNMAP`, the server is not told that part of a region was unmapped: a copy
/// of a block that runs into it fails with `ENOENT`. The faulting page must still be placed.
#[test]
fn fault_around_into_a_range_unmapped_without_event_places_the_faulting_page() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::EVENT_REMOVE) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let region = Arc::new(region);
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = Arc::new(snapshot(pages, ps));
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(pages * ps)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(Memory::new(expected.to_vec())))
        }
        .unwrap();
        // SAFETY: unmaps the second half of our own mapping (never touched again).
        let r = unsafe { libc::munmap(region.page(pages / 2).cast(), pages / 2 * ps) };
        assert_eq!(r, 0, "munmap: {}", std::io::Error::last_os_error());
        let bad = read_on_thread(&region, &expected, 0..pages / 2);
        let finished = server.stop();
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
        drop(finished);
        // The first half only (the region's drop would unmap the second half's range too,
        // which another test may have mapped since).
        let mut region = Arc::try_unwrap(region).unwrap_or_else(|_| panic!("region shared"));
        // SAFETY: what is left of our mapping.
        unsafe { libc::munmap(region.addr(), pages / 2 * ps) };
        region.forget_mapping();
    }
}

/// A thread that reads a byte at `addr`, returning its thread id first.
fn blocked_reader(addr: usize) -> (libc::pid_t, support::Waitable<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = spawn_named("faulting", move || {
        tx.send(gettid()).unwrap();
        // SAFETY: a byte of a mapping the test owns.
        unsafe { (addr as *const u8).read_volatile() }
    });
    (rx.recv().unwrap(), reader)
}

/// A fault the server cannot place (outside its address map) under the default policy: the
/// server stops with an error naming the address, leaving the thread blocked (no spinning);
/// the owner then answers on the returned descriptor.
fn assert_outside_fault_stops(server: Server, addr: usize, unregister: (usize, usize)) {
    let (tid, reader) = blocked_reader(addr);
    assert!(
        server.wait_stopped(support::TIMEOUT),
        "the server neither answered nor stopped: {:?}",
        server.stats()
    );
    // A timeout past what `Instant` holds is "for ever", not an overflow panic.
    assert!(server.wait_stopped(std::time::Duration::MAX));
    let finished = server.stop();
    let e = finished
        .outcome
        .expect_err("a fault outside the regions is an error");
    let shown = e.to_string();
    assert!(
        shown.contains(&format!("{addr:#x}")),
        "{shown:?} does not name the address {addr:#x}"
    );
    // The fault is handed back: the thread faults again, pending on the descriptor.
    support::wait_blocked_in_userfault(tid);
    match support::wait_event(&finished.uffd) {
        userfaultfd::Event::Pagefault { addr: a, .. } => assert_eq!(a as usize, addr),
        other => panic!("expected the fault handed back, got {other:?}"),
    }
    assert!(blocked_in_userfault(tid), "the thread must stay blocked");
    finished
        .uffd
        .unregister(unregister.0 as *mut libc::c_void, unregister.1)
        .unwrap();
    assert_eq!(join_timeout(reader), 0);
}

/// A range the caller registered itself, with the server's descriptor.
#[test]
fn fault_in_a_range_registered_by_the_caller_stops_with_its_address() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let Some(other) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let ps = region.page_size();
        let expected = snapshot(region.pages(), ps);
        let mine = uffd.try_clone().unwrap();
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(Memory::new(expected)))
        }
        .unwrap();
        mine.register(other.addr(), other.len()).unwrap();
        drop(mine);
        let addr = other.page(1) as usize;
        assert_outside_fault_stops(server, addr, (other.addr() as usize, other.len()));
    }
}

/// A region grown by `mremap`: the grown part is registered (the VMA's registration grows
/// with it) but outside the server's address map. (`MREMAP_MAYMOVE`: if the kernel moves
/// it, the server follows the move by `REMAP`; the grown part is outside either way.)
#[test]
fn fault_in_a_region_grown_by_mremap_stops_with_its_address() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let mut region = Region::new(memory, 64).unwrap();
    let ps = region.page_size();
    let len = region.len();
    let expected = snapshot(64, ps);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .region(Served::new(region.addr(), len))
            .start(uffd, Arc::new(Memory::new(expected)))
    }
    .unwrap();
    // SAFETY: grows our own mapping (which `region` no longer owns: unmapped below).
    let grown = unsafe { libc::mremap(region.addr(), len, 2 * len, libc::MREMAP_MAYMOVE) };
    assert_ne!(
        grown,
        libc::MAP_FAILED,
        "mremap: {}",
        std::io::Error::last_os_error()
    );
    region.forget_mapping();
    let addr = grown as usize + len + 3 * ps;
    assert_outside_fault_stops(server, addr, (grown as usize, 2 * len));
    // SAFETY: the grown mapping, ours.
    assert_eq!(unsafe { libc::munmap(grown, 2 * len) }, 0);
}

/// A fault on a page next to discarded ones places that page only: fault-around does not
/// bring back what the process discarded (a balloon's pages stay free).
#[test]
fn fault_around_does_not_refill_discarded_pages() {
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
                .fault_around(pages * ps)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(Memory::new(expected.clone())))
        }
        .unwrap();
        // The balloon takes every page but the first, before any is touched.
        discard(&region, 1, pages - 1);
        assert!(mismatches(&region, &expected, 0..1).is_empty());
        let refilled: Vec<usize> = (1..pages).filter(|&p| present(region.page(p))).collect();
        let s = server.stop().stats;
        assert!(
            refilled.is_empty(),
            "{memory:?}: discarded pages {refilled:?} were placed again; {s:?}"
        );
        assert_eq!(s.fault_around_pages, 0, "{memory:?}: {s:?}");
    }
}

/// The background fill skips pages the process discarded.
#[test]
fn background_fill_does_not_refill_discarded_pages() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = snapshot(pages, ps);
        let gate = Arc::new(Gate::default());
        let mut source = TestSource::new(expected.clone(), ps);
        source.gate = Some(Arc::clone(&gate));
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(ps)
                .background_fill(true)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(source))
        }
        .unwrap();
        // The fill's first fetch (page 0) is held; meanwhile the balloon takes the second
        // half.
        gate.wait_entered();
        discard(&region, pages / 2, pages / 2);
        gate.open();
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        while server.stats().background_pages < (pages / 2) as u64 {
            assert!(std::time::Instant::now() < deadline, "{:?}", server.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let a wrong fill go on (it would place the rest within this time).
        std::thread::sleep(Duration::from_millis(200));
        let refilled: Vec<usize> = (pages / 2..pages)
            .filter(|&p| present(region.page(p)))
            .collect();
        let s = server.stop().stats;
        assert!(
            refilled.is_empty(),
            "{memory:?}: discarded pages {refilled:?} were placed again; {s:?}"
        );
        assert_eq!(s.background_pages, (pages / 2) as u64, "{memory:?}: {s:?}");
    }
}

/// Fail closed: a fault outside the regions (a range the caller registered itself) gets
/// `SIGBUS` (its page is poisoned), never a hang or a zero page.
#[test]
fn fault_outside_the_regions_fails_closed_with_sigbus() {
    if support::kernel_lacks(FeatureFlags::POISON).is_some() {
        return;
    }
    let outcome = support::run_in_child(|report| {
        let memory = MemoryType::Anonymous;
        let uffd = serve_uffd(memory, RegisterMode::MISSING).ok_or("no uffd")?;
        let region = Region::new(memory, 16).ok_or("no region")?;
        let other = Region::new(memory, 16).ok_or("no region")?;
        let ps = region.page_size();
        let mine = uffd.try_clone().map_err(|e| e.to_string())?;
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .error_policy(userfaultfd::serve::ErrorPolicy::FailClosed)
                .region(Served::new(region.addr(), region.len()))
                .start(uffd, Arc::new(Memory::new(snapshot(16, ps))))
        }
        .map_err(|e| e.to_string())?;
        mine.register(other.addr(), other.len())
            .map_err(|e| e.to_string())?;
        drop(mine);
        report.note("faulting outside the regions");
        let addr = other.page(2) as usize;
        let reader = spawn_named("faulting", move || {
            // SAFETY: a byte of our own mapping, registered with the server's descriptor.
            unsafe { (addr as *const u8).read_volatile() }
        });
        if !server.wait_stopped(support::TIMEOUT) {
            return Err("the server did not stop".into());
        }
        report.note(&format!("stopped: {:?}", server.outcome()));
        join_timeout(reader); // SIGBUS ends the process here
        Err("the access outside the regions returned".into())
    });
    outcome.assert_killed_by(libc::SIGBUS);
    assert!(
        outcome.report.contains("FaultOutsideRegions") || outcome.report.contains("outside"),
        "{}",
        outcome.report
    );
}
