//! Dirty-page tracking: which pages of a range were written since the last look.
//!
//! # The kernel contract (Linux 6.7+)
//!
//! A userfaultfd created with `UFFD_FEATURE_WP_ASYNC` resolves write-protect faults itself:
//! a write to a protected page un-protects it and goes on, without an event and without a
//! handler thread. The page's protection bit then records that it was written. The
//! `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` reports the pages whose protection is gone
//! (category `PAGE_IS_WRITTEN`) and, with `PM_SCAN_WP_MATCHING`, protects them again in the
//! same walk of the page tables, so no write between "read" and "re-arm" is lost.
//!
//! [`DirtyTracker`] does exactly this:
//!
//! 1. [`DirtyTracker::new`] creates the descriptor with `WP_ASYNC` (and `WP_UNPOPULATED`,
//!    which makes never-touched anonymous pages protectable) and opens `/proc/self/pagemap`;
//!    [`DirtyTracker::from_uffd`] takes a descriptor of your own instead.
//! 2. [`track`](DirtyTracker::track) registers a range in write-protect mode and arms it: every
//!    page starts clean.
//! 3. [`collect_written`](DirtyTracker::collect_written) returns the written pages as merged
//!    address ranges and re-arms them, in one kernel call per batch of ranges.
//!
//! Writes produce no userfaultfd events: nothing needs to read the descriptor.
//!
//! # What counts as written
//!
//! Reports are at page granularity: base pages on private anonymous memory and shmem (a
//! transparent huge page is split by its first write after arming, so one written byte is one
//! reported 4 KiB page), whole huge pages on hugetlbfs. The ranges returned are byte address
//! ranges (`start..end`, `end` exclusive), page aligned.
//!
//! The kernel tracks writes *through the tracked mapping's page tables*, and is conservative
//! where it cannot tell; what this means per memory type (observed on Linux 6.18, and tested):
//!
//! | Happening after arming                        | anonymous | shmem | hugetlbfs |
//! |-----------------------------------------------|-----------|-------|-----------|
//! | a write through the tracked mapping            | reported  | reported | reported |
//! | a read (populated or not)                      | not reported | not reported | not reported if the huge page was populated when armed; reported once otherwise |
//! | `MADV_DONTNEED` of a page                      | reported (its contents are gone: it reads as zero) | not reported (the data stays in the file) | not reported (as shmem) |
//! | a write through another mapping of the same file, `write(2)` to it, hole punching (`MADV_REMOVE`) | — | not reported | not reported |
//!
//! So a page reported as written may not have changed (never a problem for a copy-on-write
//! snapshot or live migration: it is copied again), but a page not reported was not written
//! through this mapping. To track a shared file completely, track every mapping that writes it.
//!
//! # Cost
//!
//! One `PAGEMAP_SCAN` walks the page tables of the range once; the output buffer is bounded
//! ([`DirtyTracker::with_batch`]) and the walk resumes where a full buffer stopped it, so any
//! range size works without allocating in the tracker. The caller's `Vec` grows only if it
//! has less capacity than the ranges reported.

mod scan;

use std::ops::Range;

use libc::c_void;

use crate::{Error, FeatureFlags, RegisterMode, Result, Uffd, UffdBuilder};
use scan::Scanner;

/// Tracks which pages of registered ranges are written. See the [module docs](self).
///
/// ```
/// use userfaultfd::dirty::DirtyTracker;
/// # fn main() -> userfaultfd::Result<()> {
/// let mut tracker = match DirtyTracker::new() {
///     Ok(tracker) => tracker,
///     // Linux before 6.7 (`Error::UnsupportedFeatures`), or no userfaultfd at all.
///     Err(e) => {
///         eprintln!("no dirty-page tracking here: {e}");
///         return Ok(());
///     }
/// };
/// // SAFETY: sysconf has no preconditions.
/// let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
/// let len = 16 * page;
/// // SAFETY: a fresh private anonymous mapping.
/// let mem = unsafe {
///     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
///                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
/// };
/// assert_ne!(mem, libc::MAP_FAILED);
/// tracker.track(mem, len)?;
/// // SAFETY: the third page of the mapping, which holds no Rust object.
/// unsafe { *mem.cast::<u8>().add(2 * page) = 1 };
/// let mut written = Vec::new();
/// tracker.collect_written(mem, len, &mut written)?;
/// assert_eq!(written, [mem as usize + 2 * page..mem as usize + 3 * page]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DirtyTracker {
    uffd: Uffd,
    scanner: Scanner,
}

