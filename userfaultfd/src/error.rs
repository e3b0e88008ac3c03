//! Errors: which operation failed, with which `errno`, and what that means for the caller.

use std::fmt;
use std::io;

use crate::{Errno, FeatureFlags, IoctlFlags};

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong.
///
/// Each variant names the operation; [`Error::errno`] gives the kernel's `errno` where there is
/// one, and `Display` says what the operation was, the `errno`, and what it means for the caller
/// (for `EEXIST` from a copy: the page is already populated, wake the faulting thread).
///
/// The variants of userfaultfd 0.9 are kept with their meaning. Operations that 0.9 reported
/// as `SystemError(errno)` (API, register, unregister, wake, write-protect) now have variants
/// of their own, so the message can name them; `errno()` returns the same value as before.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `UFFDIO_COPY` failed without copying anything.
    CopyFailed(Errno),

    /// A `COPY`, `ZEROPAGE`, `CONTINUE`, `POISON` or `MOVE` did this many bytes (always more
    /// than zero), then stopped with `EAGAIN`: a page further on was already populated, or a
    /// non-cooperative event became pending. The bytes done are in place (and their waiters
    /// woken unless the mode said otherwise); the rest of the range is untouched.
    PartiallyCopied(usize),

    /// `read(2)` returned a length that is not a whole number of `uffd_msg`s.
    IncompleteMsg {
        /// Bytes of the trailing partial message.
        read: usize,
        /// The size of one message (32).
        expected: usize,
    },

    /// `read(2)` from the userfaultfd failed (other than `EINTR`, which is retried, and
    /// `EAGAIN` on a non-blocking descriptor, which is "no event").
    SystemError(Errno),

    /// `read(2)` returned end of file.
    ReadEof,

    /// The kernel sent an event code this crate does not know.
    UnrecognizedEvent(u8),

    /// [`UffdBuilder::require_ioctls`](crate::UffdBuilder::require_ioctls) asked for ioctls
    /// the descriptor does not allow; these are the ones it does allow.
    UnsupportedIoctls(IoctlFlags),

    /// `UFFDIO_ZEROPAGE` failed without zeroing anything.
    ZeropageFailed(Errno),

    /// `/dev/userfaultfd` exists but could not be opened for a reason other than permissions
    /// (for those, creation falls back to the `userfaultfd(2)` system call).
    OpenDevUserfaultfd(io::Error),

    /// [`UffdBuilder::require_features`](crate::UffdBuilder::require_features) asked for
    /// features the running kernel does not support; these are the missing ones.
    UnsupportedFeatures(FeatureFlags),

    /// No way of creating a userfaultfd worked. Both ways are tried: `/dev/userfaultfd`
    /// (Linux 6.1+), then the `userfaultfd(2)` system call.
    CreateFailed {
        /// Why `/dev/userfaultfd` failed: `ENOENT` when it does not exist, `EACCES`/`EPERM` when
        /// its file mode does not let this process open it.
        device: Errno,
        /// Why the system call failed: `EPERM` when `vm.unprivileged_userfaultfd` is 0 and the
        /// process lacks `CAP_SYS_PTRACE` (and user-mode-only was not requested), `ENOSYS`
        /// when the kernel has no userfaultfd.
        syscall: Errno,
        /// The value of `/proc/sys/vm/unprivileged_userfaultfd` when the calls failed, if it
        /// could be read.
        unprivileged_userfaultfd: Option<u8>,
    },

    /// The `UFFDIO_API` handshake failed.
    ApiFailed(Errno),

    /// `UFFDIO_REGISTER` failed; nothing in the range was registered.
    RegisterFailed(Errno),

    /// `UFFDIO_UNREGISTER` failed.
    UnregisterFailed(Errno),

    /// `UFFDIO_WAKE` failed.
    WakeFailed(Errno),

    /// `UFFDIO_WRITEPROTECT` failed (setting or removing write protection).
    WriteProtectFailed(Errno),

    /// `UFFDIO_CONTINUE` failed without mapping anything.
    ContinueFailed(Errno),

    /// `UFFDIO_POISON` failed without poisoning anything.
    PoisonFailed(Errno),

    /// `UFFDIO_MOVE` failed without moving anything.
    MoveFailed(Errno),

    /// The `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (dirty-page tracking) failed, or the
    /// pagemap file could not be opened.
    PagemapScanFailed(Errno),

    /// An argument was rejected before any system call, because the kernel would misread it
    /// silently (an unaligned length that `PAGEMAP_SCAN` rounds up) or the call could not work
    /// (a blocking descriptor for the async reader). `errno()` is `EINVAL`.
    InvalidArgument {
        /// The operation, e.g. `"DirtyTracker::collect_written"`.
        operation: &'static str,
        /// What is wrong and what to do.
        reason: &'static str,
    },
}

