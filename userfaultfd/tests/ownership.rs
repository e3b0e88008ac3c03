//! Ownership of the descriptor: `into_raw_fd` gives it up without closing it (0.9 closed it a
//! second time), `OwnedFd` conversions both ways (adopting one checks that it is a
//! userfaultfd, and gives back what is not), `try_clone` shares the userfaultfd, and
//! `features()` is the same for a created and an adopted descriptor. `Uffd` and `Event` are `Send + Sync`.

mod support;

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use support::{join_timeout, new_uffd, pattern, spawn_named, wait_event, MemoryType, Region};

/// The features these tests require, which every kernel since 6.0 supports.
const SUPPORTED: &str = "features this kernel supports (6.0+)";
use userfaultfd::{Errno, Error, Event, FeatureFlags, Uffd};

// Compile-time: a `Uffd`, and the events read from it, can be shared by and moved between
// threads (a handler hands events to workers).
const _: fn() = || {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Uffd>();
    send_and_sync::<Event>();
};

/// What a descriptor of this process refers to.
fn fd_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Serves one fault on a fresh anonymous page through `handler` while `uffd` registered it.
fn serve_one_fault(registrar: &Uffd, handler: &Uffd) {
    let region = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
    registrar.register(region.addr(), region.len()).unwrap();
    let reader = {
        let region = Arc::clone(&region);
        spawn_named("reader", move || region.read_page(0))
    };
    let Event::Pagefault { addr, .. } = wait_event(handler) else {
        panic!("expected a page fault");
    };
    let data = pattern(3, region.page_size());
    // SAFETY: the missing page of our test mapping.
    unsafe { handler.copy(data.as_ptr().cast(), addr, data.len(), true) }.unwrap();
    assert!(join_timeout(reader) == data);
}

#[test]
fn into_raw_fd_leaves_the_descriptor_open() {
    let uffd = new_uffd(FeatureFlags::THREAD_ID).expect(SUPPORTED);
    let fd = uffd.into_raw_fd();
    // SAFETY: F_GETFD only reads the flags of `fd`, which we now own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0, "into_raw_fd closed the descriptor");
    assert_eq!(fd_target(fd), "anon_inode:[userfaultfd]");
    // It is ours to close, exactly once.
    // SAFETY: `fd` is open and owned by us.
    assert_eq!(unsafe { libc::close(fd) }, 0, "already closed");
}

#[test]
fn raw_fd_round_trip_keeps_the_userfaultfd() {
    let features = FeatureFlags::THREAD_ID | FeatureFlags::EVENT_REMOVE;
    let fd = new_uffd(features).expect(SUPPORTED).into_raw_fd();
    // SAFETY: `fd` is an open userfaultfd that nothing else owns.
    let uffd = unsafe { Uffd::from_raw_fd(fd) };
    assert_eq!(uffd.as_raw_fd(), fd);
    assert_eq!(uffd.features(), features, "features read from fdinfo");
    serve_one_fault(&uffd, &uffd);
}

#[test]
fn owned_fd_round_trip_keeps_the_userfaultfd() {
    let features = FeatureFlags::EXACT_ADDRESS;
    let uffd = new_uffd(features).expect(SUPPORTED);
    let fd = uffd.as_raw_fd();
    let owned: OwnedFd = uffd.into();
    assert_eq!(owned.as_raw_fd(), fd);
    assert_eq!(fd_target(fd), "anon_inode:[userfaultfd]");
    let uffd = Uffd::try_from(owned).unwrap();
    assert_eq!(uffd.features(), features);
    serve_one_fault(&uffd, &uffd);
}

