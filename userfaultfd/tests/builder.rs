//! `UffdBuilder`: required features and ioctls are checked with the documented errors, the
//! descriptor flags are what was asked, everything `probe()` reports can be required, and
//! `user_mode_only` decides whether faults taken by the kernel reach the handler.
//! (Unprivileged creation and `EVENT_FORK` without CAP_SYS_PTRACE: privileges.rs.)

mod support;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use support::Region;
use support::{join_timeout, pattern, spawn_named, wait_event, MemoryType};
use userfaultfd::{Errno, Error, Event, FaultKind, FeatureFlags, IoctlFlags, ReadWrite};
use userfaultfd::{Uffd, UffdBuilder};

/// No kernel up to 6.18 defines bit 40; a future one that does fails this test, which then
/// needs a higher bit. (Every bit this crate names is supported by the 6.18 kernel the tests
/// run on, so an unknown bit is the only way to ask for something it lacks.)
const FUTURE_FEATURE: FeatureFlags = FeatureFlags::from_bits_retain(1 << 40);

#[test]
fn a_feature_the_kernel_lacks_is_unsupported_features() {
    let result = UffdBuilder::new()
        .require_features(FeatureFlags::THREAD_ID | FUTURE_FEATURE)
        .create();
    let err = result.unwrap_err();
    match &err {
        // Only the missing bit is named, not the supported THREAD_ID.
        Error::UnsupportedFeatures(missing) => assert_eq!(*missing, FUTURE_FEATURE),
        other => panic!("expected UnsupportedFeatures, got {other:?}"),
    }
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    let text = err.to_string();
    assert!(
        text.contains("does not support the required features") && text.contains("probe()"),
        "{text}"
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
}

/// Everything `probe()` offers can be required at once (EVENT_FORK only with CAP_SYS_PTRACE).
#[test]
fn every_probed_feature_can_be_required() {
    let caps = userfaultfd::probe().unwrap();
    assert!(caps
        .ioctls()
        .contains(IoctlFlags::API | IoctlFlags::REGISTER | IoctlFlags::UNREGISTER));
    assert!(caps.missing(caps.features()).is_empty());
    assert_eq!(caps.missing(FUTURE_FEATURE), FUTURE_FEATURE);
    let mut features = caps.features();
    if !support::privileged() {
        let all = UffdBuilder::new().require_features(features).create();
        support::assert_refused_for_privilege("EVENT_FORK", all, &["CAP_SYS_PTRACE"]);
        features -= FeatureFlags::EVENT_FORK;
    }
    let uffd = UffdBuilder::new()
        .require_features(features)
        .create()
        .unwrap();
    assert_eq!(uffd.features(), features);
}

#[test]
fn required_ioctls_are_checked_against_the_descriptor_ioctls() {
    let descriptor_ioctls = IoctlFlags::API | IoctlFlags::REGISTER | IoctlFlags::UNREGISTER;
    UffdBuilder::new()
        .require_ioctls(descriptor_ioctls)
        .create()
        .unwrap();
    // COPY is a range ioctl: `register` reports it, the descriptor does not.
    let err = UffdBuilder::new()
        .require_ioctls(IoctlFlags::COPY)
        .create()
        .unwrap_err();
    match &err {
        Error::UnsupportedIoctls(allowed) => {
            assert!(allowed.contains(descriptor_ioctls), "{allowed:?}");
            assert!(!allowed.contains(IoctlFlags::COPY), "{allowed:?}");
        }
        other => panic!("expected UnsupportedIoctls, got {other:?}"),
    }
    assert!(err
        .to_string()
        .contains("does not allow the required ioctls"));
}

fn fd_flags(uffd: &Uffd) -> (bool, bool) {
    // SAFETY: F_GETFD and F_GETFL only read the descriptor's flags.
    let (fd, fl) = unsafe {
        (
            libc::fcntl(uffd.as_raw_fd(), libc::F_GETFD),
            libc::fcntl(uffd.as_raw_fd(), libc::F_GETFL),
        )
    };
    assert!(fd >= 0 && fl >= 0);
    (fd & libc::FD_CLOEXEC != 0, fl & libc::O_NONBLOCK != 0)
}

#[test]
fn descriptor_flags_are_what_was_asked() {
    let plain = UffdBuilder::new().create().unwrap();
    assert_eq!(fd_flags(&plain), (false, false), "defaults");
    for (cloexec, nonblock) in [(true, false), (false, true), (true, true)] {
        let uffd = UffdBuilder::new()
            .close_on_exec(cloexec)
            .non_blocking(nonblock)
            .create()
            .unwrap();
        assert_eq!(fd_flags(&uffd), (cloexec, nonblock));
    }
    let nonblocking = UffdBuilder::default().non_blocking(true).create().unwrap();
    assert!(nonblocking.read_event().unwrap().is_none());
}

/// `read(2)` from a pipe into registered memory, on another thread: the kernel itself faults
/// on the page. Returns what `read` returned (or its `errno`).
fn start_kernel_access(region: &Arc<Region>) -> support::Waitable<Result<usize, Errno>> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: writes 10 bytes from a static buffer to our pipe, then closes its write end.
    unsafe {
        assert_eq!(libc::write(fds[1], b"from pipe!".as_ptr().cast(), 10), 10);
        libc::close(fds[1]);
    }
    let region = Arc::clone(region);
    spawn_named("kernel-access", move || {
        // SAFETY: reads into our registered page (which the kernel faults on), then closes
        // the pipe.
        let n = unsafe { libc::read(fds[0], region.addr(), 10) };
        let result = if n < 0 {
            Err(Errno::last())
        } else {
            Ok(n as usize)
        };
        // SAFETY: closes our read end.
        unsafe { libc::close(fds[0]) };
        result
    })
}