/// Page regions read per `PAGEMAP_SCAN` call by default (24 bytes each).
const DEFAULT_BATCH: usize = 512;

impl DirtyTracker {
    /// Creates a tracker: a close-on-exec, non-blocking userfaultfd with `WP_ASYNC` and
    /// `WP_UNPOPULATED` (plus `WP_HUGETLBFS_SHMEM` where the kernel has it, for shmem and
    /// hugetlbfs ranges), and `/proc/self/pagemap`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedFeatures`] naming `WP_ASYNC` on kernels before 6.7; the errors of
    /// [`UffdBuilder::create`]; [`Error::PagemapScanFailed`] if `/proc/self/pagemap` cannot be
    /// opened.
    pub fn new() -> Result<DirtyTracker> {
        DirtyTracker::with_batch(DEFAULT_BATCH)
    }

    /// As [`new`](Self::new), reading at most `batch` page ranges per kernel call (at least
    /// one). Smaller batches bound the memory, larger ones the number of calls.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_batch(batch: usize) -> Result<DirtyTracker> {
        let mut features = FeatureFlags::WP_ASYNC | FeatureFlags::WP_UNPOPULATED;
        if let Ok(caps) = crate::probe() {
            let missing = caps.missing(FeatureFlags::WP_ASYNC);
            if !missing.is_empty() {
                return Err(Error::UnsupportedFeatures(missing));
            }
            features |= caps.features() & FeatureFlags::WP_HUGETLBFS_SHMEM;
        }
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(features)
            .create()?;
        DirtyTracker::from_uffd(uffd, batch)
    }

    /// A tracker over a userfaultfd of your own, created with `FeatureFlags::WP_ASYNC` (the
    /// kernel adds `WP_UNPOPULATED` to it; add `WP_HUGETLBFS_SHMEM` to track shmem or
    /// hugetlbfs). Reads at most `batch` page ranges per kernel call (at least one).
    ///
    /// Useful when the same descriptor also serves other ranges, or to choose its flags. Do
    /// not register tracked ranges in `MISSING` or `MINOR` mode too: those faults would wait
    /// for a reader.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedFeatures`] naming `WP_ASYNC` when the running kernel lacks it (before
    /// 6.7); [`Error::InvalidArgument`] when the kernel has it but `uffd` was created without
    /// it; [`Error::PagemapScanFailed`] if `/proc/self/pagemap` cannot be opened.
    pub fn from_uffd(uffd: Uffd, batch: usize) -> Result<DirtyTracker> {
        if !uffd.features().contains(FeatureFlags::WP_ASYNC) {
            if let Ok(caps) = crate::probe() {
                let missing = caps.missing(FeatureFlags::WP_ASYNC);
                if !missing.is_empty() {
                    return Err(Error::UnsupportedFeatures(missing));
                }
            }
            return Err(Error::InvalidArgument {
                operation: "DirtyTracker::from_uffd",
                reason: "the userfaultfd was created without FeatureFlags::WP_ASYNC, so writes \
                         to protected pages would wait for a reader instead of being tracked: \
                         create it with require_features(FeatureFlags::WP_ASYNC)",
            });
        }
        Ok(DirtyTracker {
            uffd,
            scanner: Scanner::open(batch)?,
        })
    }

    /// Gives back the userfaultfd. Its registrations stay: writes to ranges still tracked
    /// keep being resolved by the kernel.
    pub fn into_uffd(self) -> Uffd {
        self.uffd
    }

    /// The userfaultfd behind the tracker (to register further ranges yourself, or to check
    /// that no event arrives).
    pub fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    /// Starts tracking `[start, start + len)`: registers it in write-protect mode and marks
    /// every page clean. Private anonymous memory, shmem and hugetlbfs (whole huge pages) are
    /// supported; `start` and `len` must be page aligned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an unaligned or empty range; [`Error::SystemError`]
    /// from registering (for example `EBUSY` when another userfaultfd has the range);
    /// [`Error::PagemapScanFailed`] or [`Error::Io`] when marking the pages clean fails, in
    /// which case the range is unregistered again (all of it, including any part that was
    /// tracked before this call), so that no range is left registered but never armed.
    pub fn track(&mut self, start: *mut c_void, len: usize) -> Result<()> {
        let range = page_range("DirtyTracker::track", start, len)?;
        self.uffd
            .register_with_mode(start, len, RegisterMode::WRITE_PROTECT)?;
        // Arming is a scan whose report is thrown away: it protects every page, populated or
        // not (never-touched pages report as written the first time).
        if let Err(e) = self.scanner.scan(range, true, &mut |_| {}) {
            // Best effort: the arming error is the one to report. Unregistering a range
            // this descriptor just registered fails only if the address space is gone.
            let _ = self.uffd.unregister(start, len);
            return Err(e);
        }
        Ok(())
    }

    /// Stops tracking `[start, start + len)` (unregisters it).
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`].
    pub fn untrack(&mut self, start: *mut c_void, len: usize) -> Result<()> {
        self.uffd.unregister(start, len)
    }

    /// Appends to `out` the address ranges of the pages of `[start, start + len)` written
    /// since the range was tracked or last collected, merged where adjacent and in address
    /// order, and marks them clean again in the same kernel calls.
    ///
    /// Each range is `start..end` in bytes (page aligned, `end` exclusive): its pages are
    /// `(end - start) / page_size`. What counts as written, per memory type (`MADV_DONTNEED`
    /// included), is in the [module docs](self#what-counts-as-written).
    ///
    /// The range must be tracked in full (by this tracker, or by any userfaultfd with
    /// `WP_ASYNC`). `out` is not cleared, so one `Vec` can be reused without allocating.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidArgument`] for an unaligned or empty range (nothing is scanned).
    /// - [`Error::PagemapScanFailed`]: `EPERM` when part of the range is not registered with a
    ///   `WP_ASYNC` userfaultfd in write-protect mode. The kernel walks the range in address
    ///   order and stops at the first such page; the written pages it found before that are
    ///   re-armed by then, so they are appended to `out` even on an error: **keep what `out`
    ///   holds after an error**, it is the only report of those writes. The pages from the
    ///   failure on are neither reported nor re-armed: their writes stay pending for a later
    ///   collect.
    /// - [`Error::Io`] if the kernel's resume point (`walk_end`) does not advance (a kernel
    ///   bug); what was appended before is correct and re-armed, the rest was not scanned.
    pub fn collect_written(
        &mut self,
        start: *mut c_void,
        len: usize,
        out: &mut Vec<Range<usize>>,
    ) -> Result<()> {
        let range = page_range("DirtyTracker::collect_written", start, len)?;
        self.scanner
            .scan(range, true, &mut |r| match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            })
    }
}

