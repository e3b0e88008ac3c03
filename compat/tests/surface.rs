//! The rest of the 0.9 surface, used as 0.9 code uses it, with the behaviour 0.9 had.

use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::thread;

use userfaultfd::{
    Errno, Error, Event, EventBuffer, FaultKind, FeatureFlags, IoctlFlags, ReadWrite, RegisterMode,
    UffdBuilder,
};
use userfaultfd_compat::memory::{snapshot_byte, Mapping, Memory};
use userfaultfd_compat::tracer::{describe, errno_code, register_or_skip, Registered};

/// nix's `Errno` was a fieldless enum: `as i32`, `desc()` as `&'static str`, `from_i32`.
#[test]
fn errno_is_used_as_nix_errno_was() {
    assert_eq!(Errno::EEXIST as i32, libc::EEXIST);
    let described = describe(libc::EAGAIN);
    let text: &'static str = described.text;
    assert_eq!(
        (described.code, text),
        (libc::EAGAIN, "Resource temporarily unavailable")
    );
    assert_eq!(Errno::from_i32(libc::EBUSY), Errno::EBUSY);
    assert_eq!(Errno::from_i32(100_000), Errno::UnknownErrno);
    // The kernel-internal 524 (ENOTSUPP), which leaks out of some drivers' ioctls: nix (and so
    // 0.9) made it UnknownErrno, losing the number (`as i32` gave 0); it keeps it now.
    assert_eq!(Errno::from_i32(524) as i32, 524);
    assert_eq!(describe(524).text, "Operation is not supported");
    assert_eq!(errno_code(&Error::SystemError(Errno::EBUSY)), libc::EBUSY);
    assert_eq!(errno_code(&Error::CopyFailed(Errno::EEXIST)), libc::EEXIST);
    #[allow(unused_imports)]
    use Errno::*;
    assert!(matches!(Errno::from_i32(libc::ENOENT), ENOENT));
}

/// `register` fails with `SystemError(EBUSY)` on a range another userfaultfd owns, as in 0.9:
/// the tracer's `SystemError(e) if e == EBUSY` arm is taken.
#[test]
fn register_of_a_range_owned_elsewhere_is_system_error_ebusy() {
    for memory in Memory::ALL {
        let Some(map) = Mapping::new(memory, 1) else {
            continue;
        };
        let first = UffdBuilder::new().create().unwrap();
        let second = UffdBuilder::new().create().unwrap();
        assert_eq!(
            register_or_skip(&first, map.addr(), map.len()),
            Ok(Registered::Yes)
        );
        assert_eq!(
            register_or_skip(&second, map.addr(), map.len()),
            Ok(Registered::OwnedElsewhere),
            "{memory:?}"
        );
        let err = second.unregister(map.addr(), 1).unwrap_err();
        assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
        let err = second.wake(map.addr(), 1).unwrap_err();
        assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
    }
}

/// The bit sets mean what they meant in 0.9.
#[test]
fn flag_sets_know_what_0_9_knew() {
    assert_eq!(FeatureFlags::from_bits(1 << 40), None);
    assert_eq!(RegisterMode::from_bits(1 << 40), None);
    assert_eq!(
        RegisterMode::all(),
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT | RegisterMode::MINOR
    );
    // 0.9 declared every ioctl bit known.
    assert!(IoctlFlags::from_bits(1 << 40).is_some());
    assert_eq!(FeatureFlags::all().bits(), (1 << 17) - 1);
    let caps = userfaultfd::probe().unwrap();
    let created = UffdBuilder::new()
        .require_features(FeatureFlags::all() - FeatureFlags::EVENT_FORK)
        .create();
    let missing = FeatureFlags::all() - FeatureFlags::EVENT_FORK - caps.features();
    match created {
        Ok(_) => assert!(missing.is_empty()),
        Err(Error::UnsupportedFeatures(m)) => assert_eq!(m, missing),
        Err(e) => panic!("{e:?}"),
    }
}

