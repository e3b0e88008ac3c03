//! The crate's own `errno` type, so that users need no `nix` (userfaultfd 0.9 re-exported
//! `nix::errno::Errno`).

use core::fmt;

macro_rules! errno_enum {
    ($($name:ident = $desc:literal,)* ; $($kname:ident = $kval:literal => $kdesc:literal,)*) => {
        /// An `errno` value returned by the kernel.
        ///
        /// A fieldless `#[repr(i32)]` enum of every Linux `errno`, shaped like the
        /// `nix::errno::Errno` that userfaultfd 0.9 re-exported, so that 0.9 code keeps compiling
        /// after changing the import to `userfaultfd::Errno`: `Errno::EEXIST` in patterns,
        /// `use Errno::*`, `errno as i32`, [`desc`](Errno::desc) returning `&'static str`,
        /// [`from_i32`](Errno::from_i32) and [`last`](Errno::last) all work as they did. The
        /// discriminants are the target's own values (`libc::EAGAIN`...: mips, sparc, alpha and
        /// parisc number some `errno`s differently).
        ///
        /// # Every number the kernel returns has a value
        ///
        /// Besides the C library's `errno`s, the enum holds the kernel-internal ones
        /// (512–531: `ERESTARTSYS` ... `ENOTSUPP` = 524 ... `ENOGRACE`), which the kernel is not
        /// supposed to return to user space and sometimes does (`ENOTSUPP` from drivers'
        /// ioctls): an error built from what the kernel returned keeps its number. Only a
        /// number Linux does not define (0, negative, 134–511, above 531) becomes
        /// [`Errno::UnknownErrno`] (0), as with nix; the crate's errors never carry one, since
        /// every `errno` they hold came from the kernel. (An `io::Error` keeps any number:
        /// [`Error::Io`](crate::Error::Io) holds one where the crate wraps one.)
        ///
        /// The aliases `EWOULDBLOCK` (= `EAGAIN`), `EDEADLOCK` (= `EDEADLK`) and `ENOTSUP`
        /// (= `EOPNOTSUPP`) are associated constants.
        ///
        /// ```
        /// use userfaultfd::Errno;
        /// let e = Errno::from_raw(libc::EEXIST);
        /// assert_eq!(e, Errno::EEXIST);
        /// assert_eq!(e as i32, libc::EEXIST);
        /// assert_eq!(e.raw(), libc::EEXIST);
        /// assert_eq!(e.desc(), "File exists");
        /// assert_eq!(Errno::from_raw(-1), Errno::UnknownErrno);
        /// ```
        #[repr(i32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Errno {
            /// Not an `errno` this crate knows (or 0).
            UnknownErrno = 0,
            $(
                #[doc = concat!($desc, ".")]
                $name = libc::$name,
            )*
            $(
                #[doc = concat!($kdesc, " (kernel-internal, ", stringify!($kval), ").")]
                #[allow(non_camel_case_types)] // the kernel's names
                $kname = $kval,
            )*
        }

        impl Errno {
            /// The value for the raw `errno` number `raw`; [`Errno::UnknownErrno`] if it is not
            /// a Linux `errno`.
            // `#[inline]`: it is on the error path of every ioctl, inlined into the caller's
            // loop. A call into another crate's code that the compiler cannot see may unwind,
            // so a handler's loop would keep what it holds (the events of a batch) for a
            // cleanup path: 70 instructions per fault through `read_events` without it, 43
            // with it (`ci/callgrind`).
            #[inline]
            pub const fn from_raw(raw: i32) -> Errno {
                match raw {
                    $(libc::$name => Errno::$name,)*
                    $($kval => Errno::$kname,)*
                    _ => Errno::UnknownErrno,
                }
            }

            /// The symbolic name of this value (`"EEXIST"`); `None` for
            /// [`Errno::UnknownErrno`].
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    Errno::UnknownErrno => None,
                    $(Errno::$name => Some(stringify!($name)),)*
                    $(Errno::$kname => Some(stringify!($kname)),)*
                }
            }

            /// The description of this value: glibc's `strerror` text in the C locale
            /// (`"File exists"`).
            pub const fn desc(self) -> &'static str {
                match self {
                    Errno::UnknownErrno => "Unknown errno",
                    $(Errno::$name => $desc,)*
                    $(Errno::$kname => $kdesc,)*
                }
            }

            /// Every value of the C library (not `UnknownErrno`, not the kernel-internal ones), for
            /// tests.
            #[cfg(test)]
            pub(crate) const ALL: &'static [Errno] = &[$(Errno::$name,)*];

            /// The kernel-internal values, for tests.
            #[cfg(test)]
            pub(crate) const KERNEL_INTERNAL: &'static [Errno] = &[$(Errno::$kname,)*];
        }
    };
}

