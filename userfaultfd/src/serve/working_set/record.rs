//! Recording a working set while serving: an atomic first-touch bitmap over the source's
//! pages and one order array filled in first-touch order.
//!
//! A demand fault costs one relaxed load when its page was touched before; the first touch of
//! a page costs one `fetch_or` on the bitmap word and one `fetch_add` on the order index, and
//! one store. No lock, no allocation: both arrays are allocated at start, zeroed by the
//! allocator (so the order array, one `u64` per source page, costs memory only as far as it
//! is filled).

use std::alloc::{alloc_zeroed, Layout};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::{SnapshotId, WorkingSet};

pub(crate) struct Recorder {
    snapshot: SnapshotId,
    page_size: u64,
    /// The source pages recorded: `first..end` (those the regions serve, within the snapshot).
    first: u64,
    end: u64,
    /// One bit per page of `first..end`.
    touched: Box<[AtomicU64]>,
    /// Source page + 1 (0: not yet stored) at the index of its first touch.
    order: Box<[AtomicU64]>,
    next: AtomicUsize,
}

/// `n` atomics, all zero, from the allocator's zeroed memory (untouched pages stay
/// unbacked); `None` when the memory cannot be had (never an abort: `n` comes from the
/// caller's regions).
fn zeroed(n: usize) -> Option<Box<[AtomicU64]>> {
    if n == 0 {
        return Some(Box::new([]));
    }
    let layout = Layout::array::<AtomicU64>(n).ok()?;
    // SAFETY: a layout of non-zero size; the memory is zeroed, and all-zero bytes are a valid
    // `AtomicU64`; the box frees it with the same layout (that of `[AtomicU64]` of length n).
    unsafe {
        let p = alloc_zeroed(layout) as *mut AtomicU64;
        if p.is_null() {
            return None;
        }
        Some(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)))
    }
}

impl Recorder {
    /// A recorder of the source pages `pages` (clipped to the snapshot's pages), of which at
    /// most `capacity` can be touched (the pages the regions serve). Memory: a bit per page
    /// of `pages`, and 8 bytes per page touched (the order array is allocated zeroed for
    /// `capacity`, and costs memory only as far as it is filled).
    ///
    /// # Errors
    ///
    /// The bytes it would need, when the allocator refuses them.
    pub fn new(
        snapshot: SnapshotId,
        page_size: u64,
        pages: std::ops::Range<u64>,
        capacity: u64,
    ) -> Result<Recorder, u128> {
        let last = snapshot.len.div_ceil(page_size);
        let (first, end) = (pages.start.min(last), pages.end.min(last));
        let span = end.saturating_sub(first);
        let capacity = capacity.min(span);
        let need = u128::from(span.div_ceil(64)) * 8 + u128::from(capacity) * 8;
        let size = |n: u64| usize::try_from(n).map_err(|_| need);
        let touched = zeroed(size(span.div_ceil(64))?).ok_or(need)?;
        let order = zeroed(size(capacity)?).ok_or(need)?;
        Ok(Recorder {
            snapshot,
            page_size,
            first,
            end: first + span,
            touched,
            order,
            next: AtomicUsize::new(0),
        })
    }

    /// A demand fault on source page `page`.
    #[inline]
    pub fn touch(&self, page: u64) {
        if !(self.first..self.end).contains(&page) {
            return;
        }
        let bit = page - self.first;
        let (word, mask) = (&self.touched[(bit / 64) as usize], 1u64 << (bit % 64));
        if word.load(Relaxed) & mask != 0 || word.fetch_or(mask, Relaxed) & mask != 0 {
            return;
        }
        // Each page gets here once, and the regions serve at most `order.len()` distinct
        // pages: the index stays in bounds (checked all the same: a page past it is left out
        // rather than a panic in a worker).
        let i = self.next.fetch_add(1, Relaxed);
        if let Some(slot) = self.order.get(i) {
            slot.store(page + 1, Relaxed);
        }
    }

    /// The working set so far (pages whose first touch is still being stored are left out).
    pub fn working_set(&self) -> WorkingSet {
        let n = self.next.load(Relaxed).min(self.order.len());
        let order = self.order[..n]
            .iter()
            .map(|e| e.load(Relaxed))
            .filter(|&e| e != 0)
            .map(|e| e - 1)
            .collect();
        WorkingSet {
            snapshot: self.snapshot,
            page_size: self.page_size,
            order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_touches_in_order_once_each() {
        let id = SnapshotId::new(300 * 4096 + 1, 1);
        let r = Recorder::new(id, 4096, 0..u64::MAX, u64::MAX).unwrap();
        for p in [5, 70, 5, 0, 300, 70, 301, 1 << 40] {
            r.touch(p);
        }
        // 301 pages (the last one partial); pages past them are ignored.
        let ws = r.working_set();
        assert_eq!(ws.order(), &[5, 70, 0, 300]);
        assert_eq!(WorkingSet::decode(&ws.encode()).unwrap(), ws);
        let empty = Recorder::new(SnapshotId::new(0, 0), 4096, 0..1, 1).unwrap();
        empty.touch(0);
        assert!(empty.working_set().is_empty());
    }

    #[test]
    fn records_only_the_window_it_was_given() {
        let r = Recorder::new(SnapshotId::new(1 << 30, 1), 4096, 100..110, 4).unwrap();
        for p in [99, 100, 109, 110, 105, 101, 102, 103] {
            r.touch(p);
        }
        // Pages outside 100..110 are not the regions'; past the capacity nothing is stored.
        assert_eq!(r.working_set().order(), &[100, 109, 105, 101]);
    }

    #[test]
    fn a_huge_snapshot_is_an_error_not_an_abort() {
        // 2^52 pages: a bitmap of 512 TiB.
        let id = SnapshotId::new(u64::MAX, 1);
        let need = Recorder::new(id, 4096, 0..u64::MAX, u64::MAX)
            .err()
            .unwrap();
        assert!(need > 1 << 50, "{need}");
    }
}
