//! `UFFDIO_WAKE`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{ioctl, range};
use crate::{Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Wakes the threads blocked on faults in `[start, start + len)`: they retry the access.
    ///
    /// Use it after an operation with a `DONTWAKE` mode, or after `EEXIST` (someone else
    /// resolved the fault, and the faulting thread is still waiting).
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`]: `EINVAL` for an unaligned or empty range.
    #[inline]
    pub fn wake(&self, start: *mut c_void, len: usize) -> Result<()> {
        let mut range = range(start, len);
        // SAFETY: UFFDIO_WAKE reads a `uffdio_range`; waking makes faulting threads retry.
        unsafe { ioctl(self.as_fd(), sys::UFFDIO_WAKE, &mut range) }.map_err(Error::SystemError)?;
        Ok(())
    }
}
