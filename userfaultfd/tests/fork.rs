//! `EVENT_FORK` (needs CAP_SYS_PTRACE): a fork is reported with the child's userfaultfd, a
//! valid descriptor owned by the event, through which the child's faults are served; once the
//! child has exited, operations on it fail with ESRCH. Without the feature the child's copy of
//! the range is not registered. Dropping a batch of events closes unread fork descriptors.
//!
//! One test function only: while a descriptor with `EVENT_FORK` has registered ranges, every
//! fork in this process waits for its event, so no other test of this binary may fork
//! concurrently.
//!
//! The forking thread waits for the event inside `fork()`, after glibc has taken the malloc
//! locks: until the handler has read the fork event, nothing may allocate, or the process
//! deadlocks. So the handler signals that it is ready before the fork, allocates nothing
//! until it has read the event, and a watchdog that does not allocate either ends the process
//! if a bug leaves the fork waiting.

mod support;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use support::{join_timeout, pattern, spawn_child, spawn_named, wait_event};
use support::{kernel_lacks, run_in_child, MemoryType, Region, TIMEOUT};
use userfaultfd::UffdBuilder;
use userfaultfd::{Errno, Error, Event, EventBuffer, FeatureFlags, RegisterMode, Uffd};

/// A non-blocking descriptor with `EVENT_FORK` for `memory`; `None` when the kernel lacks a
/// feature or (a machine skip) the process lacks CAP_SYS_PTRACE.
#[track_caller]
fn fork_uffd(memory: MemoryType) -> Option<Uffd> {
    let features = memory.features_for(RegisterMode::MISSING)
        | FeatureFlags::EVENT_FORK
        | FeatureFlags::THREAD_ID;
    if kernel_lacks(features).is_some() {
        return None;
    }
    let created = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .require_features(features)
        .create();
    if !support::privileged() {
        // Without CAP_SYS_PTRACE, EVENT_FORK is refused, and the error says so.
        assert!(
            matches!(created, Err(Error::SystemError(Errno::EPERM))),
            "{created:?}"
        );
        support::assert_refused_for_privilege("EVENT_FORK", created, &["CAP_SYS_PTRACE"]);
        return None;
    }
    Some(created.expect("creating a userfaultfd with EVENT_FORK"))
}