/// The operations errors are reported for, to pick the explanation of an `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Api,
    Register,
    Unregister,
    Wake,
    WriteProtect,
    Copy,
    Zeropage,
    Continue,
    Poison,
    Move,
    Read,
    PagemapScan,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Api => "UFFDIO_API",
            Op::Register => "UFFDIO_REGISTER",
            Op::Unregister => "UFFDIO_UNREGISTER",
            Op::Wake => "UFFDIO_WAKE",
            Op::WriteProtect => "UFFDIO_WRITEPROTECT",
            Op::Copy => "UFFDIO_COPY",
            Op::Zeropage => "UFFDIO_ZEROPAGE",
            Op::Continue => "UFFDIO_CONTINUE",
            Op::Poison => "UFFDIO_POISON",
            Op::Move => "UFFDIO_MOVE",
            Op::Read => "read from the userfaultfd",
            Op::PagemapScan => "PAGEMAP_SCAN",
        }
    }

    /// Whether the operation places pages and follows the result-field protocol.
    fn fills_pages(self) -> bool {
        matches!(
            self,
            Op::Copy | Op::Zeropage | Op::Continue | Op::Poison | Op::Move
        )
    }
}

/// What an `errno` means for the caller of `op`, as the kernel's fs/userfaultfd.c and
/// mm/userfaultfd.c return them (tests/errors.rs provokes each one a caller can).
fn explain(op: Op, e: Errno) -> &'static str {
    match (op, e) {
        (Op::Copy | Op::Zeropage | Op::Continue | Op::Poison, Errno::EEXIST) => {
            "the destination page is already populated (another thread or a racing operation \
             resolved it); wake the faulting thread with Uffd::wake"
        }
        (Op::Move, Errno::EEXIST) => {
            "the destination page is already populated; wake the faulting thread with Uffd::wake"
        }
        (op, Errno::EAGAIN) if op.fills_pages() || op == Op::WriteProtect => {
            "a non-cooperative event (fork, mremap, madvise, munmap) is pending: read every \
             pending event from the userfaultfd, then retry"
        }
        (op, Errno::ENOENT) if op.fills_pages() => {
            if op == Op::Move {
                "the source has a hole (pass MoveMode::ALLOW_SRC_HOLES to allow it) or no mapping"
            } else {
                "the destination range is not entirely inside one range registered with this \
                 userfaultfd (unregistered, unmapped, or crossing a mapping boundary)"
            }
        }
        (Op::WriteProtect, Errno::ENOENT) => {
            "part of the range is unmapped or not registered with RegisterMode::WRITE_PROTECT"
        }
        (Op::Copy, Errno::EFAULT) => {
            "the source range is not readable, or the destination lies beyond the end of the \
             shmem/hugetlbfs file"
        }
        (Op::Continue, Errno::EFAULT) => {
            "the page is not in the page cache: populate it through another mapping of the \
             file first"
        }
        (Op::Continue, Errno::EIO) => "the page cache page is hardware-poisoned",
        (Op::Move, Errno::EBUSY) => {
            "a source page is not exclusively mapped (shared with a forked child, in the swap \
             cache, or part of a large folio)"
        }
        (Op::Move, Errno::EINVAL) => {
            "MOVE works only on private anonymous memory within this process, between \
             mappings with the same protection, with the destination registered with this \
             userfaultfd; and start, len must be page aligned and non-zero"
        }
        (Op::Register, Errno::EBUSY) => {
            "part of the range is already registered with another userfaultfd"
        }
        (Op::Register, Errno::EPERM) => {
            "a shared mapping in the range is not writable (read-only file or write-sealed memfd)"
        }
        (Op::Register, Errno::EINVAL) => {
            "invalid range or mode: start and len must be page aligned (huge-page aligned on \
             hugetlbfs) and non-zero, a mapping must exist in the range, the memory type must \
             support the mode (MINOR only on shmem/hugetlbfs; WRITE_PROTECT needs kernel \
             support), and the mode must not be empty"
        }
        (Op::Unregister, Errno::EINVAL) => {
            "invalid range, or part of it is registered with another userfaultfd (Linux 6.17+)"
        }
        (Op::Api, Errno::EPERM) => {
            "FeatureFlags::EVENT_FORK requires CAP_SYS_PTRACE in the initial user namespace"
        }
        (Op::Api, Errno::EINVAL) => {
            "the descriptor was already initialised, or a requested feature is not supported"
        }
        (Op::PagemapScan, Errno::EPERM) => {
            "part of the range is not registered with a WP_ASYNC userfaultfd in \
             write-protect mode"
        }
        (Op::PagemapScan, Errno::ENOENT | Errno::EACCES) => {
            "/proc/self/pagemap could not be opened: is procfs mounted?"
        }
        (Op::PagemapScan, Errno::EINVAL) => {
            "PAGEMAP_SCAN rejected the arguments: unaligned start, or a kernel older than 6.7"
        }
        (_, Errno::EINVAL) => {
            "invalid argument: start and len must be page aligned (huge-page aligned on \
             hugetlbfs) and non-zero, the range must not overflow, and the range must be \
             registered in a mode that allows this operation on this memory type"
        }
        (_, Errno::ESRCH) => "the process that owns the registered memory has exited",
        (_, Errno::ENOMEM) => {
            "out of memory (or memory cgroup limit), or the owning address space is gone"
        }
        (_, Errno::EBADF) => "the userfaultfd descriptor is not open",
        (_, Errno::EINTR) => "interrupted by a fatal signal before any progress",
        (_, Errno::EFAULT) => "an address passed to the kernel is not accessible",
        _ => "see ioctl_userfaultfd(2)",
    }
}

