//! `UFFDIO_CONTINUE`.

use std::os::fd::AsFd;

use libc::c_void;

use super::{bytes_done, ioctl, range};
use crate::{ContinueMode, Errno, Error, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Resolves minor faults in `[start, start + len)` by mapping the pages already in the
    /// page cache (shmem or hugetlbfs registered with [`RegisterMode::MINOR`]), waking the
    /// threads blocked on them if `wake`. Returns the bytes mapped: `len`, or fewer when the
    /// kernel stopped early with `EAGAIN` after mapping some (a page further on was already
    /// mapped, or a non-cooperative event became pending): continue from `start + mapped`.
    ///
    /// Safe, unlike [`copy`](Self::copy): it places no new contents; the pages show what the
    /// file already holds, as any other mapping of it does.
    ///
    /// This keeps userfaultfd 0.9's contract exactly (partial progress is `Ok`, failures are
    /// `SystemError`), because 0.9 handlers match on it;
    /// [`continue_with_mode`](Self::continue_with_mode) reports like [`copy`](Self::copy).
    ///
    /// [`RegisterMode::MINOR`]: crate::RegisterMode::MINOR
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`] when nothing was mapped: `EAGAIN` when a non-cooperative event is
    /// pending (read the events, then retry), `EFAULT` when a page is not in the page cache
    /// (populate it through another mapping first), `EEXIST` when already mapped (wake the
    /// faulting thread), plus the cases of [`copy`](Self::copy).
    #[inline]
    pub fn r#continue(&self, start: *mut c_void, len: usize, wake: bool) -> Result<u64> {
        let mode = if wake {
            ContinueMode::empty()
        } else {
            ContinueMode::DONTWAKE
        };
        match self.continue_with_mode(start, len, mode) {
            Ok(n) => Ok(n),
            Err(Error::PartiallyCopied(n)) if n > 0 => Ok(n as u64),
            Err(Error::PartiallyCopied(_)) => Err(Error::SystemError(Errno::EAGAIN)),
            Err(Error::ContinueFailed(errno)) => Err(Error::SystemError(errno)),
            Err(other) => Err(other),
        }
    }

    /// [`r#continue`](Self::continue) with mode flags: [`ContinueMode::DONTWAKE`], and
    /// [`ContinueMode::WRITE_PROTECT`] to map the pages write-protected (Linux 6.4; the range
    /// must also be registered with `RegisterMode::WRITE_PROTECT`).
    ///
    /// # Errors
    ///
    /// - [`Error::PartiallyCopied`]`(n)`: `EAGAIN` after `n` bytes, `n` possibly 0 (a page
    ///   further on is mapped, or a non-cooperative event is pending: read the events, then
    ///   retry from `start + n`).
    /// - [`Error::ContinueFailed`]: nothing was mapped, with the errno meanings of
    ///   [`r#continue`](Self::continue); `EINVAL` also for a mode the kernel does not know.
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
