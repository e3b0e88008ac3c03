//! Recording a working set while serving: an atomic first-touch bitmap over the source's
//! pages and one order array filled in first-touch order.
//!
//! A demand fault costs one relaxed load when its page was touched before; the first touch of
//! a page costs one `fetch_or` on the bitmap word and one `fetch_add` on the order index, and
//! one store. No lock, no allocation: both arrays are allocated at start, zeroed by the
//! allocator (so the order array, one `u64` per source page, costs memory only as far as it
//! is filled).

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::{SnapshotId, WorkingSet};

pub(crate) struct Recorder {
    snapshot: SnapshotId,
    page_size: u64,
    pages: u64,
    touched: Box<[AtomicU64]>,
    /// Source page + 1 (0: not yet stored) at the index of its first touch.
    order: Box<[AtomicU64]>,
    next: AtomicUsize,
}

/// `n` atomics, all zero, from the allocator's zeroed memory (untouched pages stay
/// unbacked).
fn zeroed(n: usize) -> Box<[AtomicU64]> {
    if n == 0 {
        return Box::new([]);
    }
    let layout =
        Layout::array::<AtomicU64>(n).unwrap_or_else(|_| handle_alloc_error(Layout::new::<u64>()));
    // SAFETY: a layout of non-zero size; the memory is zeroed, and all-zero bytes are a valid
    // `AtomicU64`; the box frees it with the same layout (that of `[AtomicU64]` of length n).
    unsafe {
        let p = alloc_zeroed(layout) as *mut AtomicU64;
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

impl Recorder {
    pub fn new(snapshot: SnapshotId, page_size: u64) -> Recorder {
        let pages = snapshot.len.div_ceil(page_size);
        Recorder {
            snapshot,
            page_size,
            pages,
            touched: zeroed(pages.div_ceil(64) as usize),
            order: zeroed(pages as usize),
            next: AtomicUsize::new(0),
        }
    }

    /// A demand fault on source page `page`.
    #[inline]
    pub fn touch(&self, page: u64) {
        if page >= self.pages {
            return;
        }
        let (word, bit) = (&self.touched[(page / 64) as usize], 1u64 << (page % 64));
        if word.load(Relaxed) & bit != 0 || word.fetch_or(bit, Relaxed) & bit != 0 {
            return;
        }
        // Each page gets here once: the index stays below `pages`.
        let i = self.next.fetch_add(1, Relaxed);
        self.order[i].store(page + 1, Relaxed);
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
        let r = Recorder::new(SnapshotId::new(300 * 4096 + 1, 1), 4096);
        for p in [5, 70, 5, 0, 300, 70, 301, 1 << 40] {
            r.touch(p);
        }
        // 301 pages (the last one partial); pages past them are ignored.
        let ws = r.working_set();
        assert_eq!(ws.order(), &[5, 70, 0, 300]);
        assert_eq!(WorkingSet::decode(&ws.encode()).unwrap(), ws);
        let empty = Recorder::new(SnapshotId::new(0, 0), 4096);
        empty.touch(0);
        assert!(empty.working_set().is_empty());
    }
}