/// `[start, start + len)` as addresses, checked for page alignment.
fn page_range(operation: &'static str, start: *mut c_void, len: usize) -> Result<Range<usize>> {
    // SAFETY: sysconf has no memory effects.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize;
    let start = start as usize;
    let invalid = |reason| Err(Error::InvalidArgument { operation, reason });
    if start % page != 0 {
        return invalid("start is not page aligned");
    }
    if len == 0 || len % page != 0 {
        return invalid("len must be a non-zero multiple of the page size");
    }
    match start.checked_add(len) {
        Some(end) => Ok(start..end),
        None => invalid("start + len overflows"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    /// Arming fails after the range was registered (here PAGEMAP_SCAN goes to `/dev/null`,
    /// which answers ENOTTY): `track` must unregister the range, or it would stay registered
    /// but unarmed, and no other userfaultfd could take it (EBUSY).
    #[test]
    fn a_failed_arming_unregisters_the_range() {
        let caps = crate::probe().expect("probe");
        if !caps.missing(FeatureFlags::WP_ASYNC).is_empty() {
            eprintln!("SKIPPED: the running kernel lacks WP_ASYNC");
            return;
        }
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(FeatureFlags::WP_ASYNC)
            .create()
            .unwrap();
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut tracker = DirtyTracker {
            uffd,
            scanner: Scanner::over(null, 8),
        };
        // SAFETY: sysconf has no memory effects.
        let len = 4 * (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);

        let err = tracker.track(mem, len).unwrap_err();
        assert!(
            matches!(err, Error::PagemapScanFailed(crate::Errno::ENOTTY)),
            "{err:?}"
        );
        let other = UffdBuilder::new()
            .close_on_exec(true)
            .require_features(FeatureFlags::PAGEFAULT_FLAG_WP)
            .create()
            .unwrap();
        other
            .register_with_mode(mem, len, RegisterMode::WRITE_PROTECT)
            .expect("the range is no longer registered with the tracker's userfaultfd");

        drop(other);
        // SAFETY: our mapping, no longer used.
        assert_eq!(unsafe { libc::munmap(mem, len) }, 0);
    }
}