impl Error {
    /// The `errno` behind this error, where there is one. `PartiallyCopied` reports `EAGAIN`,
    /// the `errno` the kernel returned for it; `CreateFailed` reports the system call's.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::CopyFailed(e)
            | Error::SystemError(e)
            | Error::ZeropageFailed(e)
            | Error::ApiFailed(e)
            | Error::RegisterFailed(e)
            | Error::UnregisterFailed(e)
            | Error::WakeFailed(e)
            | Error::WriteProtectFailed(e)
            | Error::ContinueFailed(e)
            | Error::PoisonFailed(e)
            | Error::MoveFailed(e)
            | Error::PagemapScanFailed(e) => Some(*e),
            Error::PartiallyCopied(_) => Some(Errno::EAGAIN),
            Error::InvalidArgument { .. } => Some(Errno::EINVAL),
            Error::CreateFailed { syscall, .. } => Some(*syscall),
            Error::OpenDevUserfaultfd(e) => e.raw_os_error().map(Errno::from_raw),
            Error::UnsupportedFeatures(_) => Some(Errno::EINVAL),
            Error::IncompleteMsg { .. }
            | Error::ReadEof
            | Error::UnrecognizedEvent(_)
            | Error::UnsupportedIoctls(_) => None,
        }
    }

    fn op_errno(&self) -> Option<(Op, Errno)> {
        let (op, e) = match self {
            Error::CopyFailed(e) => (Op::Copy, e),
            Error::SystemError(e) => (Op::Read, e),
            Error::ZeropageFailed(e) => (Op::Zeropage, e),
            Error::ApiFailed(e) => (Op::Api, e),
            Error::RegisterFailed(e) => (Op::Register, e),
            Error::UnregisterFailed(e) => (Op::Unregister, e),
            Error::WakeFailed(e) => (Op::Wake, e),
            Error::WriteProtectFailed(e) => (Op::WriteProtect, e),
            Error::ContinueFailed(e) => (Op::Continue, e),
            Error::PoisonFailed(e) => (Op::Poison, e),
            Error::MoveFailed(e) => (Op::Move, e),
            Error::PagemapScanFailed(e) => (Op::PagemapScan, e),
            _ => return None,
        };
        Some((op, *e))
    }
}