/// The file a descriptor of this process refers to.
fn fd_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Ends the process (without allocating) if not dropped within the test timeout: a fork
/// that waits forever for its event cannot be interrupted any other way.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(what: &'static str) -> Watchdog {
        let disarmed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&disarmed);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + TIMEOUT;
            while !flag.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    let message = b"fork test: a fork waited too long for its event; exiting\n";
                    // SAFETY: write and _exit are async-signal-safe and allocate nothing.
                    unsafe {
                        libc::write(2, message.as_ptr().cast(), message.len());
                        libc::write(2, what.as_ptr().cast(), what.len());
                        libc::_exit(101);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        // Started (thread start-up allocates) before the fork takes the malloc locks.
        ready_rx.recv().unwrap();
        Watchdog(disarmed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn fork_events() {
    for memory in MemoryType::ALL {
        fork_event_serves_the_child(memory);
        without_event_fork_the_child_is_not_registered(memory);
    }
    dropping_unread_fork_events_closes_their_descriptors();
}

fn fork_event_serves_the_child(memory: MemoryType) {
    let Some(uffd) = fork_uffd(memory) else {
        return;
    };
    let Some(region) = Region::new(memory, 2) else {
        return;
    };
    let region = Arc::new(region);
    let ps = region.page_size();
    uffd.register(region.addr(), region.len()).unwrap();
    let parent_features = uffd.features();

    let (tid_tx, tid_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handler = {
        let region = Arc::clone(&region);
        spawn_named("fork-handler", move || {
            ready_tx.send(()).unwrap();
            // No allocation until the fork event is read (see the module comment).
            let Event::Fork { uffd: child_uffd } = wait_event(&uffd) else {
                panic!("{memory:?}: expected a fork event");
            };
            let fd = child_uffd.as_raw_fd();
            assert_ne!(fd, uffd.as_raw_fd());
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags >= 0, "the fork event's descriptor is not open");
            assert_ne!(flags & libc::FD_CLOEXEC, 0, "it inherits O_CLOEXEC");
            assert_eq!(fd_target(fd), "anon_inode:[userfaultfd]");
            assert_eq!(child_uffd.features(), parent_features);

            // The child faults on its copy of the range, reported on the child's descriptor.
            let Event::Pagefault {
                addr, thread_id, ..
            } = wait_event(&child_uffd)
            else {
                panic!("{memory:?}: expected the child's page fault");
            };
            assert_eq!(addr as usize, region.ptr() as usize);
            tid_tx.send(thread_id).unwrap();
            let data = pattern(7, ps);
            // SAFETY: the destination is the missing page of the child's test mapping (the
            // source is read from this process).
            let done = unsafe { child_uffd.copy(data.as_ptr().cast(), addr, ps, true) };
            assert_eq!(done.unwrap(), ps);
            assert!(
                uffd.read_event().unwrap().is_none(),
                "an event for the parent"
            );
            child_uffd
        })
    };

    ready_rx.recv().unwrap();
    let watchdog = Watchdog::arm("fork_event_serves_the_child");
    let child = spawn_child(|report| {
        let page = region.read_page(0);
        report.note("read page 0");
        if page == pattern(7, ps) {
            Ok(())
        } else {
            Err("the child read other bytes than the handler copied".into())
        }
    });
    drop(watchdog);
    let child_pid = child.pid();
    let outcome = child.wait();
    outcome.assert_success();
    let child_uffd = join_timeout(handler);
    assert_eq!(
        tid_rx.recv().unwrap(),
        Some(child_pid),
        "{memory:?}: thread id"
    );

    // The child has exited: its address space is gone.
    let data = pattern(8, ps);
    // SAFETY: the destination belonged to the exited child; the kernel refuses.
    let result = unsafe { child_uffd.copy(data.as_ptr().cast(), region.page(1).cast(), ps, true) };
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::CopyFailed(Errno::ESRCH)),
        "{memory:?}: {err:?}"
    );
    assert!(err.to_string().contains("has exited"), "{err}");
}

fn without_event_fork_the_child_is_not_registered(memory: MemoryType) {
    let Some(uffd) = support::uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let Some(region) = Region::new(memory, 1) else {
        return;
    };
    uffd.register(region.addr(), region.len()).unwrap();
    // The child's read does not wait for a handler (it would time out and fail).
    let outcome = run_in_child(|_| {
        if region.read_page(0).iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err("a fresh page that is not zero".into())
        }
    });
    outcome.assert_success();
    assert!(
        uffd.read_event().unwrap().is_none(),
        "{memory:?}: unexpected event"
    );
}

fn dropping_unread_fork_events_closes_their_descriptors() {
    let Some(uffd) = fork_uffd(MemoryType::Anonymous) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 1).unwrap();
    uffd.register(region.addr(), region.len()).unwrap();
    let before = open_fds();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handler = spawn_named("fork-handler", move || {
        let mut buf = EventBuffer::new(4);
        ready_tx.send(()).unwrap();
        // No allocation until the fork event is read (see the module comment).
        support::wait_readable(&uffd);
        let events = uffd.read_events(&mut buf).unwrap();
        assert_eq!(events.len(), 1);
        drop(events); // unread: its descriptor must be closed
        uffd // kept open until counted
    });
    ready_rx.recv().unwrap();
    // The child does not touch the range: it just exits.
    let watchdog = Watchdog::arm("dropping_unread_fork_events_closes_their_descriptors");
    let child = spawn_child(|_| Ok(()));
    drop(watchdog);
    child.wait().assert_success();
    let uffd = join_timeout(handler);
    assert_eq!(open_fds(), before, "the fork event's descriptor leaked");
    drop(uffd);
}
