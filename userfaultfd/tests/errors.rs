//! Every `errno` that the kernel's userfaultfd ioctls return (fs/userfaultfd.c,
//! mm/userfaultfd.c) and that a caller can provoke maps to the documented `Error` variant, with
//! a `Display` that names the operation and says what it means.
//! (ZEROPAGE, WRITEPROTECT, CONTINUE, POISON and MOVE cases are in their own files.)

mod support;

use std::io;

use support::{pattern, uffd_for, MemoryType, Region};
use userfaultfd::{Errno, Error, FeatureFlags, RegisterMode, Uffd};

/// Copies page `i` of `region` with `pattern(seed)`.
fn copy_page(uffd: &Uffd, region: &Region, i: usize, seed: usize) -> userfaultfd::Result<usize> {
    let data = pattern(seed, region.page_size());
    // SAFETY: the destination is a page of a test mapping that holds no Rust object.
    unsafe {
        uffd.copy(
            data.as_ptr().cast(),
            region.page(i).cast(),
            data.len(),
            true,
        )
    }
}

#[track_caller]
fn assert_display(e: &Error, needles: &[&str]) {
    let text = e.to_string();
    for needle in needles {
        assert!(
            text.contains(needle),
            "{e:?}: message {text:?} lacks {needle:?}"
        );
    }
}

#[test]
fn copy_onto_a_populated_page_is_eexist_and_keeps_the_page() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        uffd.register(region.addr(), region.len()).unwrap();
        assert_eq!(copy_page(&uffd, &region, 0, 1).unwrap(), region.page_size());
        let err = copy_page(&uffd, &region, 0, 2).unwrap_err();
        assert!(
            matches!(err, Error::CopyFailed(Errno::EEXIST)),
            "{memory:?}: {err:?}"
        );
        assert_eq!(err.errno(), Some(Errno::EEXIST));
        assert_display(
            &err,
            &["UFFDIO_COPY", "EEXIST", "already populated", "wake"],
        );
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::AlreadyExists);
        assert!(
            region.read_page(0) == pattern(1, region.page_size()),
            "{memory:?}: the failed copy must leave the page as it was"
        );
    }
}

#[test]
fn copy_over_a_populated_second_page_is_partially_copied() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        copy_page(&uffd, &region, 1, 9).unwrap();
        let mut data = pattern(3, ps);
        data.extend(pattern(4, ps));
        // SAFETY: the destination is our test mapping.
        let result = unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), 2 * ps, true) };
        let err = result.unwrap_err();
        match err {
            Error::PartiallyCopied(done) => assert_eq!(done, ps, "{memory:?}"),
            other => panic!("{memory:?}: expected PartiallyCopied({ps}), got {other:?}"),
        }
        assert_eq!(err.errno(), Some(Errno::EAGAIN));
        assert_display(&err, &[&format!("{ps} bytes done"), "start + "]);
        assert!(region.read_page(0) == pattern(3, ps), "{memory:?}: page 0");
        assert!(region.read_page(1) == pattern(9, ps), "{memory:?}: page 1");
    }
}

#[test]
fn copy_outside_a_registered_range_is_enoent() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        // Nothing registered yet.
        let err = copy_page(&uffd, &region, 0, 1).unwrap_err();
        assert!(
            matches!(err, Error::CopyFailed(Errno::ENOENT)),
            "{memory:?}: {err:?}"
        );
        assert_display(&err, &["UFFDIO_COPY", "ENOENT", "not entirely inside"]);
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);

        // Only page 0 registered: a copy of both pages crosses the end of the registered range.
        uffd.register(region.addr(), ps).unwrap();
        let data = vec![7u8; 2 * ps];
        // SAFETY: the destination is our test mapping.
        let result = unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), 2 * ps, true) };
        assert!(
            matches!(result, Err(Error::CopyFailed(Errno::ENOENT))),
            "{memory:?}: {result:?}"
        );
    }
}

