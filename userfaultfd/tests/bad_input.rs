//! Bad input, as a table: every public operation against every kind of bad argument gives the
//! documented error (variant, errno, and a message naming the operation), never a panic, and
//! leaks no descriptor.
//!
//! One `#[test]` runs the whole table so that the descriptor count of the process, taken
//! before and after, is not disturbed by other tests running in parallel threads.

mod support;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_void;
use support::{kernel_lacks, new_uffd, MemoryType, Region};
use userfaultfd::{
    ContinueMode, CopyMode, Errno, Error, FeatureFlags, MoveMode, RegisterMode, Uffd,
};

/// One public operation, called on `[start, start + len)`.
struct Op {
    /// The method.
    name: &'static str,
    /// What its error messages must name.
    ioctl: &'static str,
    /// The `Debug` prefix of its failure variant.
    variant: &'static str,
    call: fn(&Uffd, *mut c_void, usize, &Scratch) -> Result<(), Error>,
}

/// Valid memory for the arguments that are not under test (copy and move sources).
struct Scratch {
    source: Region,
}

fn ops() -> Vec<Op> {
    // SAFETY (for every unsafe call below): the destinations are test mappings that hold no
    // Rust object, and the source is the scratch mapping, readable for any length used.
    vec![
        Op {
            name: "register",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.register(s, l).map(drop),
        },
        Op {
            name: "register_with_mode",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.register_with_mode(s, l, RegisterMode::MISSING).map(drop),
        },
        Op {
            name: "unregister",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.unregister(s, l),
        },
        Op {
            name: "copy",
            ioctl: "UFFDIO_COPY",
            variant: "CopyFailed",
            // SAFETY: see above.
            call: |u, s, l, x| unsafe { u.copy(x.source.addr(), s, l, true) }.map(drop),
        },
        Op {
            name: "copy_with_mode",
            ioctl: "UFFDIO_COPY",
            variant: "CopyFailed",
            call: |u, s, l, x| {
                // SAFETY: see above.
                unsafe { u.copy_with_mode(x.source.addr(), s, l, CopyMode::DONTWAKE) }.map(drop)
            },
        },
        Op {
            name: "zeropage",
            ioctl: "UFFDIO_ZEROPAGE",
            variant: "ZeropageFailed",
            // SAFETY: see above.
            call: |u, s, l, _| unsafe { u.zeropage(s, l, true) }.map(drop),
        },
        Op {
            name: "wake",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.wake(s, l),
        },
        Op {
            name: "write_protect",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.write_protect(s, l),
        },
        Op {
            name: "remove_write_protection",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.remove_write_protection(s, l, true),
        },
        Op {
            name: "r#continue",
            ioctl: "userfaultfd system call",
            variant: "SystemError",
            call: |u, s, l, _| u.r#continue(s, l, true).map(drop),
        },
        Op {
            name: "continue_with_mode",
            ioctl: "UFFDIO_CONTINUE",
            variant: "ContinueFailed",
            call: |u, s, l, _| u.continue_with_mode(s, l, ContinueMode::DONTWAKE).map(drop),
        },
        Op {
            name: "poison",
            ioctl: "UFFDIO_POISON",
            variant: "PoisonFailed",
            call: |u, s, l, _| u.poison(s, l, true).map(drop),
        },
        Op {
            name: "r#move",
            ioctl: "UFFDIO_MOVE",
            variant: "MoveFailed",
            call: |u, s, l, x| {
                // SAFETY: see above; the source is ours to lose.
                unsafe { u.r#move(x.source.addr(), s, l, MoveMode::ALLOW_SRC_HOLES) }.map(drop)
            },
        },
    ]
}

/// What an operation must give.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Ok,
    Err(Errno),
}

/// How many (case, operation) pairs were checked.
static CHECKED: AtomicUsize = AtomicUsize::new(0);

/// Checks `result` against `expect`, naming the case in every failure.
fn check(case: &str, op: &Op, result: Result<(), Error>, expect: Expect) {
    CHECKED.fetch_add(1, Ordering::Relaxed);
    match (result, expect) {
        (Ok(()), Expect::Ok) => {}
        (Ok(()), Expect::Err(e)) => panic!("{case}: {} succeeded; expected {e}", op.name),
        (Err(err), Expect::Ok) => panic!("{case}: {} failed: {err}; expected success", op.name),
        (Err(err), Expect::Err(e)) => {
            assert_eq!(err.errno(), Some(e), "{case}: {}: {err:?}", op.name);
            let debug = format!("{err:?}");
            assert!(
                debug.starts_with(op.variant),
                "{case}: {}: {debug}",
                op.name
            );
            let shown = err.to_string();
            assert!(shown.starts_with(op.ioctl), "{case}: {}: {shown}", op.name);
        }
    }
}

