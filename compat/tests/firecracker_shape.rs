//! A handler in Firecracker's shape (compat/src/snapshot_handler.rs) under balloon removals
//! racing page faults, on every memory type: it must defer, never panic, and serve every byte
//! right (snapshot contents, zeros where removed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use userfaultfd::{Error, FeatureFlags, UffdBuilder};
use userfaultfd_compat::memory::{snapshot_byte, Mapping, Memory};
use userfaultfd_compat::snapshot_handler::SnapshotHandler;

fn snapshot(len: usize) -> Vec<u8> {
    (0..len).map(snapshot_byte).collect()
}

fn new_uffd() -> userfaultfd::Uffd {
    // As Firecracker creates it.
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .expect("creating the userfaultfd (run as root: handling kernel-mode faults)")
}

/// Runs the handler in a thread until the returned flag is set.
fn spawn_handler(
    mut handler: SnapshotHandler,
) -> (Arc<AtomicBool>, thread::JoinHandle<SnapshotHandler>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let join = thread::spawn(move || {
        handler.run(&flag);
        handler
    });
    (stop, join)
}

/// The deterministic race: a fault is pending, then a REMOVE becomes pending before the
/// handler runs. The kernel hands the handler the fault first; its copy fails because the
/// REMOVE is unread (0.9 reported `PartiallyCopied((-EAGAIN) as usize)`, this crate
/// `PartiallyCopied(0)`), so the handler must defer it, read the REMOVE, and retry.
#[test]
fn a_copy_meeting_a_pending_remove_is_deferred_not_fatal() {
    for memory in Memory::ALL {
        let Some(map) = Mapping::new(memory, 4) else {
            continue;
        };
        let map = Arc::new(map);
        let ps = memory.page_size();
        let snap = snapshot(map.len());
        let uffd = new_uffd();
        uffd.register(map.addr(), map.len()).unwrap();

        // A thread faults on page 0 and waits.
        let toucher = {
            let map = map.clone();
            thread::spawn(move || map.read(0))
        };
        // Wait until the fault is pending (the descriptor is readable).
        let mut pollfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&uffd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 10_000) };
        assert_eq!(ready, 1, "{memory:?}: the fault never became pending");
        // A balloon discards page 2: its madvise waits until the REMOVE is read.
        let discarder = {
            let map = map.clone();
            thread::spawn(move || map.discard(2, 1))
        };
        // Wait until the REMOVE is pending: a copy into page 3 then fails with EAGAIN.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page3 = map.addr().cast::<u8>().wrapping_add(3 * ps);
            // SAFETY: page 3 of our registered test mapping, which holds no Rust object.
            match unsafe { uffd.copy(snap[3 * ps..].as_ptr().cast(), page3.cast(), ps, true) } {
                Err(Error::PartiallyCopied(0)) => break,
                Ok(_) | Err(Error::CopyFailed(_)) => {}
                Err(e) => panic!("{memory:?}: {e:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "{memory:?}: the REMOVE never became pending"
            );
            thread::sleep(Duration::from_millis(1));
        }

        let handler = SnapshotHandler::new(uffd, map.addr(), snap.clone(), ps);
        let (stop, join) = spawn_handler(handler);
        assert_eq!(toucher.join().unwrap(), snap[0], "{memory:?}");
        discarder.join().unwrap();
        // Page 2 was removed before this touch: zeros. Pages 1 and 3: the snapshot.
        for offset in [2 * ps, 2 * ps + ps / 2, 3 * ps - 1] {
            assert_eq!(map.read(offset), 0, "{memory:?}: offset {offset}");
        }
        for offset in [0, ps - 1, ps, 2 * ps - 1, 3 * ps, 4 * ps - 1] {
            assert_eq!(
                map.read(offset),
                snap[offset],
                "{memory:?}: offset {offset}"
            );
        }
        stop.store(true, Ordering::Release);
        let handler = join.join().expect("the handler must not panic");
        assert!(
            handler.deferred >= 1,
            "{memory:?}: the fault was never deferred"
        );
        eprintln!(
            "{memory:?}: {} faults served, {} deferred",
            handler.served, handler.deferred
        );
    }
}

/// Free-running: threads read pages in pseudo-random order while a balloon removes the odd
/// pages over and over. Even pages must always read the snapshot; odd pages the snapshot or
/// zeros; after a final removal, every odd page reads zeros.
#[test]
fn removals_racing_faults_keep_every_byte_right() {
    for memory in Memory::ALL {
        let pages = if memory == Memory::Hugetlb { 8 } else { 64 };
        let Some(map) = Mapping::new(memory, pages) else {
            continue;
        };
        let map = Arc::new(map);
        let ps = memory.page_size();
        let snap = Arc::new(snapshot(map.len()));
        let uffd = new_uffd();
        uffd.register(map.addr(), map.len()).unwrap();
        let (stop_handler, handler) =
            spawn_handler(SnapshotHandler::new(uffd, map.addr(), snap.to_vec(), ps));

        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|seed| {
                let (map, snap, stop) = (map.clone(), snap.clone(), stop.clone());
                thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let page = (x as usize) % pages;
                        let offset = page * ps + (x as usize >> 20) % ps;
                        let got = map.read(offset);
                        if page & 1 == 0 {
                            assert_eq!(got, snap[offset], "{memory:?}: even page {page}");
                        } else {
                            assert!(got == snap[offset] || got == 0, "{memory:?}: page {page}");
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let discarder = {
            let (map, stop) = (map.clone(), stop.clone());
            thread::spawn(move || {
                let mut page = 1;
                while !stop.load(Ordering::Relaxed) {
                    map.discard(page, 1);
                    page = (page + 2) % pages;
                }
            })
        };
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        discarder.join().unwrap();

        for page in (1..pages).step_by(2) {
            map.discard(page, 1);
        }
        for page in 0..pages {
            for offset in [page * ps, page * ps + ps - 1] {
                let want = if page & 1 == 0 { snap[offset] } else { 0 };
                assert_eq!(map.read(offset), want, "{memory:?}: page {page}");
            }
        }
        stop_handler.store(true, Ordering::Release);
        let handler = handler.join().expect("the handler must not panic");
        eprintln!(
            "{memory:?}: {reads} reads, {} faults served, {} deferred",
            handler.served, handler.deferred
        );
        assert!(handler.served > pages, "{memory:?}: too few faults to race");
    }
}