#[test]
fn copy_with_a_bad_range_is_einval() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let ps = region.page_size();
        uffd.register(region.addr(), region.len()).unwrap();
        let data = vec![1u8; 2 * ps];
        let src = data.as_ptr().cast();
        let base = region.addr();
        let cases: [(&str, *mut libc::c_void, usize); 4] = [
            ("unaligned destination", base.wrapping_byte_add(1), ps),
            ("empty length", base, 0),
            ("length not a multiple of the page size", base, 4096 + 1),
            ("overflowing length", base, usize::MAX - 4095),
        ];
        for (what, dst, len) in cases {
            // SAFETY: each case is rejected by validation before anything is copied.
            let result = unsafe { uffd.copy(src, dst, len, true) };
            assert!(
                matches!(result, Err(Error::CopyFailed(Errno::EINVAL))),
                "{memory:?}, {what}: {result:?}"
            );
        }
        if memory == MemoryType::Hugetlb {
            // A base page on hugetlbfs: the kernel wants whole 2 MiB pages.
            // SAFETY: rejected by validation.
            let result = unsafe { uffd.copy(src, base, 4096, true) };
            let err = result.unwrap_err();
            assert!(matches!(err, Error::CopyFailed(Errno::EINVAL)), "{err:?}");
            assert_display(&err, &["UFFDIO_COPY", "EINVAL", "huge-page aligned"]);
        }
        // The page is still missing: a valid copy succeeds.
        assert_eq!(copy_page(&uffd, &region, 0, 5).unwrap(), ps);
    }
}

#[test]
fn copy_from_an_unreadable_source_is_efault() {
    let memory = MemoryType::Anonymous;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let region = Region::new(memory, 1).unwrap();
    let unreadable = Region::new(memory, 1).unwrap();
    // SAFETY: changes the protection of our own mapping, which nothing reads.
    let r = unsafe { libc::mprotect(unreadable.addr(), unreadable.len(), libc::PROT_NONE) };
    assert_eq!(r, 0);
    uffd.register(region.addr(), region.len()).unwrap();
    // SAFETY: the destination is our test mapping; the source is unreadable, which the kernel
    // reports.
    let result = unsafe { uffd.copy(unreadable.addr(), region.addr(), region.len(), true) };
    let err = result.unwrap_err();
    assert!(matches!(err, Error::CopyFailed(Errno::EFAULT)), "{err:?}");
    assert_display(
        &err,
        &["UFFDIO_COPY", "EFAULT", "source range is not readable"],
    );
}

#[test]
fn register_errors() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        let base = region.addr();
        let einval_cases: [(&str, *mut libc::c_void, usize, RegisterMode); 4] = [
            (
                "unaligned start",
                base.wrapping_byte_add(4096 / 2),
                ps,
                RegisterMode::MISSING,
            ),
            ("empty length", base, 0, RegisterMode::MISSING),
            ("empty mode", base, ps, RegisterMode::empty()),
            (
                "unknown mode bit",
                base,
                ps,
                RegisterMode::from_bits_retain(1 << 40),
            ),
        ];
        for (what, start, len, mode) in einval_cases {
            let err = uffd.register_with_mode(start, len, mode).unwrap_err();
            assert!(
                matches!(err, Error::SystemError(Errno::EINVAL)),
                "{memory:?}, {what}: {err:?}"
            );
            assert_display(
                &err,
                &["userfaultfd system call failed", "EINVAL", "page aligned"],
            );
        }
        if memory == MemoryType::Hugetlb {
            let err = uffd.register(base, 4096).unwrap_err();
            assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
        }
        if memory == MemoryType::Anonymous {
            // MINOR faults need a page cache.
            let err = uffd
                .register_with_mode(base, ps, RegisterMode::MINOR)
                .unwrap_err();
            assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
            assert_display(&err, &["MINOR only on shmem/hugetlbfs"]);
        }

        // A range registered with another userfaultfd is busy.
        uffd.register(base, region.len()).unwrap();
        let other = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()).unwrap();
        let err = other.register(base, ps).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::EBUSY)),
            "{memory:?}: {err:?}"
        );
        assert_display(&err, &["UFFDIO_REGISTER", "EBUSY", "another userfaultfd"]);
        // Registering again with the same descriptor is allowed (it updates the mode).
        uffd.register(base, region.len()).unwrap();
    }
}

#[test]
fn register_of_unmapped_memory_is_einval() {
    let Some(uffd) = uffd_for(
        MemoryType::Anonymous,
        RegisterMode::MISSING,
        FeatureFlags::empty(),
    ) else {
        return;
    };
    let mut region = Region::new(MemoryType::Anonymous, 1).unwrap();
    // SAFETY: unmaps our own mapping; the region no longer owns it.
    unsafe { libc::munmap(region.addr(), region.len()) };
    let (start, len) = (region.addr(), region.len());
    region.forget_mapping();
    let err = uffd.register(start, len).unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
    assert_display(&err, &["a mapping must exist in the range"]);
}

