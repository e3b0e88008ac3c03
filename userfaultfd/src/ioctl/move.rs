//! `UFFDIO_MOVE` (Linux 6.8, `FeatureFlags::MOVE`).

use std::os::fd::AsFd;

use libc::c_void;

use super::{addr, bytes_done, ioctl, len as len64};
use crate::{Error, MoveMode, Result, Uffd};
use userfaultfd_sys as sys;

impl Uffd {
    /// Moves the pages of `[src, src + len)` to the missing pages of `[dst, dst + len)`
    /// without copying: the page table entries are remapped, and the source is left
    /// unpopulated (reads there see zeros or fault again). Returns the bytes moved (`len`).
    ///
    /// Private anonymous memory of this process only; `dst` must be registered with this
    /// descriptor. With [`MoveMode::ALLOW_SRC_HOLES`] unpopulated source pages count as moved.
    ///
    /// # Safety
    ///
    /// The destination must be memory whose contents no Rust object relies on, and so must
    /// the source: its pages disappear.
    ///
    /// # Errors
    ///
    /// [`Error::PartiallyCopied`], or [`Error::MoveFailed`]: `ENOENT` for a hole in the source
    /// without `ALLOW_SRC_HOLES`, `EBUSY` when a source page is shared (after `fork`, or in the
    /// swap cache), `EEXIST` when a destination page is populated, `EINVAL` for memory that
    /// is not private anonymous, plus the cases of [`copy`](Self::copy).
    #[inline]
    pub unsafe fn r#move(
        &self,
        src: *const c_void,
        dst: *mut c_void,
        len: usize,
        mode: MoveMode,
    ) -> Result<usize> {
        let mut mv = sys::uffdio_move {
            dst: addr(dst),
            src: addr(src),
            len: len64(len),
            mode: mode.bits(),
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE reads and writes a `uffdio_move`; the caller guarantees both
        // ranges may change contents.
        let outcome = unsafe { ioctl(self.as_fd(), sys::UFFDIO_MOVE, &mut mv) };
        bytes_done(outcome, mv.move_, len, Error::MoveFailed)
    }
}