/// Entries of /proc/self/fd.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn every_operation_rejects_every_kind_of_bad_input() {
    let needed = FeatureFlags::PAGEFAULT_FLAG_WP
        | FeatureFlags::POISON
        | FeatureFlags::MOVE
        | FeatureFlags::MINOR_SHMEM;
    if kernel_lacks(needed).is_some() {
        return;
    }
    let fds_before = open_descriptors();
    let ops = ops();
    let scratch = Scratch {
        source: Region::new(MemoryType::Anonymous, 4).unwrap(),
    };
    let einval = Expect::Err(Errno::EINVAL);

    // Ranges the kernel rejects before looking at any mapping: EINVAL from every operation.
    {
        let uffd = new_uffd(FeatureFlags::PAGEFAULT_FLAG_WP).unwrap();
        let region = Region::new(MemoryType::Anonymous, 2).unwrap();
        let ps = region.page_size();
        let base = region.addr();
        // SAFETY: one byte into our own mapping.
        let unaligned = unsafe { region.ptr().add(1) }.cast::<c_void>();
        let cases: [(&str, *mut c_void, usize); 4] = [
            ("unaligned start", unaligned, ps),
            ("unaligned length", base, ps + 1),
            ("zero length", base, 0),
            ("start + len overflows", base, usize::MAX - ps + 1),
        ];
        for (case, start, len) in cases {
            for op in &ops {
                let result = (op.call)(&uffd, start, len, &scratch);
                check(case, op, result, einval);
            }
        }
    }

    // A mapped range registered with no descriptor.
    {
        let uffd = new_uffd(FeatureFlags::PAGEFAULT_FLAG_WP).unwrap();
        let region = Region::new(MemoryType::Anonymous, 1).unwrap();
        let enoent = Expect::Err(Errno::ENOENT);
        for op in &ops {
            let expect = match op.name {
                // Registering is the one thing to do with an unregistered range.
                "register" | "register_with_mode" => continue,
                // Unregistering or waking a range that has nothing is harmless: success.
                "unregister" | "wake" => Expect::Ok,
                // MOVE's destination must be registered with this descriptor.
                "r#move" => einval,
                _ => enoent,
            };
            let result = (op.call)(&uffd, region.addr(), region.len(), &scratch);
            check("unregistered range", op, result, expect);
        }
    }

    // Memory types that do not support the operation or mode.
    {
        let anon = Region::new(MemoryType::Anonymous, 1).unwrap();
        let uffd = new_uffd(FeatureFlags::MINOR_SHMEM).unwrap();
        let err = uffd
            .register_with_mode(anon.addr(), anon.len(), RegisterMode::MINOR)
            .unwrap_err();
        check("MINOR on anonymous memory", &ops[1], Err(err), einval);
        uffd.register(anon.addr(), anon.len()).unwrap();
        let cont = ops.iter().find(|o| o.name == "r#continue").unwrap();
        let result = (cont.call)(&uffd, anon.addr(), anon.len(), &scratch);
        check("CONTINUE on anonymous memory", cont, result, einval);

        let shmem = Region::new(MemoryType::Shmem, 1).unwrap();
        uffd.register(shmem.addr(), shmem.len()).unwrap();
        let mv = ops.iter().find(|o| o.name == "r#move").unwrap();
        let result = (mv.call)(&uffd, shmem.addr(), shmem.len(), &scratch);
        check("MOVE into shmem", mv, result, einval);

        if let Some(huge) = Region::new(MemoryType::Hugetlb, 1) {
            let uffd = new_uffd(FeatureFlags::MISSING_HUGETLBFS).unwrap();
            uffd.register(huge.addr(), huge.len()).unwrap();
            let zp = ops.iter().find(|o| o.name == "zeropage").unwrap();
            let result = (zp.call)(&uffd, huge.addr(), huge.len(), &scratch);
            check("ZEROPAGE on hugetlbfs", zp, result, einval);
        }
    }

    // A range registered with another descriptor.
    {
        let owner = new_uffd(FeatureFlags::empty()).unwrap();
        let other = new_uffd(FeatureFlags::empty()).unwrap();
        let region = Region::new(MemoryType::Anonymous, 1).unwrap();
        owner.register(region.addr(), region.len()).unwrap();
        for op in ops.iter().filter(|o| o.name.starts_with("register")) {
            let result = (op.call)(&other, region.addr(), region.len(), &scratch);
            check(
                "range of another descriptor",
                op,
                result,
                Expect::Err(Errno::EBUSY),
            );
        }
    }

    // Descriptors that are not a usable userfaultfd: another file (ENOTTY) and a number that
    // is not open (EBADF; above RLIMIT_NOFILE, so nothing can have it).
    {
        let region = Region::new(MemoryType::Anonymous, 1).unwrap();
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        // SAFETY: deliberately not a userfaultfd (`Uffd::try_from` would refuse it), to check
        // that the operations fail cleanly: /dev/null answers every ioctl with ENOTTY and
        // changes nothing. The `Uffd` owns the descriptor and closes it.
        let not_uffd = unsafe { Uffd::from_raw_fd(null.into_raw_fd()) };
        // SAFETY: the number is not open, and is given up below without being closed.
        let closed = unsafe { Uffd::from_raw_fd(1 << 30) };
        for (case, uffd, errno) in [
            (
                "/dev/null adopted as a userfaultfd",
                &not_uffd,
                Errno::ENOTTY,
            ),
            (
                "a descriptor number that is not open",
                &closed,
                Errno::EBADF,
            ),
        ] {
            for op in &ops {
                let result = (op.call)(uffd, region.addr(), region.len(), &scratch);
                check(case, op, result, Expect::Err(errno));
            }
        }
        let _ = closed.into_raw_fd();
    }

    assert_eq!(open_descriptors(), fds_before, "descriptors leaked");
    // 4 range cases and 2 bad descriptors x 13 operations, 11 unregistered-range cases, 4
    // memory-type cases, 2 EBUSY cases.
    assert_eq!(CHECKED.load(Ordering::Relaxed), 6 * 13 + 11 + 4 + 2);
}
