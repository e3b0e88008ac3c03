//! Reading events: several pending faults come back in one `read_events` batch (limited by
//! the buffer's capacity); a non-blocking read with nothing pending is `None` or an empty
//! batch; a blocking read interrupted by a signal is retried; an unknown event code is
//! `UnrecognizedEvent`.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use support::{gettid, join_timeout, pattern, spawn_named, uffd_for, wait_blocked_in_userfault};
use support::{wait_until, MemoryType, Region};
use userfaultfd::{Event, EventBuffer, FeatureFlags, RegisterMode, UffdBuilder};

#[test]
fn a_batch_holds_every_pending_fault() {
    const THREADS: usize = 4;
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::THREAD_ID) else {
            continue;
        };
        let Some(region) = Region::new(memory, THREADS) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let (tid_tx, tid_rx) = mpsc::channel();
        let readers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (region, tid_tx) = (Arc::clone(&region), tid_tx.clone());
                spawn_named(&format!("reader-{i}"), move || {
                    tid_tx.send(gettid()).unwrap();
                    region.read_page(i)
                })
            })
            .collect();
        let tids: BTreeSet<_> = (0..THREADS).map(|_| tid_rx.recv().unwrap()).collect();
        // Every fault is queued once every reader sleeps in its fault.
        for &tid in &tids {
            wait_blocked_in_userfault(tid);
        }

        // A buffer of 3 takes 3 of the 4 pending faults, the next read the last one.
        let mut small = EventBuffer::new(3);
        let mut faults = BTreeSet::new();
        let mut seen_tids = BTreeSet::new();
        for expected in [3, 1] {
            let events = uffd.read_events(&mut small).unwrap();
            assert_eq!(events.len(), expected, "{memory:?}");
            for event in events {
                let Event::Pagefault {
                    addr, thread_id, ..
                } = event.unwrap()
                else {
                    panic!("{memory:?}: expected page faults");
                };
                faults.insert(addr as usize);
                seen_tids.insert(thread_id.unwrap());
            }
        }
        let expected: BTreeSet<_> = (0..THREADS).map(|i| region.page(i) as usize).collect();
        assert_eq!(faults, expected, "{memory:?}: one fault per page");
        assert_eq!(seen_tids, tids, "{memory:?}: one fault per thread");
        // Nothing more: an empty batch.
        assert_eq!(
            uffd.read_events(&mut EventBuffer::new(16)).unwrap().len(),
            0
        );

        for (i, &addr) in faults.iter().enumerate() {
            let data = pattern(i, ps);
            // SAFETY: a missing page of our test mapping.
            unsafe { uffd.copy(data.as_ptr().cast(), addr as *mut libc::c_void, ps, true) }
                .unwrap();
        }
        for (i, reader) in readers.into_iter().enumerate() {
            assert!(
                join_timeout(reader) == pattern(i, ps),
                "{memory:?} page {i}"
            );
        }
    }
}

#[test]
fn a_batch_of_sixteen_gets_all_faults_at_once() {
    const THREADS: usize = 6;
    let memory = MemoryType::Anonymous;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::THREAD_ID) else {
        return;
    };
    let region = Arc::new(Region::new(memory, THREADS).unwrap());
    uffd.register(region.addr(), region.len()).unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let readers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (region, tid_tx) = (Arc::clone(&region), tid_tx.clone());
            spawn_named("reader", move || {
                tid_tx.send(gettid()).unwrap();
                region.read_page(i)[0]
            })
        })
        .collect();
    for _ in 0..THREADS {
        wait_blocked_in_userfault(tid_rx.recv().unwrap());
    }
    let mut buf = EventBuffer::new(16);
    assert_eq!(buf.capacity(), 16);
    let events: Vec<_> = uffd
        .read_events(&mut buf)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events.len(), THREADS);
    for i in 0..THREADS {
        let data = vec![i as u8 + 1; region.page_size()];
        // SAFETY: a missing page of our test mapping.
        unsafe {
            uffd.copy(
                data.as_ptr().cast(),
                region.page(i).cast(),
                data.len(),
                true,
            )
        }
        .unwrap();
    }
    for (i, reader) in readers.into_iter().enumerate() {
        assert_eq!(join_timeout(reader), i as u8 + 1);
    }
}

#[test]
fn a_non_blocking_read_with_nothing_pending_is_empty() {
    let Some(uffd) = uffd_for(
        MemoryType::Anonymous,
        RegisterMode::MISSING,
        FeatureFlags::empty(),
    ) else {
        return;
    };
    assert!(uffd.read_event().unwrap().is_none());
    let mut buf = EventBuffer::new(16);
    let events = uffd.read_events(&mut buf).unwrap();
    assert_eq!(events.len(), 0);
    assert_eq!(events.count(), 0);
    // A buffer for no event still reads (it holds one).
    assert_eq!(EventBuffer::new(0).capacity(), 1);
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// A signal whose handler is installed without SA_RESTART makes a blocked `read(2)` fail with
/// EINTR; the crate retries, so the reader still gets the fault that comes later.
#[test]
fn a_blocking_read_interrupted_by_a_signal_is_retried() {
    let memory = MemoryType::Anonymous;
    if support::kernel_lacks(FeatureFlags::empty()).is_some() {
        return;
    }
    // SAFETY: installs a handler for SIGUSR1, which nothing else in this test binary uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        action.sa_flags = 0; // no SA_RESTART: the read returns EINTR
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    let uffd = Arc::new(UffdBuilder::new().close_on_exec(true).create().unwrap());
    let region = Arc::new(Region::new(memory, 1).unwrap());
    uffd.register(region.addr(), region.len()).unwrap();

    let (tid_tx, tid_rx) = mpsc::channel();
    let returned = Arc::new(AtomicBool::new(false));
    let reader = {
        let (uffd, returned) = (Arc::clone(&uffd), Arc::clone(&returned));
        spawn_named("event-reader", move || {
            tid_tx.send(gettid()).unwrap();
            let event = uffd.read_event();
            returned.store(true, Ordering::SeqCst);
            // `Event` holds raw addresses and is not `Send`: hand back the fault address.
            match event {
                Ok(Some(Event::Pagefault { addr, .. })) => Ok(addr as usize),
                other => Err(format!("{other:?}")),
            }
        })
    };
    let tid = tid_rx.recv().unwrap();
    let in_read = || support::blocked::wchan(tid).is_some_and(|w| w.starts_with("userfaultfd"));
    wait_until(in_read, "the reader to block in read(2)");
    // SAFETY: sends SIGUSR1 to the reader thread of this process.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    assert_eq!(r, 0);
    wait_until(|| SIGNALS.load(Ordering::SeqCst) == 1, "the signal handler");
    // The read was interrupted and retried: the reader is blocked in it again.
    let gave_up = || returned.load(Ordering::SeqCst);
    wait_until(
        || gave_up() || in_read(),
        "the reader to block in read(2) again",
    );
    assert!(
        !gave_up(),
        "read_event returned after the signal: {:?}",
        join_timeout(reader)
    );

    let faulting = {
        let region = Arc::clone(&region);
        spawn_named("faulting", move || region.read_page(0))
    };
    let addr = join_timeout(reader).expect("a page fault after the signal, not an error");
    assert_eq!(addr, region.ptr() as usize);
    let data = pattern(0, region.page_size());
    // SAFETY: the missing page of our test mapping.
    unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), data.len(), true) }.unwrap();
    assert!(join_timeout(faulting) == data);
}
