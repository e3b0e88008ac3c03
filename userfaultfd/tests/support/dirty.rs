//! For the dirty-tracking tests: a tracker (or the checked refusal on kernels without
//! `WP_ASYNC`), expected merged ranges, byte writes and reads, a seeded generator.

use std::ops::Range;

use userfaultfd::dirty::DirtyTracker;
use userfaultfd::{Error, FeatureFlags};

use super::{kernel_lacks, Region};

/// A tiny xorshift generator, seeded, so a failing set of pages can be reproduced.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Each of `0..n`, kept with probability 1/`one_in`, in order.
    pub fn subset(&mut self, n: usize, one_in: u64) -> Vec<usize> {
        (0..n).filter(|_| self.next() % one_in == 0).collect()
    }
}

/// A tracker reading `batch` ranges per call, or `None` when the kernel lacks WP_ASYNC — in
/// which case creating one must fail with the error naming it (checked here, so the tests
/// check that path on older kernels).
#[track_caller]
pub fn tracker(batch: usize) -> Option<DirtyTracker> {
    if kernel_lacks(FeatureFlags::WP_ASYNC).is_some() {
        let err = DirtyTracker::new().unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFeatures(m) if m.contains(FeatureFlags::WP_ASYNC)),
            "{err:?}"
        );
        return None;
    }
    Some(DirtyTracker::with_batch(batch).expect("creating a dirty tracker"))
}

/// The merged address ranges of `pages` (sorted, distinct) of `region`.
pub fn merged(region: &Region, pages: &[usize]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &p in pages {
        let start = region.page(p) as usize;
        let end = start + region.page_size();
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}

/// Writes `value` to one byte of page `page`.
pub fn touch(region: &Region, page: usize, value: u8) {
    // SAFETY: a byte inside our own mapping; volatile so the write is not elided.
    unsafe { region.page(page).add(17).write_volatile(value) };
}

/// Reads one byte of page `page`.
pub fn peek(region: &Region, page: usize) -> u8 {
    // SAFETY: a byte inside our own mapping; volatile so the read is not elided.
    unsafe { region.page(page).add(17).read_volatile() }
}

/// The written ranges of the whole region, re-arming them.
#[track_caller]
pub fn collect(tracker: &mut DirtyTracker, region: &Region) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    tracker
        .collect_written(region.addr(), region.len(), &mut out)
        .unwrap_or_else(|e| panic!("{:?}: {e}", region.memory()));
    out
}
