//! `UFFDIO_WRITEPROTECT`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{ioctl, range};
use crate::{Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Write-protects `[start, start + len)`: a write to it then blocks and produces a
    /// [`FaultKind::WriteProtected`](crate::FaultKind::WriteProtected) event (or, with
    /// `WP_ASYNC`, is resolved by the kernel and recorded for dirty tracking).
    ///
    /// The range must be registered with [`RegisterMode::WRITE_PROTECT`](crate::RegisterMode).
    /// Unpopulated pages are protected only with `WP_UNPOPULATED` (anonymous memory) or on
    /// shmem/hugetlbfs (which keep a marker).
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`]: `ENOENT` when part of the range is unmapped or not
    /// registered for write protection, `EAGAIN` while a non-cooperative event is pending.
    #[inline]
    pub fn write_protect(&self, start: *mut c_void, len: usize) -> Result<()> {
        self.writeprotect(start, len, sys::UFFDIO_WRITEPROTECT_MODE_WP)
    }

    /// Removes write protection from `[start, start + len)`, waking the threads blocked on
    /// write-protect faults there if `wake`.
    ///
    /// # Errors
    ///
    /// As [`write_protect`](Self::write_protect).
    #[inline]
    pub fn remove_write_protection(
        &self,
        start: *mut c_void,
        len: usize,
        wake: bool,
    ) -> Result<()> {
        let mode = if wake {
            0
        } else {
            sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE
        };
        self.writeprotect(start, len, mode)
    }

    #[inline]
    fn writeprotect(&self, start: *mut c_void, len: usize, mode: u64) -> Result<()> {
        let mut wp = sys::uffdio_writeprotect {
            range: range(start, len),
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads a `uffdio_writeprotect`; it changes page
        // protection only, never page contents.
        unsafe { ioctl(self.as_fd(), sys::UFFDIO_WRITEPROTECT, &mut wp) }
            .map_err(Error::SystemError)?;
        Ok(())
    }
}
