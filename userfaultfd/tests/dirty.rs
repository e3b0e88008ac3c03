//! Dirty-page tracking (`WP_ASYNC` + `PAGEMAP_SCAN`): the pages written are reported exactly,
//! merged, and re-armed; writes produce no events; errors say what is wrong.

mod support;

use std::ops::Range;

use support::{kernel_lacks, MemoryType, Region};
use userfaultfd::dirty::DirtyTracker;
use userfaultfd::{Errno, Error, FeatureFlags};

/// A tiny xorshift generator, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A tracker, or `None` when the kernel lacks WP_ASYNC — in which case creating one must fail
/// with the error naming it (checked here, so older kernels test that path).
fn tracker(batch: usize) -> Option<DirtyTracker> {
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

/// The merged address ranges of `pages` (sorted) of `region`.
fn merged(region: &Region, pages: &[usize]) -> Vec<Range<usize>> {
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

fn touch(region: &Region, page: usize, value: u8) {
    // SAFETY: a byte inside our own mapping; volatile so the write is not elided.
    unsafe { region.page(page).add(17).write_volatile(value) };
}

fn collect(tracker: &mut DirtyTracker, region: &Region) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    tracker
        .collect_written(region.addr(), region.len(), &mut out)
        .unwrap_or_else(|e| panic!("{:?}: {e}", region.memory()));
    out
}

#[test]
fn written_pages_are_reported_exactly_and_rearmed() {
    for memory in MemoryType::ALL {
        let Some(mut tracker) = tracker(512) else {
            return;
        };
        let pages = if memory == MemoryType::Hugetlb {
            8
        } else {
            256
        };
        let Some(region) = Region::new(memory, pages) else {
            continue;
        };
        // Half the pages populated before tracking starts: both kinds must start clean.
        for p in (0..pages).step_by(2) {
            touch(&region, p, 1);
        }
        tracker.track(region.addr(), region.len()).unwrap();
        assert_eq!(
            collect(&mut tracker, &region),
            [],
            "{memory:?}: clean after track"
        );

        let mut rng = Rng(0x0d1e_2026 + pages as u64);
        for round in 0..3 {
            let mut written: Vec<usize> = (0..pages).filter(|_| rng.next() % 3 == 0).collect();
            written.dedup();
            for &p in &written {
                touch(&region, p, round as u8 + 2);
            }
            assert_eq!(
                collect(&mut tracker, &region),
                merged(&region, &written),
                "{memory:?}: round {round}"
            );
            assert_eq!(collect(&mut tracker, &region), [], "{memory:?}: re-armed");
        }
        // The writes were resolved in the kernel: nothing to read on the descriptor.
        assert!(tracker.uffd().read_event().unwrap().is_none(), "{memory:?}");
    }
}

#[test]
fn a_small_batch_still_reports_every_range() {
    let Some(mut tracker) = tracker(2) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 64).unwrap();
    tracker.track(region.addr(), region.len()).unwrap();
    // Every third page: 22 separate ranges, read two per kernel call.
    let written: Vec<usize> = (0..64).step_by(3).collect();
    for &p in &written {
        touch(&region, p, 9);
    }
    assert_eq!(collect(&mut tracker, &region), merged(&region, &written));
}

#[test]
fn dontneed_pages_are_reported_as_written() {
    let Some(mut tracker) = tracker(64) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 8).unwrap();
    for p in 0..8 {
        touch(&region, p, 1);
    }
    tracker.track(region.addr(), region.len()).unwrap();
    // SAFETY: drops pages 2 and 3 of our own mapping; they read as zero afterwards.
    let r = unsafe {
        libc::madvise(
            region.page(2).cast(),
            2 * region.page_size(),
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(collect(&mut tracker, &region), merged(&region, &[2, 3]));
}

#[test]
fn bad_ranges_are_clear_errors() {
    let Some(mut tracker) = tracker(64) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 4).unwrap();
    let ps = region.page_size();
    let mut out = Vec::new();
    // SAFETY: one byte into our mapping (only its address is used).
    let unaligned = unsafe { region.ptr().add(1) }.cast();
    for (start, len, why) in [
        (unaligned, ps, "start is not page aligned"),
        (region.addr(), ps + 1, "multiple of the page size"),
        (region.addr(), 0, "multiple of the page size"),
    ] {
        let err = tracker.collect_written(start, len, &mut out).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(Errno::EINVAL));
        assert!(err.to_string().contains(why), "{err}");
        let err = tracker.track(start, len).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    // A range nobody tracks: the kernel refuses to scan it rather than silently not re-arm.
    let err = tracker
        .collect_written(region.addr(), region.len(), &mut out)
        .unwrap_err();
    assert!(
        matches!(err, Error::PagemapScanFailed(Errno::EPERM)),
        "{err:?}"
    );
    assert!(err.to_string().contains("WP_ASYNC"), "{err}");
    assert!(out.is_empty());
}
