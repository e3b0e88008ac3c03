//! `UFFDIO_COPY`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{addr, bytes_done, ioctl, len as len64};
use crate::{CopyMode, Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Atomically fills the missing pages of `[dst, dst + len)` with a copy of
    /// `[src, src + len)`, waking the threads blocked on them if `wake`. Returns the bytes
    /// copied (`len`).
    ///
    /// # Safety
    ///
    /// The destination must be memory whose contents no Rust object relies on: it gets new
    /// contents behind the compiler's back. `src` must be readable for `len` bytes (otherwise
    /// the kernel fails with `EFAULT`, which is not unsafe in itself).
    ///
    /// # Errors
    ///
    /// - [`Error::PartiallyCopied`]`(n)`: the kernel answered `EAGAIN` after copying `n` bytes,
    ///   `n` possibly 0: a page further on was already populated, or a non-cooperative event
    ///   (fork, mremap, madvise, munmap) is pending. Read the pending events, then retry from
    ///   `dst + n` (or skip the populated page). `n` is never more than `len`: userfaultfd 0.9
    ///   could report `(-EAGAIN) as usize` here, so 0.9 handlers that defer the fault on
    ///   `PartiallyCopied(n) if n == 0 || n == (-libc::EAGAIN) as usize` keep working.
    /// - [`Error::CopyFailed`]: nothing was copied (never with `EAGAIN`). `EEXIST`: the first
    ///   page is already populated (wake the faulting thread with [`wake`](Self::wake));
    ///   `ENOENT`: the destination is not (entirely) registered; `ESRCH`: the faulting process
    ///   exited; `EINVAL`: unaligned or empty range; `EFAULT`: unreadable source.
    #[inline]
    pub unsafe fn copy(
        &self,
        src: *const c_void,
        dst: *mut c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize> {
        let mode = if wake {
            CopyMode::empty()
        } else {
            CopyMode::DONTWAKE
        };
        // SAFETY: the caller upholds `copy`'s contract, which is `copy_with_mode`'s.
        unsafe { self.copy_with_mode(src, dst, len, mode) }
    }

    /// [`copy`](Self::copy) with mode flags: [`CopyMode::DONTWAKE`], and
    /// [`CopyMode::WRITE_PROTECT`] to map the pages write-protected (the range must be
    /// registered with `RegisterMode::WRITE_PROTECT` too).
    ///
    /// # Safety
    ///
    /// As [`copy`](Self::copy).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy); `EINVAL` also for `WRITE_PROTECT` on a range not registered
    /// for write protection.
    #[inline]
    pub unsafe fn copy_with_mode(
        &self,
        src: *const c_void,
        dst: *mut c_void,
        len: usize,
        mode: CopyMode,
    ) -> Result<usize> {
        let mut copy = sys::uffdio_copy {
            dst: addr(dst),
            src: addr(src),
            len: len64(len),
            mode: mode.bits(),
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `uffdio_copy`; the caller guarantees the
        // destination may receive new contents.
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_COPY, &mut copy) };
        bytes_done(outcome, copy.copy, len, Error::CopyFailed)
    }
}
