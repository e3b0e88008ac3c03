//! Errors: which operation failed, with which `errno`, and what that means for the caller.

use std::fmt;
use std::io;

use crate::{Errno, FeatureFlags, IoctlFlags};

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong.
///
/// [`Error::errno`] gives the kernel's `errno` where there is one, and `Display` says what the
/// operation was, the `errno`, and what it means for the caller (for `EEXIST` from a copy: the
/// page is already populated, wake the faulting thread).
///
/// # Compatibility with userfaultfd 0.9
///
/// Every variant of 0.9 is kept, and each operation of 0.9 fails with the variant it failed
/// with in 0.9, so that a `match` written for 0.9 takes the same arm: `read`, `UFFDIO_API`,
/// `REGISTER`, `UNREGISTER`, `WAKE`, `WRITEPROTECT` and [`Uffd::r#continue`](crate::Uffd::continue)
/// give [`SystemError`](Error::SystemError), copy gives `CopyFailed`/`PartiallyCopied`, zeropage
/// `ZeropageFailed`. The fixes: `PartiallyCopied(n)` never carries a negative number cast to
/// `usize`; creation failures and missing features have their own variants
/// ([`CreateFailed`](Error::CreateFailed), [`UnsupportedFeatures`](Error::UnsupportedFeatures)).
/// Operations 0.9 did not have report with variants of their own (`ContinueFailed` for
/// [`continue_with_mode`](crate::Uffd::continue_with_mode), `PoisonFailed`, `MoveFailed`, ...).
///
/// The enum is `#[non_exhaustive]`: this crate has variants 0.9 had not, and the kernel grows
/// operations, so a `match` needs a `_` arm (a `match` that was exhaustive for 0.9 fails to
/// compile, rather than silently missing a case).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `UFFDIO_COPY` failed without copying anything.
    CopyFailed(Errno),

    /// A `COPY` ([`Uffd::copy`](crate::Uffd::copy), `copy_with_mode`), or one of
    /// `zeropage_with_mode`, `continue_with_mode`, `poison`, `move`, stopped with `EAGAIN` after
    /// doing this many bytes, possibly 0: a page further on was already populated, or a
    /// non-cooperative event (fork, mremap, madvise, munmap) is pending and must be read
    /// first. The bytes done are in place (and their waiters woken unless the mode said
    /// otherwise); the rest of the range is untouched. Never more than the length asked for.
    PartiallyCopied(usize),

    /// `read(2)` returned a length that is not a whole number of `uffd_msg`s.
    IncompleteMsg {
        /// Bytes of the trailing partial message.
        read: usize,
        /// The size of one message (32).
        expected: usize,
    },

    /// A system call on the userfaultfd failed: `read(2)` (other than `EINTR`, which is
    /// retried, and `EAGAIN` on a non-blocking descriptor, which is "no event"), or the ioctls
    /// `UFFDIO_API`, `UFFDIO_REGISTER`, `UFFDIO_UNREGISTER`, `UFFDIO_WAKE`,
    /// `UFFDIO_WRITEPROTECT`, and `UFFDIO_CONTINUE` through [`Uffd::r#continue`](crate::Uffd::continue)
    /// (as in userfaultfd 0.9). The method that returned it is the operation; the `errno` says
    /// why (each method's documentation lists its cases).
    ///
    /// The variant is 0.9's, a bare `Errno` (0.9 code matches `SystemError(e)`), so its
    /// `Display` cannot name which of these calls failed nor on what range: it says
    /// "userfaultfd system call failed", the `errno`, and what the `errno` means for each of
    /// them. Callers that report it name the operation and the range themselves, as the page
    /// server does ([`ServeError::Uffd`](crate::serve::ServeError::Uffd): the operation, the
    /// region's index and address range, then this error).
    SystemError(Errno),

    /// `read(2)` returned end of file.
    ReadEof,

    /// The kernel sent an event code this crate does not know.
    UnrecognizedEvent(u8),

    /// A fork event arrived whose descriptor (the message's `ufd`, here) is negative. The
    /// kernel does not send one (when it cannot install the descriptor, the `read(2)` fails
    /// instead); a message that says so all the same is an error, not the panic of adopting
    /// -1 as a descriptor.
    ForkWithoutDescriptor(i32),

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

    /// `UFFDIO_CONTINUE` through [`Uffd::continue_with_mode`](crate::Uffd::continue_with_mode)
    /// failed without mapping anything.
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

    /// A system call other than `read(2)` and the userfaultfd ioctls failed, or what the
    /// kernel returned broke its own contract: `operation` says which (for example
    /// `"fcntl(F_GETFL) on the userfaultfd (AsyncUffd::new)"`), `source` why. `errno()` is
    /// the source's OS error, if it has one.
    Io {
        /// What was being done.
        operation: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

/// The operations errors are reported for, to pick the explanation of an `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// The system calls 0.9 reported as `SystemError`: read, API, REGISTER, UNREGISTER,
    /// WAKE, WRITEPROTECT, CONTINUE.
    System,
    Copy,
    Zeropage,
    Continue,
    Poison,
    Move,
    PagemapScan,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::System => "userfaultfd system call",
            Op::Copy => "UFFDIO_COPY",
            Op::Zeropage => "UFFDIO_ZEROPAGE",
            Op::Continue => "UFFDIO_CONTINUE",
            Op::Poison => "UFFDIO_POISON",
            Op::Move => "UFFDIO_MOVE",
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

/// What an `errno` means for the caller of `op` (distilled from the kernel's fs/userfaultfd.c
/// and mm/userfaultfd.c, as of Linux 6.18).
fn explain(op: Op, e: Errno) -> &'static str {
    match (op, e) {
        (Op::System, Errno::EBUSY) => {
            "UFFDIO_REGISTER: part of the range is already registered with another userfaultfd"
        }
        (Op::System, Errno::EPERM) => {
            "UFFDIO_REGISTER: a shared mapping in the range is not writable (read-only file or \
             write-sealed memfd); UFFDIO_API: FeatureFlags::EVENT_FORK requires CAP_SYS_PTRACE \
             in the initial user namespace"
        }
        (Op::System, Errno::ENOENT) => {
            "UFFDIO_WRITEPROTECT: part of the range is unmapped or not registered with \
             RegisterMode::WRITE_PROTECT; UFFDIO_CONTINUE: the range is not entirely inside one \
             range registered with this userfaultfd"
        }
        (Op::System, Errno::EAGAIN) => {
            "UFFDIO_WRITEPROTECT, UFFDIO_CONTINUE: a non-cooperative event (fork, mremap, \
             madvise, munmap) is pending: read every pending event from the userfaultfd, then \
             retry"
        }
        (Op::System, Errno::EEXIST) => {
            "UFFDIO_CONTINUE: the page is already mapped; wake the faulting thread with \
             Uffd::wake"
        }
        (Op::System, Errno::EFAULT) => {
            "UFFDIO_CONTINUE: the page is not in the page cache (populate it through another \
             mapping of the file first); otherwise an address passed to the kernel is not \
             accessible"
        }
        (Op::System, Errno::EINVAL) => {
            "invalid argument: start and len must be page aligned (huge-page aligned on \
             hugetlbfs) and non-zero, a mapping must exist in the range, and the memory type \
             must support the mode (MINOR only on shmem/hugetlbfs); UFFDIO_API: the descriptor \
             was already initialised; UFFDIO_UNREGISTER (Linux 6.17+): part of the range is \
             registered with another userfaultfd; read: the buffer is smaller than a message"
        }
        (Op::Copy | Op::Zeropage | Op::Continue | Op::Poison, Errno::EEXIST) => {
            "the destination page is already populated (another thread or a racing operation \
             resolved it); wake the faulting thread with Uffd::wake"
        }
        (Op::Move, Errno::EEXIST) => {
            "the destination page is already populated; wake the faulting thread with Uffd::wake"
        }
        (op, Errno::EAGAIN) if op.fills_pages() => {
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
    // `#[inline]`: a handler's loop may ask it on an error path; a call into this crate that
    // the compiler cannot see into may unwind, which makes a batch loop keep its iterator for
    // a cleanup (`read_events`' documentation).
    #[inline]
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::CopyFailed(e)
            | Error::SystemError(e)
            | Error::ZeropageFailed(e)
            | Error::ContinueFailed(e)
            | Error::PoisonFailed(e)
            | Error::MoveFailed(e)
            | Error::PagemapScanFailed(e) => Some(*e),
            Error::PartiallyCopied(_) => Some(Errno::EAGAIN),
            Error::InvalidArgument { .. } => Some(Errno::EINVAL),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            Error::CreateFailed { syscall, .. } => Some(*syscall),
            Error::OpenDevUserfaultfd(e) => e.raw_os_error().map(Errno::from_raw),
            Error::UnsupportedFeatures(_) => Some(Errno::EINVAL),
            Error::IncompleteMsg { .. }
            | Error::ReadEof
            | Error::UnrecognizedEvent(_)
            | Error::ForkWithoutDescriptor(_)
            | Error::UnsupportedIoctls(_) => None,
        }
    }

    fn op_errno(&self) -> Option<(Op, Errno)> {
        let (op, e) = match self {
            Error::CopyFailed(e) => (Op::Copy, e),
            Error::SystemError(e) => (Op::System, e),
            Error::ZeropageFailed(e) => (Op::Zeropage, e),
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
            Error::PartiallyCopied(0) => f.write_str(
                "nothing done yet: EAGAIN: a non-cooperative event (fork, mremap, madvise, \
                 munmap) is pending: read every pending event from the userfaultfd, then retry",
            ),
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
            Error::ForkWithoutDescriptor(ufd) => write!(
                f,
                "the userfaultfd sent a fork event without a descriptor (ufd {ufd})"
            ),
            Error::UnsupportedIoctls(supported) => write!(
                f,
                "the userfaultfd does not allow the required ioctls; it allows {supported:?}"
            ),
            Error::OpenDevUserfaultfd(e) => write!(f, "opening /dev/userfaultfd failed: {e}"),
            Error::InvalidArgument { operation, reason } => {
                write!(f, "{operation}: invalid argument: {reason}")
            }
            Error::Io { operation, source } => write!(f, "{operation} failed: {source}"),
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
            Error::OpenDevUserfaultfd(e) | Error::Io { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Keeps the message: the `io::Error`'s kind comes from the `errno`, and the original
/// [`Error`] is its inner error (`get_ref()` / `into_inner()`).
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match (&e, e.errno()) {
            // An `io::Error` without an errno (tokio's "runtime shut down") keeps its kind.
            (Error::Io { source, .. }, None) => source.kind(),
            (_, Some(errno)) => io::Error::from_raw_os_error(errno.raw()).kind(),
            (_, None) => io::ErrorKind::InvalidData,
        };
        // Every variant is wrapped, `OpenDevUserfaultfd` too: returning its inner `io::Error`
        // would lose "opening /dev/userfaultfd" from the message.
        io::Error::new(kind, e)
    }
}