/// With `user_mode_only` (the default), a fault taken by the kernel is not reported: the
/// system call fails with EFAULT.
#[test]
fn user_mode_only_fails_kernel_faults_with_efault() {
    let uffd = UffdBuilder::new().non_blocking(true).create().unwrap();
    let region = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
    uffd.register(region.addr(), region.len()).unwrap();
    assert_eq!(
        join_timeout(start_kernel_access(&region)),
        Err(Errno::EFAULT)
    );
    assert!(
        uffd.read_event().unwrap().is_none(),
        "a kernel fault was reported"
    );
}

/// Without `user_mode_only` (root opens /dev/userfaultfd), the kernel's fault waits for the
/// handler like a user fault, and the system call completes.
#[test]
fn without_user_mode_only_kernel_faults_reach_the_handler() {
    let created = UffdBuilder::new()
        .user_mode_only(false)
        .non_blocking(true)
        .create();
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd");
    if !support::privileged() && sysctl.is_ok_and(|v| v.trim() == "0") {
        // Handling kernel faults is a privilege: the error names each way that refused.
        support::assert_refused_for_privilege(
            "user_mode_only(false)",
            created,
            &[
                "/dev/userfaultfd",
                "vm.unprivileged_userfaultfd is 0",
                "CAP_SYS_PTRACE",
            ],
        );
        return;
    }
    let uffd = created.expect("root handles kernel faults");
    let region = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
    uffd.register(region.addr(), region.len()).unwrap();
    let access = start_kernel_access(&region);
    let Event::Pagefault { kind, rw, addr, .. } = wait_event(&uffd) else {
        panic!("expected the kernel's page fault");
    };
    assert_eq!((kind, rw), (FaultKind::Missing, ReadWrite::Write));
    let data = pattern(0, region.page_size());
    // SAFETY: the missing page of our test mapping.
    unsafe { uffd.copy(data.as_ptr().cast(), addr, data.len(), true) }.unwrap();
    assert_eq!(join_timeout(access), Ok(10));
    let page = region.read_page(0);
    assert_eq!(&page[..10], b"from pipe!");
    assert!(page[10..] == data[10..]);
}