#[test]
fn register_of_a_read_only_shared_mapping_is_eperm() {
    let Some(uffd) = uffd_for(
        MemoryType::Shmem,
        RegisterMode::MISSING,
        FeatureFlags::empty(),
    ) else {
        return;
    };
    // A memfd sealed against writing can only be mapped shared without VM_MAYWRITE.
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"sealed".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: sizes and seals our new memfd, maps it read-only, and closes it.
    let ptr = unsafe {
        assert_eq!(libc::ftruncate(fd, 4096), 0);
        assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE), 0);
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::close(fd);
        ptr
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    let err = uffd.register(ptr, 4096).unwrap_err();
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(ptr, 4096) };
    assert!(matches!(err, Error::SystemError(Errno::EPERM)), "{err:?}");
    assert_display(&err, &["UFFDIO_REGISTER", "EPERM", "not writable"]);
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::PermissionDenied);
}

/// The running kernel's (major, minor) version, from uname.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next().unwrap().parse().unwrap();
    let minor = parts.next().unwrap().parse().unwrap();
    (major, minor)
}

#[test]
fn unregister_errors() {
    let memory = MemoryType::Anonymous;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let region = Region::new(memory, 2).unwrap();
    let base = region.addr();
    // A range never registered unregisters fine.
    uffd.unregister(base, region.len()).unwrap();
    let unaligned = base.wrapping_byte_add(1);
    for (what, start, len) in [("unaligned", unaligned, 4096), ("empty", base, 0)] {
        let err = uffd.unregister(start, len).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::EINVAL)),
            "{what}: {err:?}"
        );
        assert_display(
            &err,
            &[
                "userfaultfd system call failed",
                "EINVAL",
                "UFFDIO_UNREGISTER",
            ],
        );
    }
    // Since Linux 6.17, a range registered with another userfaultfd is refused.
    let other = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()).unwrap();
    other.register(base, region.len()).unwrap();
    let result = uffd.unregister(base, region.len());
    if kernel_version() >= (6, 17) {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
        assert_display(&err, &["registered with another userfaultfd"]);
    } else {
        eprintln!("kernel before 6.17: unregistering another descriptor's range is allowed");
    }
}

#[test]
fn wake_errors() {
    let memory = MemoryType::Anonymous;
    let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
        return;
    };
    let region = Region::new(memory, 1).unwrap();
    // No registration needed: waking nobody succeeds.
    uffd.wake(region.addr(), region.len()).unwrap();
    let err = uffd.wake(region.addr(), 0).unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
    assert_display(
        &err,
        &["userfaultfd system call failed", "EINVAL", "page aligned"],
    );
    let unaligned = region.addr().wrapping_byte_add(8);
    let err = uffd.wake(unaligned, 4096).unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
}

