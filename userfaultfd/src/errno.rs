//! The crate's own `errno` type, so that users need no `nix` (0.9 re-exported nix's).

use core::fmt;

/// An `errno` value returned by the kernel.
///
/// A small `Copy + Eq` wrapper around the raw number, with associated constants for the values
/// userfaultfd operations produce. It replaces `nix::errno::Errno` from userfaultfd 0.9: code
/// that matched `Errno::EEXIST` keeps working after changing the import to
/// `userfaultfd::Errno`.
///
/// ```
/// use userfaultfd::Errno;
/// let e = Errno::from_raw(libc::EEXIST);
/// assert_eq!(e, Errno::EEXIST);
/// assert_eq!(e.raw(), libc::EEXIST);
/// assert_eq!(e.name(), Some("EEXIST"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i32);

macro_rules! errno_consts {
    ($($name:ident: $doc:literal),* $(,)?) => {
        impl Errno {
            $(
                #[doc = $doc]
                pub const $name: Errno = Errno(libc::$name);
            )*

            /// The symbolic name of this value (`"EEXIST"`), if it is one this crate names.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(libc::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errno_consts! {
    EPERM: "Operation not permitted.",
    ENOENT: "No such file or directory; for ioctls, no registered range at the address.",
    ESRCH: "No such process: the process that owns the memory has exited.",
    EINTR: "Interrupted system call.",
    EIO: "Input/output error; for `UFFDIO_CONTINUE`, a hardware-poisoned page.",
    EBADF: "Bad file descriptor.",
    EAGAIN: "Try again: partial progress, or a non-cooperative event is pending.",
    ENOMEM: "Out of memory, or the address space is gone.",
    EACCES: "Permission denied.",
    EFAULT: "Bad address.",
    EBUSY: "Device or resource busy.",
    EEXIST: "The page already exists.",
    ENODEV: "No such device.",
    EINVAL: "Invalid argument.",
    EMFILE: "Too many open files in this process.",
    ENFILE: "Too many open files in the system.",
    ENOTTY: "Inappropriate ioctl for device.",
    ENOSPC: "No space left on device.",
    ENOSYS: "Function not implemented: the kernel lacks `CONFIG_USERFAULTFD`.",
    EOPNOTSUPP: "Operation not supported.",
}

impl Errno {
    /// Wraps a raw `errno` number.
    pub const fn from_raw(raw: i32) -> Errno {
        Errno(raw)
    }

    /// The raw `errno` number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The calling thread's current `errno`: call right after a failed libc call.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The C library's description of this value (`strerror`).
    pub fn desc(self) -> String {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        // std appends " (os error N)"; the number is printed separately by Display.
        match text.rfind(" (os error") {
            Some(at) => text[..at].to_string(),
            None => text,
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

/// `EEXIST (File exists)`.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.desc()),
            None => write!(f, "errno {} ({})", self.0, self.desc()),
        }
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}