errno_enum! {
    EPERM = "Operation not permitted",
    ENOENT = "No such file or directory",
    ESRCH = "No such process",
    EINTR = "Interrupted system call",
    EIO = "Input/output error",
    ENXIO = "No such device or address",
    E2BIG = "Argument list too long",
    ENOEXEC = "Exec format error",
    EBADF = "Bad file descriptor",
    ECHILD = "No child processes",
    EAGAIN = "Resource temporarily unavailable",
    ENOMEM = "Cannot allocate memory",
    EACCES = "Permission denied",
    EFAULT = "Bad address",
    ENOTBLK = "Block device required",
    EBUSY = "Device or resource busy",
    EEXIST = "File exists",
    EXDEV = "Invalid cross-device link",
    ENODEV = "No such device",
    ENOTDIR = "Not a directory",
    EISDIR = "Is a directory",
    EINVAL = "Invalid argument",
    ENFILE = "Too many open files in system",
    EMFILE = "Too many open files",
    ENOTTY = "Inappropriate ioctl for device",
    ETXTBSY = "Text file busy",
    EFBIG = "File too large",
    ENOSPC = "No space left on device",
    ESPIPE = "Illegal seek",
    EROFS = "Read-only file system",
    EMLINK = "Too many links",
    EPIPE = "Broken pipe",
    EDOM = "Numerical argument out of domain",
    ERANGE = "Numerical result out of range",
    EDEADLK = "Resource deadlock avoided",
    ENAMETOOLONG = "File name too long",
    ENOLCK = "No locks available",
    ENOSYS = "Function not implemented",
    ENOTEMPTY = "Directory not empty",
    ELOOP = "Too many levels of symbolic links",
    ENOMSG = "No message of desired type",
    EIDRM = "Identifier removed",
    ECHRNG = "Channel number out of range",
    EL2NSYNC = "Level 2 not synchronized",
    EL3HLT = "Level 3 halted",
    EL3RST = "Level 3 reset",
    ELNRNG = "Link number out of range",
    EUNATCH = "Protocol driver not attached",
    ENOCSI = "No CSI structure available",
    EL2HLT = "Level 2 halted",
    EBADE = "Invalid exchange",
    EBADR = "Invalid request descriptor",
    EXFULL = "Exchange full",
    ENOANO = "No anode",
    EBADRQC = "Invalid request code",
    EBADSLT = "Invalid slot",
    EBFONT = "Bad font file format",
    ENOSTR = "Device not a stream",
    ENODATA = "No data available",
    ETIME = "Timer expired",
    ENOSR = "Out of streams resources",
    ENONET = "Machine is not on the network",
    ENOPKG = "Package not installed",
    EREMOTE = "Object is remote",
    ENOLINK = "Link has been severed",
    EADV = "Advertise error",
    ESRMNT = "Srmount error",
    ECOMM = "Communication error on send",
    EPROTO = "Protocol error",
    EMULTIHOP = "Multihop attempted",
    EDOTDOT = "RFS specific error",
    EBADMSG = "Bad message",
    EOVERFLOW = "Value too large for defined data type",
    ENOTUNIQ = "Name not unique on network",
    EBADFD = "File descriptor in bad state",
    EREMCHG = "Remote address changed",
    ELIBACC = "Can not access a needed shared library",
    ELIBBAD = "Accessing a corrupted shared library",
    ELIBSCN = ".lib section in a.out corrupted",
    ELIBMAX = "Attempting to link in too many shared libraries",
    ELIBEXEC = "Cannot exec a shared library directly",
    EILSEQ = "Invalid or incomplete multibyte or wide character",
    ERESTART = "Interrupted system call should be restarted",
    ESTRPIPE = "Streams pipe error",
    EUSERS = "Too many users",
    ENOTSOCK = "Socket operation on non-socket",
    EDESTADDRREQ = "Destination address required",
    EMSGSIZE = "Message too long",
    EPROTOTYPE = "Protocol wrong type for socket",
    ENOPROTOOPT = "Protocol not available",
    EPROTONOSUPPORT = "Protocol not supported",
    ESOCKTNOSUPPORT = "Socket type not supported",
    EOPNOTSUPP = "Operation not supported",
    EPFNOSUPPORT = "Protocol family not supported",
    EAFNOSUPPORT = "Address family not supported by protocol",
    EADDRINUSE = "Address already in use",
    EADDRNOTAVAIL = "Cannot assign requested address",
    ENETDOWN = "Network is down",
    ENETUNREACH = "Network is unreachable",
    ENETRESET = "Network dropped connection on reset",
    ECONNABORTED = "Software caused connection abort",
    ECONNRESET = "Connection reset by peer",
    ENOBUFS = "No buffer space available",
    EISCONN = "Transport endpoint is already connected",
    ENOTCONN = "Transport endpoint is not connected",
    ESHUTDOWN = "Cannot send after transport endpoint shutdown",
    ETOOMANYREFS = "Too many references: cannot splice",
    ETIMEDOUT = "Connection timed out",
    ECONNREFUSED = "Connection refused",
    EHOSTDOWN = "Host is down",
    EHOSTUNREACH = "No route to host",
    EALREADY = "Operation already in progress",
    EINPROGRESS = "Operation now in progress",
    ESTALE = "Stale file handle",
    EUCLEAN = "Structure needs cleaning",
    ENOTNAM = "Not a XENIX named type file",
    ENAVAIL = "No XENIX semaphores available",
    EISNAM = "Is a named type file",
    EREMOTEIO = "Remote I/O error",
    EDQUOT = "Disk quota exceeded",
    ENOMEDIUM = "No medium found",
    EMEDIUMTYPE = "Wrong medium type",
    ECANCELED = "Operation canceled",
    ENOKEY = "Required key not available",
    EKEYEXPIRED = "Key has expired",
    EKEYREVOKED = "Key has been revoked",
    EKEYREJECTED = "Key was rejected by service",
    EOWNERDEAD = "Owner died",
    ENOTRECOVERABLE = "State not recoverable",
    ERFKILL = "Operation not possible due to RF-kill",
    EHWPOISON = "Memory page has hardware error",
    ;
    // include/linux/errno.h: the same numbers on every architecture.
    ERESTARTSYS = 512 => "Restart the system call",
    ERESTARTNOINTR = 513 => "Restart the system call, not interrupted",
    ERESTARTNOHAND = 514 => "Restart the system call if there is no signal handler",
    ENOIOCTLCMD = 515 => "No ioctl command",
    ERESTART_RESTARTBLOCK = 516 => "Restart by calling restart_syscall",
    EPROBE_DEFER = 517 => "Driver requests probe retry",
    EOPENSTALE = 518 => "Open found a stale dentry",
    ENOPARAM = 519 => "Parameter not supported",
    EBADHANDLE = 521 => "Illegal NFS file handle",
    ENOTSYNC = 522 => "Update synchronization mismatch",
    EBADCOOKIE = 523 => "Cookie is stale",
    ENOTSUPP = 524 => "Operation is not supported",
    ETOOSMALL = 525 => "Buffer or request is too small",
    ESERVERFAULT = 526 => "An untranslatable error occurred",
    EBADTYPE = 527 => "Type not supported by server",
    EJUKEBOX = 528 => "Request initiated, but will not complete before timeout",
    EIOCBQUEUED = 529 => "iocb queued, will get completion event",
    ERECALLCONFLICT = 530 => "Conflict with recalled state",
    ENOGRACE = 531 => "NFS file lock reclaim refused",
}