/// `into_raw_fd` gives the descriptor away: it stays open after the `Uffd` is gone (0.9 closed
/// it again on drop), and closing it is the caller's, once. (Whether `Drop` closes an owned
/// descriptor is tested in the crate's own ownership tests; here other tests' threads may
/// reuse the number at any time.)
#[test]
fn into_raw_fd_gives_the_descriptor_away() {
    let uffd = UffdBuilder::new().create().unwrap();
    let fd = uffd.into_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert_eq!(link.to_str(), Some("anon_inode:[userfaultfd]"));
    // SAFETY: `fd` is ours alone since into_raw_fd; it is closed once, here.
    assert_eq!(unsafe { libc::close(fd) }, 0, "already closed");
}

/// The read loop of 0.9's own example: a blocking descriptor, a faulting thread, one event,
/// a copy; then the non-blocking descriptor with nothing pending gives `None`.
#[test]
fn read_event_serves_a_fault_and_nonblocking_gives_none() {
    for memory in Memory::ALL {
        let Some(map) = Mapping::new(memory, 1) else {
            continue;
        };
        let map = Arc::new(map);
        let ps = memory.page_size();
        let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
        uffd.register(map.addr(), map.len()).unwrap();
        let toucher = {
            let map = map.clone();
            thread::spawn(move || map.read(ps - 1))
        };
        let event = uffd.read_event().unwrap().unwrap();
        let Event::Pagefault { kind, rw, addr, .. } = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            (kind, rw, addr),
            (FaultKind::Missing, ReadWrite::Read, map.addr())
        );
        let page: Vec<u8> = (0..ps).map(snapshot_byte).collect();
        // SAFETY: the registered test mapping, which holds no Rust object.
        let copied = unsafe { uffd.copy(page.as_ptr().cast(), addr, ps, true) }.unwrap();
        assert_eq!(copied, ps);
        assert_eq!(toucher.join().unwrap(), snapshot_byte(ps - 1));

        let nonblocking = UffdBuilder::new().non_blocking(true).create().unwrap();
        assert!(nonblocking.read_event().unwrap().is_none());
        let mut buf = EventBuffer::new(4);
        assert_eq!(nonblocking.read_events(&mut buf).unwrap().count(), 0);
    }
}

/// `read_events` returns every fault of several threads, as in 0.9's own test.
#[test]
fn read_events_batches_faults_of_several_threads() {
    let memory = Memory::Anonymous;
    let pages = 8;
    let map = Arc::new(Mapping::new(memory, pages).unwrap());
    let ps = memory.page_size();
    let uffd = UffdBuilder::new().create().unwrap();
    uffd.register(map.addr(), map.len()).unwrap();
    let threads: Vec<_> = (0..pages)
        .map(|p| {
            let map = map.clone();
            thread::spawn(move || map.read(p * ps))
        })
        .collect();
    let mut buf = EventBuffer::new(pages);
    let mut served = 0;
    let zeros = vec![0u8; ps];
    while served < pages {
        for event in uffd.read_events(&mut buf).unwrap() {
            match event.unwrap() {
                Event::Pagefault { addr, .. } => {
                    // SAFETY: the registered test mapping, which holds no Rust object.
                    match unsafe { uffd.copy(zeros.as_ptr().cast(), addr, ps, true) } {
                        Ok(_) => {}
                        Err(Error::CopyFailed(Errno::EEXIST)) => uffd.wake(addr, ps).unwrap(),
                        Err(e) => panic!("{e:?}"),
                    }
                    served += 1;
                }
                Event::Fork { .. }
                | Event::Remap { .. }
                | Event::Remove { .. }
                | Event::Unmap { .. } => panic!("unexpected event"),
            }
        }
    }
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
}

