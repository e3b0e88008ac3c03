//! `UFFDIO_REGISTER` and `UFFDIO_UNREGISTER`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{ioctl, range};
use crate::{Error, IoctlFlags, RegisterMode, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Registers `[start, start + len)` for missing-page faults
    /// ([`RegisterMode::MISSING`]); returns the ioctls allowed on the range.
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`]: `EINVAL` for an unaligned, empty or unmapped range, `EBUSY`
    /// when part of it is registered with another userfaultfd, `EPERM` for a shared mapping
    /// that is not writable.
    pub fn register(&self, start: *mut c_void, len: usize) -> Result<IoctlFlags> {
        self.register_with_mode(start, len, RegisterMode::MISSING)
    }

    /// Registers `[start, start + len)` in `mode`; returns the ioctls allowed on the range,
    /// which depend on the memory type and mode (private anonymous memory allows `MOVE` and
    /// `POISON` but not `CONTINUE`; `CONTINUE` needs [`RegisterMode::MINOR`], which only shmem
    /// and hugetlbfs support).
    ///
    /// `start` and `len` must be multiples of the page size (of the huge page size on
    /// hugetlbfs) and the range must be entirely mapped. Registering a range again with the
    /// same descriptor replaces its mode.
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`] (see [`register`](Self::register)); `EINVAL` also when the
    /// memory type does not support `mode`.
    pub fn register_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        let mut register = sys::uffdio_register {
            range: range(start, len),
            mode: mode.bits(),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `uffdio_register`. Registering changes
        // only how faults in the range are handled: a fault on it blocks until this descriptor
        // resolves it (or raises SIGBUS), which cannot violate memory safety.
        unsafe { ioctl(self.as_fd(), sys::UFFDIO_REGISTER, &mut register) }
            .map_err(Error::SystemError)?;
        Ok(IoctlFlags::from_bits_retain(register.ioctls))
    }

    /// Unregisters `[start, start + len)`; threads blocked on faults in it are woken and
    /// retry, now without userfaultfd handling.
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`]: `EINVAL` for an unaligned or empty range; since Linux
    /// 6.17 also when part of it is registered with another userfaultfd.
    pub fn unregister(&self, start: *mut c_void, len: usize) -> Result<()> {
        let mut range = range(start, len);
        // SAFETY: UFFDIO_UNREGISTER reads a `uffdio_range`; unregistering restores the
        // kernel's normal fault handling.
        unsafe { ioctl(self.as_fd(), sys::UFFDIO_UNREGISTER, &mut range) }
            .map_err(Error::SystemError)?;
        Ok(())
    }
}