/// Each variant's message names its operation; the `errno` and `io::Error` agree.
#[test]
fn every_variant_names_its_operation() {
    let cases: Vec<(Error, &str)> = vec![
        (Error::CopyFailed(Errno::ENOMEM), "UFFDIO_COPY"),
        (Error::ZeropageFailed(Errno::ENOMEM), "UFFDIO_ZEROPAGE"),
        (
            Error::SystemError(Errno::EINVAL),
            "userfaultfd system call failed",
        ),
        (Error::SystemError(Errno::EINVAL), "UFFDIO_API"),
        (Error::SystemError(Errno::EBUSY), "UFFDIO_REGISTER"),
        (Error::SystemError(Errno::ENOENT), "UFFDIO_WRITEPROTECT"),
        (
            Error::SystemError(Errno::EAGAIN),
            "read every pending event",
        ),
        (Error::ContinueFailed(Errno::EFAULT), "UFFDIO_CONTINUE"),
        (Error::PoisonFailed(Errno::EEXIST), "UFFDIO_POISON"),
        (Error::MoveFailed(Errno::EBUSY), "UFFDIO_MOVE"),
        (Error::SystemError(Errno::EBADF), "not open"),
        (Error::PartiallyCopied(4096), "4096 bytes done"),
        (Error::PartiallyCopied(0), "nothing done yet"),
        (Error::ReadEof, "end of file"),
        (Error::UnrecognizedEvent(0x42), "0x42"),
        (
            Error::ForkWithoutDescriptor(-1),
            "fork event without a descriptor (ufd -1)",
        ),
        (
            Error::IncompleteMsg {
                read: 5,
                expected: 32,
            },
            "5 of 32 bytes",
        ),
        (
            Error::UnsupportedFeatures(FeatureFlags::from_bits_retain(1 << 40)),
            "does not support the required features",
        ),
        (
            Error::UnsupportedIoctls(userfaultfd::IoctlFlags::API),
            "does not allow the required ioctls",
        ),
        (
            Error::OpenDevUserfaultfd(io::Error::from_raw_os_error(libc::EIO)),
            "/dev/userfaultfd",
        ),
        (
            Error::CreateFailed {
                device: Errno::EACCES,
                syscall: Errno::EPERM,
                unprivileged_userfaultfd: Some(0),
            },
            "vm.unprivileged_userfaultfd is 0",
        ),
        (
            Error::Io {
                operation: "fcntl(F_GETFL) on the userfaultfd (AsyncUffd::new)",
                source: io::Error::from_raw_os_error(libc::EBADF),
            },
            "fcntl(F_GETFL) on the userfaultfd (AsyncUffd::new) failed",
        ),
    ];
    for (err, needle) in cases {
        assert_display(&err, &[needle]);
        if let Some(errno) = err.errno() {
            let io = io::Error::from(err);
            assert_eq!(
                io.kind(),
                io::Error::from_raw_os_error(errno.raw()).kind(),
                "{io}"
            );
            assert!(io.to_string().contains(needle), "{io}");
        }
    }
}

/// A mapping of a regular file is neither anonymous, shmem nor hugetlbfs.
#[test]
fn register_of_a_regular_file_mapping_is_einval() {
    let Some(uffd) = uffd_for(
        MemoryType::Anonymous,
        RegisterMode::MISSING,
        FeatureFlags::empty(),
    ) else {
        return;
    };
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    // The executable must be on a filesystem that is not shmem: a tmpfs file (an initramfs, a
    // tmpfs /tmp) is shmem, which userfaultfd does support.
    // SAFETY: `statfs` is plain data; fstatfs fills it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a writable statfs.
    let r = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&file), &mut fs) };
    assert_eq!(r, 0, "fstatfs: {}", std::io::Error::last_os_error());
    if fs.f_type == libc::TMPFS_MAGIC {
        support::machine_lacks("the test executable on a filesystem other than tmpfs");
        return;
    }
    // SAFETY: a new read-only private mapping of the test executable, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    let result = uffd.register(ptr, 4096);
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(ptr, 4096) };
    let err = result.unwrap_err();
    assert!(matches!(err, Error::SystemError(Errno::EINVAL)), "{err:?}");
    assert_display(&err, &["the memory type must support the mode"]);
}

/// A shmem mapping longer than its file: a copy past the end of the file is EFAULT.
#[test]
fn copy_beyond_the_end_of_a_shmem_file_is_efault() {
    let Some(uffd) = uffd_for(
        MemoryType::Shmem,
        RegisterMode::MISSING,
        FeatureFlags::empty(),
    ) else {
        return;
    };
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"short".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: sizes our memfd to one page and maps two pages of it, then closes it (the
    // mapping keeps the file).
    let ptr = unsafe {
        assert_eq!(libc::ftruncate(fd, 4096), 0);
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            2 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::close(fd);
        ptr
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    uffd.register(ptr, 2 * 4096).unwrap();
    let data = [3u8; 4096];
    let second_page = ptr.wrapping_byte_add(4096);
    // SAFETY: our mapping; the kernel refuses the page past the end of the file.
    let beyond = unsafe { uffd.copy(data.as_ptr().cast(), second_page, 4096, true) };
    // SAFETY: the first page is inside the file and missing.
    let inside = unsafe { uffd.copy(data.as_ptr().cast(), ptr, 4096, true) };
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(ptr, 2 * 4096) };
    let err = beyond.unwrap_err();
    assert!(matches!(err, Error::CopyFailed(Errno::EFAULT)), "{err:?}");
    assert_display(&err, &["beyond the end of the shmem/hugetlbfs file"]);
    assert_eq!(inside.unwrap(), 4096);
}
