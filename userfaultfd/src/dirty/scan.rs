//! The `PAGEMAP_SCAN` ioctl (Linux 6.7) on `/proc/self/pagemap`, walked in bounded batches.

use std::ffi::CStr;
use std::ops::Range;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use crate::ioctl::ioctl;
use crate::{Errno, Error, Result};
use userfaultfd_sys as sys;

const PAGEMAP: &CStr = c"/proc/self/pagemap";

/// An open `/proc/self/pagemap` and a reusable buffer of `page_region`s.
pub(super) struct Scanner {
    pagemap: OwnedFd,
    regions: Vec<sys::page_region>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("batch", &self.regions.len())
            .finish()
    }
}

impl Scanner {
    /// Opens `/proc/self/pagemap` with a buffer of `batch` (at least one) regions.
    pub(super) fn open(batch: usize) -> Result<Scanner> {
        // SAFETY: a NUL-terminated path; open has no other memory effects.
        let fd = unsafe { libc::open(PAGEMAP.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Error::PagemapScanFailed(Errno::last()));
        }
        Ok(Scanner {
            // SAFETY: `fd` was just opened and nothing else owns it.
            pagemap: unsafe { OwnedFd::from_raw_fd(fd) },
            regions: vec![sys::page_region::default(); batch.max(1)],
        })
    }

    /// Reports the written pages of `range` to `found` as address ranges, in order, and
    /// write-protects them again if `rearm`. Resumes from `walk_end` until the whole range
    /// is walked.
    pub(super) fn scan(
        &mut self,
        range: Range<usize>,
        rearm: bool,
        found: &mut dyn FnMut(Range<usize>),
    ) -> Result<()> {
        let flags = if rearm {
            // CHECK_WPASYNC turns "part of the range is not WP_ASYNC-registered" into EPERM
            // instead of silently not re-arming it.
            sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC
        } else {
            0
        };
        let mut walk = range.start as u64;
        let end = range.end as u64;
        while walk < end {
            let mut arg = sys::pm_scan_arg {
                size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
                flags,
                start: walk,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: sys::PAGE_IS_WRITTEN,
                return_mask: sys::PAGE_IS_WRITTEN,
                ..Default::default()
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions to `vec`,
            // our buffer; with WP_MATCHING it only changes page protection, which the
            // WP_ASYNC userfaultfd resolves in the kernel on the next write.
            let n = unsafe { ioctl(self.pagemap.as_fd(), sys::PAGEMAP_SCAN, &mut arg) }
                .map_err(Error::PagemapScanFailed)?;
            for r in &self.regions[..n as usize] {
                found(r.start as usize..r.end as usize);
            }
            // The walk stops early when the buffer is full; a walk that did not advance would
            // loop forever, which only a kernel bug could cause.
            if arg.walk_end <= walk {
                break;
            }
            walk = arg.walk_end;
        }
        Ok(())
    }
}
