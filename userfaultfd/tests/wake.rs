//! A `DONTWAKE` resolution leaves the faulting thread blocked until `wake`; a copy that loses
//! a race (EEXIST) leaves the page intact and the thread blocked, and `wake` releases it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::{blocked_in_userfault, gettid, join_timeout, pattern, spawn_named, uffd_for};
use support::{wait_event, MemoryType, Region};
use userfaultfd::{CopyMode, Errno, Error, Event, FeatureFlags, RegisterMode, Uffd};

/// A thread that reads page 0 of `region` (blocking on the fault) and then sets `done`.
struct Reader {
    tid: libc::pid_t,
    done: Arc<AtomicBool>,
    thread: support::timeout::Waitable<Vec<u8>>,
}

fn start_reader(region: &Arc<Region>) -> Reader {
    let done = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let thread = {
        let (region, done) = (Arc::clone(region), Arc::clone(&done));
        spawn_named("reader", move || {
            tid_tx.send(gettid()).unwrap();
            let page = region.read_page(0);
            done.store(true, Ordering::SeqCst);
            page
        })
    };
    let tid = tid_rx.recv_timeout(support::TIMEOUT).unwrap();
    Reader { tid, done, thread }
}

impl Reader {
    /// Panics unless the reader is still blocked in its fault, some time after the
    /// resolution that did not wake it.
    #[track_caller]
    fn assert_still_blocked(&self, what: &str) {
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !self.done.load(Ordering::SeqCst),
            "{what}: the reader went on"
        );
        assert!(
            blocked_in_userfault(self.tid),
            "{what}: the reader is not blocked in the fault"
        );
    }
}

/// Waits for the fault of a reader of page 0 and returns its address.
fn fault_address(uffd: &Uffd) -> *mut libc::c_void {
    match wait_event(uffd) {
        Event::Pagefault { addr, .. } => addr,
        other => panic!("expected a page fault, got {other:?}"),
    }
}

#[test]
fn copy_dontwake_then_wake() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let reader = start_reader(&region);
        let addr = fault_address(&uffd);
        let data = pattern(5, ps);
        // SAFETY: the destination is the missing page of our test mapping.
        let done =
            unsafe { uffd.copy_with_mode(data.as_ptr().cast(), addr, ps, CopyMode::DONTWAKE) };
        assert_eq!(done.unwrap(), ps);
        reader.assert_still_blocked(&format!("{memory:?} copy DONTWAKE"));
        uffd.wake(addr, ps).unwrap();
        assert!(join_timeout(reader.thread) == data, "{memory:?}");
    }
}

#[test]
fn zeropage_dontwake_then_wake() {
    for memory in [MemoryType::Anonymous, MemoryType::Shmem] {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let region = Arc::new(Region::new(memory, 1).unwrap());
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let reader = start_reader(&region);
        let addr = fault_address(&uffd);
        // SAFETY: the destination is the missing page of our test mapping.
        assert_eq!(unsafe { uffd.zeropage(addr, ps, false) }.unwrap(), ps);
        reader.assert_still_blocked(&format!("{memory:?} zeropage without wake"));
        uffd.wake(addr, ps).unwrap();
        assert!(join_timeout(reader.thread).iter().all(|&b| b == 0));
    }
}

/// Two handlers race for one fault: the first places its page without waking (as a
/// prefetcher would), the second's copy fails with EEXIST, wakes nobody and changes nothing;
/// its `wake` releases the reader, which sees the first handler's bytes.
#[test]
fn eexist_race_is_resolved_by_wake() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let reader = start_reader(&region);
        let addr = fault_address(&uffd);

        let first = pattern(1, ps);
        let other_handler = uffd.try_clone().unwrap();
        let dst = addr as usize;
        let racer = spawn_named("first-handler", move || {
            // SAFETY: the destination is the missing page of the test mapping.
            unsafe {
                other_handler.copy_with_mode(
                    first.as_ptr().cast(),
                    dst as *mut libc::c_void,
                    first.len(),
                    CopyMode::DONTWAKE,
                )
            }
            .map(|_| first)
        });
        let first = join_timeout(racer).unwrap();

        let second = pattern(2, ps);
        // SAFETY: as above; the kernel refuses it because the page is populated.
        let err = unsafe { uffd.copy(second.as_ptr().cast(), addr, ps, true) }.unwrap_err();
        assert!(
            matches!(err, Error::CopyFailed(Errno::EEXIST)),
            "{memory:?}: {err:?}"
        );
        reader.assert_still_blocked(&format!("{memory:?} after EEXIST"));
        uffd.wake(addr, ps).unwrap();
        assert!(
            join_timeout(reader.thread) == first,
            "{memory:?}: the reader must see the first handler's page"
        );
    }
}
