//! The `PAGEMAP_SCAN` ioctl (Linux 6.7) on `/proc/self/pagemap`, walked in bounded batches.

use std::ffi::CStr;
use std::io;
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
        // SAFETY: `fd` was just opened and nothing else owns it.
        let pagemap = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Scanner::over(pagemap, batch))
    }

    /// A scanner over an open pagemap file (or, in tests, a file that refuses the ioctl).
    pub(super) fn over(pagemap: OwnedFd, batch: usize) -> Scanner {
        Scanner {
            pagemap,
            regions: vec![sys::page_region::default(); batch.max(1)],
        }
    }

    /// Reports the written pages of `range` to `found` as address ranges, in order, and
    /// write-protects them again if `rearm`. Resumes from `walk_end` until the whole range
    /// is walked.
    ///
    /// On an error, the pages the kernel reported (and re-armed) before it stopped have been
    /// passed to `found`, so no write it saw is lost; the rest of the range was not walked.
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
        let pagemap = self.pagemap.as_fd();
        walk(range, flags, &mut self.regions, found, |arg| {
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions to `vec`,
            // our buffer; with WP_MATCHING it only changes page protection, which the
            // WP_ASYNC userfaultfd resolves in the kernel on the next write.
            unsafe { ioctl(pagemap, sys::PAGEMAP_SCAN, arg) }
        })
    }
}

/// The walk of `range` in calls of at most `regions.len()` regions, apart from the system
/// call (`call`) so that what it does with the kernel's answers can be tested with a fake.
///
/// `regions` is all zeroes between calls. That is how the regions of a failed call are found:
/// the kernel returns only the errno then, but it has already written (and, with
/// `WP_MATCHING`, re-armed) the regions it walked before the failure, each non-empty, from
/// the start of the buffer.
fn walk(
    range: Range<usize>,
    flags: u64,
    regions: &mut [sys::page_region],
    found: &mut dyn FnMut(Range<usize>),
    mut call: impl FnMut(&mut sys::pm_scan_arg) -> std::result::Result<libc::c_int, Errno>,
) -> Result<()> {
    let mut walk = range.start as u64;
    let end = range.end as u64;
    while walk < end {
        let mut arg = sys::pm_scan_arg {
            size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
            flags,
            start: walk,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: sys::PAGE_IS_WRITTEN,
            return_mask: sys::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let outcome = call(&mut arg);
        let written = match outcome {
            // Never more than the buffer holds, whatever the kernel says.
            Ok(n) => (n.max(0) as usize).min(regions.len()),
            Err(_) => regions.iter().take_while(|r| r.end > r.start).count(),
        };
        for r in &mut regions[..written] {
            found(r.start as usize..r.end as usize);
            *r = sys::page_region::default();
        }
        outcome.map_err(Error::PagemapScanFailed)?;
        // The walk stops early when the buffer is full, and `walk_end` says where; at the end
        // of the range it is `end`.
        if arg.walk_end >= end {
            break;
        }
        if arg.walk_end <= walk {
            return Err(Error::Io {
                operation: "PAGEMAP_SCAN",
                source: io::Error::other(format!(
                    "the kernel's walk_end {:#x} does not advance past {walk:#x}, so the \
                     pages from there to {end:#x} were not scanned (a kernel bug)",
                    arg.walk_end
                )),
            });
        }
        walk = arg.walk_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    /// Runs `walk` over pages 0..16 (at address 0x10000) with a buffer of `batch` regions
    /// and the fake kernel `call`; returns the result and what was reported.
    fn run(
        batch: usize,
        call: impl FnMut(&mut sys::pm_scan_arg) -> std::result::Result<libc::c_int, Errno>,
    ) -> (Result<()>, Vec<Range<usize>>) {
        let mut regions = vec![sys::page_region::default(); batch];
        let mut found = Vec::new();
        let start = 0x10000;
        let result = walk(
            start..start + 16 * PAGE as usize,
            0,
            &mut regions,
            &mut |r| found.push(r),
            call,
        );
        assert!(
            regions.iter().all(|r| r.start == 0 && r.end == 0),
            "the buffer is left zeroed"
        );
        (result, found)
    }

    /// Writes `pages` (page offsets from `arg.start`) as one-page regions into the buffer.
    fn write_regions(arg: &sys::pm_scan_arg, pages: &[u64]) {
        let vec = arg.vec as *mut sys::page_region;
        for (i, p) in pages.iter().enumerate() {
            assert!((i as u64) < arg.vec_len);
            let start = arg.start + p * PAGE;
            // SAFETY: `vec` is the test's buffer of `vec_len` regions.
            unsafe {
                *vec.add(i) = sys::page_region {
                    start,
                    end: start + PAGE,
                    categories: sys::PAGE_IS_WRITTEN,
                }
            };
        }
    }

    /// The kernel fails part way (EPERM at an untracked page) after writing regions it has
    /// re-armed; it returns only the errno, but those regions must be reported.
    #[test]
    fn regions_written_before_an_error_are_reported() {
        let (result, found) = run(8, |arg| {
            write_regions(arg, &[0, 2]);
            Err(Errno::EPERM)
        });
        assert!(
            matches!(result, Err(Error::PagemapScanFailed(Errno::EPERM))),
            "{result:?}"
        );
        assert_eq!(found, [0x10000..0x11000, 0x12000..0x13000]);
    }

    /// A resume point that does not advance is an error naming the incomplete scan, not a
    /// silent success (the regions of that call are still reported).
    #[test]
    fn a_walk_end_that_does_not_advance_is_an_error() {
        let mut calls = 0;
        let (result, found) = run(1, |arg| {
            calls += 1;
            write_regions(arg, &[0]);
            arg.walk_end = arg.start; // "the buffer is full, resume at the start"
            Ok(1)
        });
        assert_eq!(calls, 1);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("PAGEMAP_SCAN failed"), "{text}");
        assert!(text.contains("walk_end 0x10000 does not advance"), "{text}");
        assert_eq!(found, vec![0x10000..0x11000]);
    }

    /// A full buffer: the walk resumes from `walk_end` until the end of the range.
    #[test]
    fn the_walk_resumes_from_walk_end() {
        let mut starts = Vec::new();
        let (result, found) = run(1, |arg| {
            starts.push(arg.start);
            write_regions(arg, &[1]);
            arg.walk_end = (arg.start + 4 * PAGE).min(arg.end);
            Ok(1)
        });
        result.unwrap();
        assert_eq!(starts, [0x10000, 0x14000, 0x18000, 0x1c000]);
        assert_eq!(
            found,
            [
                0x11000..0x12000,
                0x15000..0x16000,
                0x19000..0x1a000,
                0x1d000..0x1e000
            ]
        );
    }

    /// A count larger than the buffer (which no correct kernel returns) reads no further than
    /// the buffer.
    #[test]
    fn a_count_beyond_the_buffer_is_clamped() {
        let (result, found) = run(2, |arg| {
            write_regions(arg, &[0, 1]);
            arg.walk_end = arg.end;
            Ok(1000)
        });
        result.unwrap();
        assert_eq!(found.len(), 2);
    }
}