fn explain_device(e: Errno) -> &'static str {
    match e {
        Errno::ENOENT => "it does not exist (Linux older than 6.1, or no devtmpfs)",
        Errno::EACCES | Errno::EPERM => {
            "its file mode does not let this process open it (by default root only: \
             grant access with a udev rule or chmod)"
        }
        _ => "see open(2) and ioctl_userfaultfd(2)",
    }
}

fn explain_syscall(e: Errno, sysctl: Option<u8>) -> String {
    match e {
        Errno::EPERM => format!(
            "vm.unprivileged_userfaultfd is {} and the process lacks CAP_SYS_PTRACE; use \
             UffdBuilder::user_mode_only(true) (Linux 5.11+, faults in user mode only), set the \
             sysctl to 1, or grant CAP_SYS_PTRACE",
            sysctl.map_or_else(|| "unreadable".to_string(), |v| v.to_string())
        ),
        Errno::ENOSYS => "the kernel was built without CONFIG_USERFAULTFD".to_string(),
        Errno::EINVAL => "the kernel rejected the flags".to_string(),
        Errno::EMFILE | Errno::ENFILE => "too many open files".to_string(),
        _ => "see userfaultfd(2)".to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PartiallyCopied(done) => write!(
                f,
                "operation completed partially: {done} bytes done, then EAGAIN (a page further \
                 on is already populated, or a non-cooperative event is pending); the rest of \
                 the range is untouched: continue from start + {done}"
            ),
            Error::IncompleteMsg { read, expected } => write!(
                f,
                "read from the userfaultfd returned a partial message: {read} of {expected} bytes"
            ),
            Error::ReadEof => f.write_str("read from the userfaultfd returned end of file"),
            Error::UnrecognizedEvent(code) => write!(
                f,
                "the userfaultfd sent an event this crate does not know: code {code:#x}"
            ),
            Error::UnsupportedIoctls(supported) => write!(
                f,
                "the userfaultfd does not allow the required ioctls; it allows {supported:?}"
            ),
            Error::OpenDevUserfaultfd(e) => write!(f, "opening /dev/userfaultfd failed: {e}"),
            Error::InvalidArgument { operation, reason } => {
                write!(f, "{operation}: invalid argument: {reason}")
            }
            Error::UnsupportedFeatures(missing) => {
                write!(
                    f,
                    "UFFDIO_API: the running kernel does not support the required features \
                     {missing:?}; userfaultfd::probe() tells what it supports"
                )?;
                if missing.contains(FeatureFlags::WP_ASYNC) {
                    // The one feature a high-level type of this crate needs by itself.
                    f.write_str(" (WP_ASYNC, which DirtyTracker needs, is in Linux 6.7+)")?;
                }
                Ok(())
            }
            Error::CreateFailed {
                device,
                syscall,
                unprivileged_userfaultfd,
            } => write!(
                f,
                "creating a userfaultfd failed both ways: /dev/userfaultfd: {device}: {}; \
                 userfaultfd(2): {syscall}: {}",
                explain_device(*device),
                explain_syscall(*syscall, *unprivileged_userfaultfd)
            ),
            _ => match self.op_errno() {
                Some((op, e)) => write!(f, "{} failed: {e}: {}", op.name(), explain(op, e)),
                None => write!(f, "{self:?}"),
            },
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OpenDevUserfaultfd(e) => Some(e),
            _ => None,
        }
    }
}

/// Keeps the message: the `io::Error`'s kind comes from the `errno`, and the original
/// [`Error`] is its inner error (`get_ref()` / `into_inner()`).
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.errno() {
            Some(errno) => io::Error::from_raw_os_error(errno.raw()).kind(),
            None => io::ErrorKind::InvalidData,
        };
        // Every variant is wrapped, `OpenDevUserfaultfd` too: returning its inner `io::Error`
        // would lose "opening /dev/userfaultfd" from the message.
        io::Error::new(kind, e)
    }
}
