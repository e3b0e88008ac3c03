//! `UFFDIO_CONTINUE`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{bytes_done, ioctl, range};
use crate::{ContinueMode, Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Resolves minor faults in `[start, start + len)` by mapping the pages already in the
    /// page cache (shmem or hugetlbfs registered with [`RegisterMode::MINOR`]), waking the
    /// threads blocked on them if `wake`. Returns the bytes mapped (`len`).
    ///
    /// Safe, unlike [`copy`](Self::copy): it places no new contents; the pages show what the
    /// file already holds, as any other mapping of it does.
    ///
    /// [`RegisterMode::MINOR`]: crate::RegisterMode::MINOR
    ///
    /// # Errors
    ///
    /// [`Error::PartiallyCopied`], or [`Error::ContinueFailed`]: `EFAULT` when a page is not
    /// in the page cache (populate it through another mapping first), `EEXIST` when already
    /// mapped, plus the cases of [`copy`](Self::copy).
    #[inline]
    pub fn r#continue(&self, start: *mut c_void, len: usize, wake: bool) -> Result<u64> {
        let mode = if wake {
            ContinueMode::empty()
        } else {
            ContinueMode::DONTWAKE
        };
        self.continue_with_mode(start, len, mode)
    }

    /// [`r#continue`](Self::continue) with mode flags: [`ContinueMode::DONTWAKE`], and
    /// [`ContinueMode::WRITE_PROTECT`] to map the pages write-protected (Linux 6.4; the range
    /// must also be registered with `RegisterMode::WRITE_PROTECT`).
    ///
    /// # Errors
    ///
    /// As [`r#continue`](Self::continue); `EINVAL` for a mode the kernel does not know.
    #[inline]
    pub fn continue_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: ContinueMode,
    ) -> Result<u64> {
        let mut cont = sys::uffdio_continue {
            range: range(start, len),
            mode: mode.bits(),
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE reads and writes a `uffdio_continue`; it maps page cache
        // pages that already hold the file's contents, so no memory changes meaning.
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_CONTINUE, &mut cont) };
        bytes_done(outcome, cont.mapped, len, Error::ContinueFailed).map(|n| n as u64)
    }
}
