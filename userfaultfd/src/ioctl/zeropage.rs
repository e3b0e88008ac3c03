//! `UFFDIO_ZEROPAGE`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{bytes_done, ioctl, range};
use crate::{Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Atomically fills the missing pages of `[start, start + len)` with zeros (mapping the
    /// shared zero page on anonymous memory), waking the threads blocked on them if `wake`.
    /// Returns the bytes zeroed (`len`). Not supported on hugetlbfs (`EINVAL`).
    ///
    /// # Safety
    ///
    /// The range must be memory whose contents no Rust object relies on.
    ///
    /// # Errors
    ///
    /// [`Error::PartiallyCopied`] and [`Error::ZeropageFailed`], with the meanings given for
    /// [`copy`](Self::copy).
    #[inline]
    pub unsafe fn zeropage(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mut zeropage = sys::uffdio_zeropage {
            range: range(start, len),
            mode: if wake {
                0
            } else {
                sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE
            },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `uffdio_zeropage`; the caller guarantees
        // the range may receive new contents.
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_ZEROPAGE, &mut zeropage) };
        bytes_done(outcome, zeropage.zeropage, len, Error::ZeropageFailed)
    }
}