/// The features of a created descriptor, and of the same descriptor adopted (read from
/// fdinfo), are what it enabled. `WP_ASYNC` implies `WP_UNPOPULATED`.
#[test]
fn created_and_adopted_descriptors_report_the_same_features() {
    let cases = [
        FeatureFlags::empty(),
        FeatureFlags::THREAD_ID,
        FeatureFlags::EVENT_REMAP | FeatureFlags::EVENT_REMOVE | FeatureFlags::EVENT_UNMAP,
        FeatureFlags::MISSING_SHMEM | FeatureFlags::MISSING_HUGETLBFS | FeatureFlags::SIGBUS,
        FeatureFlags::PAGEFAULT_FLAG_WP | FeatureFlags::WP_ASYNC,
        FeatureFlags::MINOR_SHMEM | FeatureFlags::MOVE | FeatureFlags::POISON,
    ];
    for features in cases {
        if support::kernel_lacks(features).is_some() {
            continue;
        }
        let uffd = new_uffd(features).expect(SUPPORTED);
        let mut expected = features;
        if features.contains(FeatureFlags::WP_ASYNC) {
            expected |= FeatureFlags::WP_UNPOPULATED;
        }
        assert_eq!(uffd.features(), expected, "created with {features:?}");
        let adopted = Uffd::try_from(OwnedFd::from(uffd)).unwrap();
        assert_eq!(
            adopted.features(),
            expected,
            "adopted, created with {features:?}"
        );
    }
}

/// Adopting an owned descriptor checks that it is a userfaultfd: another kind of file (a
/// device; an eventfd, which is an anonymous inode too) is refused with the reason and given
/// back open, so safe code never sends userfaultfd ioctls to it.
#[test]
fn adopting_another_kind_of_descriptor_is_refused() {
    // SAFETY: eventfd creates a descriptor, owned below.
    let eventfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(eventfd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that only we own.
    let eventfd = unsafe { OwnedFd::from_raw_fd(eventfd) };
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    for (what, fd) in [("/dev/null", null), ("an eventfd", eventfd)] {
        let raw = fd.as_raw_fd();
        let target = fd_target(raw);
        let rejected = Uffd::try_from(fd).unwrap_err();
        let err = rejected.error();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{what}: {err:?}"
        );
        assert_eq!(err.errno(), Some(Errno::EINVAL), "{what}");
        let text = err.to_string();
        assert!(text.contains("Uffd::try_from(OwnedFd)"), "{what}: {text}");
        assert!(text.contains("not a userfaultfd"), "{what}: {text}");
        let fd = rejected.into_inner();
        assert_eq!(fd.as_raw_fd(), raw, "{what}: given back");
        assert_eq!(fd_target(raw), target, "{what}: still open");
    }
}

/// A clone is another descriptor of the same userfaultfd: a range registered through the
/// original faults to the clone, also after the original is closed.
#[test]
fn try_clone_shares_the_userfaultfd() {
    let original = new_uffd(FeatureFlags::THREAD_ID).expect(SUPPORTED);
    let clone = original.try_clone().unwrap();
    assert_ne!(clone.as_raw_fd(), original.as_raw_fd());
    assert_eq!(clone.features(), original.features());
    // SAFETY: F_GETFD only reads the flags.
    let flags = unsafe { libc::fcntl(clone.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(flags & libc::FD_CLOEXEC, 0, "clones are close-on-exec");

    let region = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
    original.register(region.addr(), region.len()).unwrap();
    drop(original);
    let reader = {
        let region = Arc::clone(&region);
        spawn_named("reader", move || region.read_page(0))
    };
    let Event::Pagefault {
        addr, thread_id, ..
    } = wait_event(&clone)
    else {
        panic!("expected a page fault on the clone");
    };
    assert!(thread_id.is_some(), "the clone keeps the features");
    let data = pattern(4, region.page_size());
    // SAFETY: the missing page of our test mapping.
    unsafe { clone.copy(data.as_ptr().cast(), addr, data.len(), true) }.unwrap();
    assert!(join_timeout(reader) == data);

    // Both ways of handling work with clones in two threads at once.
    let uffd = new_uffd(FeatureFlags::empty()).expect(SUPPORTED);
    let handler = uffd.try_clone().unwrap();
    serve_one_fault(&uffd, &handler);
}
