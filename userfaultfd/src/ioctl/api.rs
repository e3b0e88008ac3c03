//! `UFFDIO_API`: the handshake every descriptor needs before any other ioctl.

use std::os::fd::{AsFd, OwnedFd};

use super::ioctl;
use crate::{Errno, FeatureFlags, IoctlFlags};
use userfaultfd_sys as sys;

/// What the kernel answers to the handshake.
pub(crate) struct ApiReply {
    /// Every feature the kernel supports (not only the requested ones).
    pub(crate) features: FeatureFlags,
    /// The ioctls allowed on the descriptor itself.
    pub(crate) ioctls: IoctlFlags,
}

/// Performs `UFFDIO_API` requesting `features`. Needs no capability, except `EVENT_FORK`
/// (`CAP_SYS_PTRACE`, else `EPERM`).
pub(crate) fn handshake(fd: &OwnedFd, features: FeatureFlags) -> Result<ApiReply, Errno> {
    let mut api = sys::uffdio_api {
        api: sys::UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `uffdio_api`; it only configures the descriptor.
    unsafe { ioctl(fd.as_fd(), sys::UFFDIO_API, &mut api) }?;
    Ok(ApiReply {
        features: FeatureFlags::from_bits_retain(api.features),
        ioctls: IoctlFlags::from_bits_retain(api.ioctls),
    })
}
