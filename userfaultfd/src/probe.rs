//! [`probe`]: what the running kernel supports, asked of a throw-away descriptor.

use crate::ioctl::api;
use crate::{open, Error, FeatureFlags, IoctlFlags, Result};
use userfaultfd_sys as sys;

/// What the running kernel's userfaultfd supports, from [`probe`].
///
/// ```no_run
/// use userfaultfd::FeatureFlags;
/// let caps = userfaultfd::probe()?;
/// if caps.features().contains(FeatureFlags::MOVE) {
///     // UFFDIO_MOVE is available (Linux 6.8+)
/// }
/// # Ok::<(), userfaultfd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    features: FeatureFlags,
    ioctls: IoctlFlags,
}

impl Capabilities {
    /// Every feature the kernel offers (`uffdio_api.features` of a handshake that requested
    /// none). Bits newer than this crate are kept.
    pub fn features(&self) -> FeatureFlags {
        self.features
    }

    /// The ioctls allowed on a descriptor (`API`, `REGISTER`, `UNREGISTER`). The ioctls a
    /// range allows depend on its memory type and registration mode: [`Uffd::register`]
    /// returns them.
    ///
    /// [`Uffd::register`]: crate::Uffd::register
    pub fn ioctls(&self) -> IoctlFlags {
        self.ioctls
    }

    /// The features of `wanted` that the kernel lacks (empty when all are supported).
    pub fn missing(&self, wanted: FeatureFlags) -> FeatureFlags {
        wanted - self.features
    }
}

/// Asks the running kernel what its userfaultfd supports, without committing to any feature:
/// a user-mode-only descriptor is created, the `UFFDIO_API` handshake requests no feature and
/// reads what the kernel offers, and the descriptor is closed.
///
/// Needs the same privileges as [`UffdBuilder::create`](crate::UffdBuilder::create) with
/// `user_mode_only(true)`; none on Linux 5.11+.
pub fn probe() -> Result<Capabilities> {
    let fd = open::new_userfaultfd(libc::O_CLOEXEC | sys::UFFD_USER_MODE_ONLY as libc::c_int)?;
    let reply = api::handshake(&fd, FeatureFlags::empty()).map_err(Error::SystemError)?;
    Ok(Capabilities {
        features: reply.features,
        ioctls: reply.ioctls,
    })
}
