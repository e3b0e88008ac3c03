//! `UFFDIO_ZEROPAGE`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{bytes_done, ioctl, range};
use crate::{Errno, Error, Result, Uffd, ZeropageMode};
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
    /// [`Error::ZeropageFailed`], with the meanings given for [`copy`](Self::copy).
    /// `ZeropageFailed(EAGAIN)` when the kernel stopped early: a page further on was populated
    /// (after zeroing the pages before it), or a non-cooperative event is pending (nothing
    /// done). This is userfaultfd 0.9's behaviour, kept because 0.9 handlers match on it; use
    /// [`zeropage_with_mode`](Self::zeropage_with_mode) to learn how many bytes were done.
    #[inline]
    pub unsafe fn zeropage(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mode = if wake {
            ZeropageMode::empty()
        } else {
            ZeropageMode::DONTWAKE
        };
        // SAFETY: the caller upholds `zeropage`'s contract, which is `zeropage_with_mode`'s.
        match unsafe { self.zeropage_with_mode(start, len, mode) } {
            Err(Error::PartiallyCopied(_)) => Err(Error::ZeropageFailed(Errno::EAGAIN)),
            other => other,
        }
    }

    /// [`zeropage`](Self::zeropage) with mode flags ([`ZeropageMode::DONTWAKE`]), reporting
    /// partial progress like [`copy`](Self::copy) does.
    ///
    /// # Safety
    ///
    /// As [`zeropage`](Self::zeropage).
    ///
    /// # Errors
    ///
    /// - [`Error::PartiallyCopied`]`(n)`: `EAGAIN` after `n` bytes, `n` possibly 0 (a page
    ///   further on is populated, or a non-cooperative event is pending: read the events, then
    ///   retry from `start + n`).
    /// - [`Error::ZeropageFailed`]: nothing was done, with the meanings given for
    ///   [`copy`](Self::copy); `EINVAL` on hugetlbfs.
    #[inline]
    pub unsafe fn zeropage_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: ZeropageMode,
    ) -> Result<usize> {
        let mut zeropage = sys::uffdio_zeropage {
            range: range(start, len),
            mode: mode.bits(),
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `uffdio_zeropage`; the caller guarantees
        // the range may receive new contents.
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_ZEROPAGE, &mut zeropage) };
        bytes_done(outcome, zeropage.zeropage, len, Error::ZeropageFailed)
    }
}
