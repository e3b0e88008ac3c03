//! [`Uffd`]: the owned descriptor, its conversions, and what it enabled.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::FeatureFlags;

/// A userfaultfd: the descriptor from which page-fault events are read and on which the
/// ioctls that resolve them are performed.
///
/// Created by [`UffdBuilder::create`](crate::UffdBuilder::create), adopted from a raw or owned
/// descriptor, or received in [`Event::Fork`](crate::Event::Fork).
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
    /// For a descriptor adopted with [`FromRawFd`] or `From<OwnedFd>`, this is read from
    /// `/proc/self/fdinfo` (empty if that is not readable or the descriptor is not a
    /// userfaultfd); a descriptor from [`Event::Fork`](crate::Event::Fork) has its parent's.
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

    /// Reads the features of an adopted descriptor from its fdinfo ("API:\t<api>:<features>:
    /// <ioctls>"), dropping the kernel-internal `UFFD_FEATURE_INITIALIZED` bit (1 << 31).
    fn features_from_fdinfo(fd: RawFd) -> FeatureFlags {
        const INTERNAL_INITIALIZED: u64 = 1 << 31;
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
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
    /// Adopts `fd`; its features are read from `/proc/self/fdinfo`.
    ///
    /// # Safety
    ///
    /// `fd` must be an open userfaultfd descriptor that nothing else owns: the `Uffd` closes
    /// it when dropped.
    unsafe fn from_raw_fd(fd: RawFd) -> Uffd {
        // SAFETY: the caller transfers ownership of the open descriptor `fd`.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Uffd::from(fd)
    }
}

impl From<OwnedFd> for Uffd {
    /// Adopts an owned userfaultfd descriptor; its features are read from `/proc/self/fdinfo`.
    /// A descriptor that is not a userfaultfd is accepted, and its ioctls fail with `ENOTTY`
    /// or `EINVAL`.
    fn from(fd: OwnedFd) -> Uffd {
        let features = Uffd::features_from_fdinfo(fd.as_raw_fd());
        Uffd { fd, features }
    }
}

impl From<Uffd> for OwnedFd {
    fn from(uffd: Uffd) -> OwnedFd {
        uffd.fd
    }
}