impl Errno {
    /// `EAGAIN` under its other name.
    pub const EWOULDBLOCK: Errno = Errno::EAGAIN;
    /// `EDEADLK` under its other name.
    pub const EDEADLOCK: Errno = Errno::EDEADLK;
    /// `EOPNOTSUPP` under its other name.
    pub const ENOTSUP: Errno = Errno::EOPNOTSUPP;

    /// The value for the raw `errno` number `raw` (the name nix 0.27 used; same as
    /// [`from_raw`](Errno::from_raw)).
    pub const fn from_i32(raw: i32) -> Errno {
        Errno::from_raw(raw)
    }

    /// The raw `errno` number (0 for [`Errno::UnknownErrno`]); the same as `self as i32`.
    pub const fn raw(self) -> i32 {
        self as i32
    }

    /// The calling thread's current `errno`: call right after a failed libc call.
    pub fn last() -> Errno {
        Errno::from_raw(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// `EEXIST (File exists)`.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.desc()),
            None => f.write_str("unknown errno"),
        }
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.raw())
    }
}

impl From<i32> for Errno {
    fn from(raw: i32) -> Errno {
        Errno::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::Errno;

    /// The table against the C library: every value round-trips, and its description is
    /// what strerror(3) says.
    #[test]
    fn table_matches_the_c_library() {
        assert_eq!(Errno::ALL.len(), 131);
        for &e in Errno::ALL {
            assert_ne!(e.raw(), 0, "{e:?}");
            assert_eq!(Errno::from_raw(e.raw()), e);
            assert_eq!(Errno::from_i32(e as i32), e);
            let text = std::io::Error::from_raw_os_error(e.raw()).to_string();
            let strerror = text.rsplit_once(" (os error").map_or(&*text, |(t, _)| t);
            assert_eq!(e.desc(), strerror, "{e:?}");
            assert_eq!(format!("{e:?}"), e.name().unwrap());
        }
        // The kernel-internal values keep their numbers (glibc has no text for them).
        assert_eq!(Errno::KERNEL_INTERNAL.len(), 19);
        for &e in Errno::KERNEL_INTERNAL {
            assert!((512..=531).contains(&e.raw()), "{e:?}");
            assert_eq!(Errno::from_raw(e.raw()), e);
            assert_eq!(format!("{e:?}"), e.name().unwrap());
        }
        assert_eq!(Errno::from_raw(524), Errno::ENOTSUPP);
        assert_eq!(
            Errno::ENOTSUPP.to_string(),
            "ENOTSUPP (Operation is not supported)"
        );
        assert_eq!(Errno::from_raw(520), Errno::UnknownErrno);
        assert_eq!(Errno::from_raw(0), Errno::UnknownErrno);
        assert_eq!(Errno::from_raw(4095), Errno::UnknownErrno);
        assert_eq!(Errno::EWOULDBLOCK, Errno::EAGAIN);
        assert_eq!(Errno::ENOTSUP.raw(), libc::ENOTSUP);
    }
}
