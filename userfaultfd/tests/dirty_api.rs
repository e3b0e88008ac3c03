//! Dirty-page tracking, the API around the kernel: bad input and ranges that are not tracked
//! give clear errors; a tracker over the caller's own descriptor; collecting into a `Vec` with
//! capacity allocates nothing.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use support::dirty::{collect, merged, touch, tracker};
use support::{kernel_lacks, MemoryType, Region};
use userfaultfd::dirty::DirtyTracker;
use userfaultfd::{Errno, Error, FeatureFlags, RegisterMode, UffdBuilder};

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
        (
            (usize::MAX - ps + 1) as *mut libc::c_void,
            2 * ps,
            "overflows",
        ),
    ] {
        let err = tracker.collect_written(start, len, &mut out).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(Errno::EINVAL));
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("collect_written"), "{err}");
        let err = tracker.track(start, len).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("track"), "{err}");
    }
    assert!(out.is_empty());
}

#[test]
fn untracked_ranges_are_refused_with_the_reason() {
    for memory in MemoryType::ALL {
        let Some(mut tracker) = tracker(64) else {
            return;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let mut out = Vec::new();
        // Not registered at all: the kernel refuses to scan rather than silently not re-arm.
        let err = tracker
            .collect_written(region.addr(), region.len(), &mut out)
            .unwrap_err();
        assert!(
            matches!(err, Error::PagemapScanFailed(Errno::EPERM)),
            "{memory:?}: {err:?}"
        );
        assert!(
            err.to_string().contains("not registered with a WP_ASYNC"),
            "{err}"
        );

        // Registered for write protection, but by a descriptor without WP_ASYNC: refused the
        // same way (its writes would wait for a reader, not be tracked).
        let plain = UffdBuilder::new()
            .close_on_exec(true)
            .require_features(memory.features_for(RegisterMode::WRITE_PROTECT))
            .create()
            .unwrap();
        plain
            .register_with_mode(region.addr(), region.len(), RegisterMode::WRITE_PROTECT)
            .unwrap();
        let err = tracker
            .collect_written(region.addr(), region.len(), &mut out)
            .unwrap_err();
        assert!(
            matches!(err, Error::PagemapScanFailed(Errno::EPERM)),
            "{memory:?}: {err:?}"
        );
        assert!(err.to_string().contains("WP_ASYNC"), "{err}");
        // ... and the tracker cannot take the range over.
        let err = tracker.track(region.addr(), region.len()).unwrap_err();
        assert!(
            matches!(err, Error::SystemError(Errno::EBUSY)),
            "{memory:?}: {err:?}"
        );
        assert!(err.to_string().contains("another userfaultfd"), "{err}");
        assert!(out.is_empty(), "{memory:?}");
    }
}

#[test]
fn untrack_ends_tracking() {
    let Some(mut tracker) = tracker(64) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 4).unwrap();
    tracker.track(region.addr(), region.len()).unwrap();
    tracker.untrack(region.addr(), region.len()).unwrap();
    touch(&region, 0, 1);
    let err = tracker
        .collect_written(region.addr(), region.len(), &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, Error::PagemapScanFailed(Errno::EPERM)),
        "{err:?}"
    );
}

#[test]
fn a_kernel_without_wp_async_is_named() {
    let err = Error::UnsupportedFeatures(FeatureFlags::WP_ASYNC);
    let shown = err.to_string();
    assert!(shown.contains("WP_ASYNC"), "{shown}");
    assert!(shown.contains("Linux 6.7"), "{shown}");
    // On such a kernel (ci/kernel-matrix boots 6.1), creating a tracker gives exactly this.
    if kernel_lacks(FeatureFlags::WP_ASYNC).is_some() {
        let err = DirtyTracker::new().unwrap_err();
        assert!(err.to_string().contains("Linux 6.7"), "{err}");
    }
}

#[test]
fn a_tracker_over_the_callers_descriptor() {
    if kernel_lacks(FeatureFlags::WP_ASYNC).is_some() {
        let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
        let err = DirtyTracker::from_uffd(uffd, 8).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFeatures(m) if m.contains(FeatureFlags::WP_ASYNC)),
            "{err:?}"
        );
        return;
    }
    // Without WP_ASYNC the descriptor cannot track: refused, saying what to do.
    let plain = UffdBuilder::new().close_on_exec(true).create().unwrap();
    let err = DirtyTracker::from_uffd(plain, 8).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("FeatureFlags::WP_ASYNC"), "{err}");

    for memory in MemoryType::ALL {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .require_features(
                FeatureFlags::WP_ASYNC | memory.features_for(RegisterMode::WRITE_PROTECT),
            )
            .create()
            .unwrap();
        let mut tracker = DirtyTracker::from_uffd(uffd, 8).unwrap();
        let Some(region) = Region::new(memory, 4) else {
            continue;
        };
        tracker.track(region.addr(), region.len()).unwrap();
        touch(&region, 1, 1);
        touch(&region, 2, 1);
        assert_eq!(
            collect(&mut tracker, &region),
            merged(&region, &[1, 2]),
            "{memory:?}"
        );
        // The descriptor comes back, still tracking.
        let uffd = tracker.into_uffd();
        touch(&region, 3, 1);
        let mut tracker = DirtyTracker::from_uffd(uffd, 8).unwrap();
        assert_eq!(
            collect(&mut tracker, &region),
            merged(&region, &[3]),
            "{memory:?}"
        );
    }
}

/// Counts, per thread, the allocations made while that thread has counting on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn collecting_into_a_reused_vec_allocates_nothing() {
    let Some(mut tracker) = tracker(4) else {
        return;
    };
    let region = Region::new(MemoryType::Anonymous, 64).unwrap();
    tracker.track(region.addr(), region.len()).unwrap();
    let mut out = Vec::with_capacity(32);
    let mut found = 0;
    COUNTING.with(|c| c.set(true));
    for round in 0..10 {
        // 32 ranges, eight kernel calls of four.
        for p in (0..64).step_by(2) {
            touch(&region, p, round);
        }
        out.clear();
        tracker
            .collect_written(region.addr(), region.len(), &mut out)
            .unwrap();
        found += out.len();
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(found, 10 * 32, "every range reported");
    assert_eq!(
        ALLOCATIONS.with(Cell::get),
        0,
        "allocations while collecting"
    );
}
