//! [`Uffd`]: the owned descriptor, its conversions, and what it enabled.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::{Error, FeatureFlags, Rejected};

/// A userfaultfd: the descriptor from which page-fault events are read and on which the
/// ioctls that resolve them are performed.
///
/// Created by [`UffdBuilder::create`](crate::UffdBuilder::create), adopted from an owned
/// descriptor (`Uffd::try_from(OwnedFd)`, which checks that it is a userfaultfd) or a raw one
/// (the unsafe [`FromRawFd`]), or received in [`Event::Fork`](crate::Event::Fork).
///
/// # Ownership
///
/// `Uffd` owns its descriptor ([`OwnedFd`]): it is closed exactly once, when the `Uffd` is
/// dropped. [`IntoRawFd::into_raw_fd`] and `OwnedFd::from(uffd)` give it up without closing it
/// (userfaultfd 0.9 closed it a second time on drop).
///
/// # Threads
///
/// `Uffd` is `Send` and `Sync`: every operation is a single system call on the descriptor,
/// which the kernel serialises as needed, and `Uffd` has no user-space state besides the
/// immutable feature set. One thread may read events while others copy pages or register
/// ranges; several threads may read events (each event is delivered to one reader).
pub struct Uffd {
    fd: OwnedFd,
    features: FeatureFlags,
}

impl Uffd {
    pub(crate) fn from_parts(fd: OwnedFd, features: FeatureFlags) -> Uffd {
        Uffd { fd, features }
    }

    /// The features this descriptor enabled in its `UFFDIO_API` handshake (what was required
    /// with [`UffdBuilder::require_features`](crate::UffdBuilder::require_features), plus
    /// `WP_UNPOPULATED` which the kernel enables along with `WP_ASYNC`; not what the kernel
    /// could offer, for which see [`probe`](crate::probe)).
    ///
    /// For a descriptor adopted with `TryFrom<OwnedFd>` or [`FromRawFd`], this is read from
    /// `/proc/thread-self/fdinfo` (empty if that is not readable, or the userfaultfd has not
    /// done its `UFFDIO_API` handshake); a descriptor from
    /// [`Event::Fork`](crate::Event::Fork) has its parent's.
    pub fn features(&self) -> FeatureFlags {
        self.features
    }

    /// Duplicates the descriptor (`F_DUPFD_CLOEXEC`). Both refer to the same userfaultfd: an
    /// event is read from either, a range registered through one is registered for both.
    pub fn try_clone(&self) -> io::Result<Uffd> {
        Ok(Uffd {
            fd: self.fd.try_clone()?,
            features: self.features,
        })
    }

    /// Adopts a descriptor known to be a userfaultfd.
    fn adopt(fd: OwnedFd) -> Uffd {
        let features = Uffd::features_from_fdinfo(fd.as_raw_fd());
        Uffd { fd, features }
    }

    /// Reads the features of an adopted descriptor from its fdinfo ("API:\t<api>:<features>:
    /// <ioctls>"), dropping the kernel-internal `UFFD_FEATURE_INITIALIZED` bit (1 << 31).
    fn features_from_fdinfo(fd: RawFd) -> FeatureFlags {
        const INTERNAL_INITIALIZED: u64 = 1 << 31;
        // thread-self, not self: a thread that unshared its descriptor table (CLONE_FILES)
        // has its own descriptor `fd`.
        let Ok(info) = fs::read_to_string(format!("/proc/thread-self/fdinfo/{fd}")) else {
            return FeatureFlags::empty();
        };
        info.lines()
            .find_map(|line| line.strip_prefix("API:"))
            .and_then(|api| api.trim().split(':').nth(1))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(|bits| FeatureFlags::from_bits_retain(bits & !INTERNAL_INITIALIZED))
            .unwrap_or(FeatureFlags::empty())
    }
}

impl fmt::Debug for Uffd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uffd")
            .field("fd", &self.fd.as_raw_fd())
            .field("features", &self.features)
            .finish()
    }
}

// `#[inline]`: every operation goes through these, and a call to a two-instruction
// function would be a measurable part of serving a fault.
impl AsFd for Uffd {
    #[inline]
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    #[inline]
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Uffd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl FromRawFd for Uffd {
    /// Adopts `fd` without checking it; its features are read from
    /// `/proc/thread-self/fdinfo`. `Uffd::try_from(OwnedFd)` checks that the descriptor is a
    /// userfaultfd.
    ///
    /// # Safety
    ///
    /// `fd` must be an open userfaultfd descriptor that nothing else owns: the `Uffd` closes
    /// it when dropped, and sends it userfaultfd ioctls, whose request numbers could mean
    /// something else to another kind of file.
    unsafe fn from_raw_fd(fd: RawFd) -> Uffd {
        // SAFETY: the caller transfers ownership of the open descriptor `fd`.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Uffd::adopt(fd)
    }
}

/// Adopting an owned descriptor checks that it is a userfaultfd, so that safe code cannot
/// send userfaultfd ioctls to another kind of file (where their request numbers could mean
/// something else).
///
/// This is `TryFrom`, not `From`: a conversion that cannot fail would have to accept any
/// descriptor. userfaultfd 0.9 had neither (only the unsafe [`FromRawFd`], kept as it was).
impl TryFrom<OwnedFd> for Uffd {
    type Error = Rejected<OwnedFd>;

    /// Adopts `fd` if it is a userfaultfd (its `/proc/thread-self/fd` link is
    /// `anon_inode:[userfaultfd]`); its features are read from `/proc/thread-self/fdinfo`.
    ///
    /// # Errors
    ///
    /// The descriptor is given back with the error: [`Error::InvalidArgument`] if it is not
    /// a userfaultfd; [`Error::Io`] if that link cannot be read (no procfs), since
    /// then nothing can be checked (adopt it with the unsafe [`FromRawFd`] if you know
    /// what it is).
    fn try_from(fd: OwnedFd) -> std::result::Result<Uffd, Rejected<OwnedFd>> {
        // thread-self, as for fdinfo: this thread's descriptor table.
        match fs::read_link(format!("/proc/thread-self/fd/{}", fd.as_raw_fd())) {
            Ok(target) if target.as_os_str() == "anon_inode:[userfaultfd]" => Ok(Uffd::adopt(fd)),
            Ok(_) => Err(Rejected::new(
                fd,
                Error::InvalidArgument {
                    operation: "Uffd::try_from(OwnedFd)",
                    reason:
                        "the descriptor is not a userfaultfd (its /proc/thread-self/fd link is \
                             not anon_inode:[userfaultfd])",
                },
            )),
            Err(source) => Err(Rejected::new(
                fd,
                Error::Io {
                    operation: "Uffd::try_from(OwnedFd): reading the descriptor's \
                                /proc/thread-self/fd link, to check that it is a userfaultfd",
                    source,
                },
            )),
        }
    }
}

impl From<Uffd> for OwnedFd {
    fn from(uffd: Uffd) -> OwnedFd {
        uffd.fd
    }
}