/// 0.9's write-protect test: register MISSING | WRITE_PROTECT, protect, a write faults with
/// `FaultKind::WriteProtected` (matched exhaustively, as 0.9 code with `linux5_13` does), and
/// removing the protection lets it through.
#[test]
fn write_protect_faults_are_reported_and_resolved() {
    let memory = Memory::Anonymous;
    let caps = userfaultfd::probe().unwrap();
    if !caps.features().contains(FeatureFlags::PAGEFAULT_FLAG_WP) {
        eprintln!("SKIPPED: the running kernel lacks PAGEFAULT_FLAG_WP");
        return;
    }
    let map = Arc::new(Mapping::new(memory, 1).unwrap());
    let ps = memory.page_size();
    let uffd = UffdBuilder::new()
        .require_features(FeatureFlags::PAGEFAULT_FLAG_WP)
        .create()
        .unwrap();
    uffd.register_with_mode(
        map.addr(),
        map.len(),
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
    )
    .unwrap();
    let zeros = vec![0u8; ps];
    // SAFETY: the registered test mapping, which holds no Rust object.
    unsafe { uffd.copy(zeros.as_ptr().cast(), map.addr(), ps, true) }.unwrap();
    uffd.write_protect(map.addr(), ps).unwrap();
    let writer = {
        let map = map.clone();
        thread::spawn(move || {
            // SAFETY: our mapping; a volatile write of plain memory.
            unsafe { map.addr().cast::<u8>().write_volatile(7) };
        })
    };
    match uffd.read_event().unwrap().unwrap() {
        Event::Pagefault { kind, rw, addr, .. } => {
            match kind {
                FaultKind::WriteProtected => {}
                FaultKind::Missing | FaultKind::Minor => panic!("{kind:?}"),
            }
            assert_eq!((rw, addr), (ReadWrite::Write, map.addr()));
            uffd.remove_write_protection(addr, ps, true).unwrap();
        }
        other => panic!("{other:?}"),
    }
    writer.join().unwrap();
    assert_eq!(map.read(0), 7);
}

/// 0.9 code that wraps one raw descriptor in two `Uffd`s (a handler that adopts the
/// descriptor it received, and a second `from_raw_fd` of the same number kept for another
/// thread): both close it when dropped. 0.9 ignored the second close's `EBADF` (or closed
/// whatever file had reused the number meanwhile); here the descriptor is an `OwnedFd`, and
/// a debug build aborts on the second close ("IO Safety violation: owned file descriptor
/// already closed"), a release build ignores it as 0.9 did. Run in a child process (this same
/// test binary, running the ignored helper below).
#[test]
fn one_raw_descriptor_in_two_uffds_aborts_a_debug_build() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "--nocapture"])
        .arg("double_wrap_child")
        .env("USERFAULTFD_COMPAT_DOUBLE_WRAP", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(debug_assertions) {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{:?}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains("owned file descriptor already closed"),
            "{stderr}"
        );
    } else {
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
    }
}

/// The child of the test above.
#[test]
#[ignore = "run in a child process by one_raw_descriptor_in_two_uffds_aborts_a_debug_build"]
fn double_wrap_child() {
    use std::os::fd::FromRawFd;
    assert_eq!(
        std::env::var("USERFAULTFD_COMPAT_DOUBLE_WRAP").as_deref(),
        Ok("1"),
        "run only by one_raw_descriptor_in_two_uffds_aborts_a_debug_build"
    );
    let fd = UffdBuilder::new().create().unwrap().into_raw_fd();
    // SAFETY: none — this is the 0.9 code under test: two owners of one descriptor.
    let (first, second) = unsafe {
        (
            userfaultfd::Uffd::from_raw_fd(fd),
            userfaultfd::Uffd::from_raw_fd(fd),
        )
    };
    drop(first);
    drop(second); // closes a closed descriptor: aborts a debug build
}

/// The fix the migration guide gives: one `from_raw_fd`, and `try_clone` (a `dup`) for each
/// further owner; every one is closed once.
#[test]
fn one_raw_descriptor_wrapped_once_and_cloned() {
    use std::os::fd::{AsRawFd, FromRawFd};
    let fd = UffdBuilder::new().create().unwrap().into_raw_fd();
    // SAFETY: `fd` is an open userfaultfd that nothing else owns.
    let first = unsafe { userfaultfd::Uffd::from_raw_fd(fd) };
    let second = first.try_clone().unwrap();
    assert_ne!(first.as_raw_fd(), second.as_raw_fd());
    drop(first);
    assert_eq!(second.features(), FeatureFlags::empty());
    drop(second);
}
