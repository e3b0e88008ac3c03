//! `UFFDIO_POISON` (Linux 6.6, `FeatureFlags::POISON`).

use std::os::fd::AsFd;

use libc::c_void;

use super::{bytes_done, ioctl, range};
use crate::{Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Marks the missing pages of `[start, start + len)` as poisoned: an access raises
    /// `SIGBUS` (`BUS_MCEERR_AR`), as for memory with a hardware error. Used by VMMs to forward
    /// a source host's memory errors during migration. Wakes the blocked threads if `wake`
    /// (they then take the `SIGBUS`). Returns the bytes poisoned (`len`).
    ///
    /// Safe by the crate's [safety model](crate#safety-model): it places no contents (only
    /// missing pages are poisoned, `EEXIST` otherwise); accesses that would have blocked on the
    /// missing pages raise `SIGBUS` instead, which a `SIGBUS`-mode registration can do too. No
    /// access ever reads different bytes.
    ///
    /// # Errors
    ///
    /// [`Error::PartiallyCopied`], or [`Error::PoisonFailed`] with the cases of
    /// [`copy`](Self::copy); `ENOTTY`/`EINVAL` on kernels before 6.6.
    #[inline]
    pub fn poison(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mut poison = sys::uffdio_poison {
            range: range(start, len),
            mode: if wake {
                0
            } else {
                sys::UFFDIO_POISON_MODE_DONTWAKE
            },
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON reads and writes a `uffdio_poison`; it marks missing pages
        // only, so no memory changes contents (accesses to them raise SIGBUS).
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_POISON, &mut poison) };
        bytes_done(outcome, poison.updated, len, Error::PoisonFailed)
    }
}
