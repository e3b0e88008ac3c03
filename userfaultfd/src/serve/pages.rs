//! Per-page state of a region, in atomic bitmaps: which pages the server has placed (or knows
//! to be present), and which the process discarded (they must read as zeros from then on).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One bit per page.
#[derive(Debug)]
struct Bits(Box<[AtomicU64]>);

impl Bits {
    fn new(pages: usize) -> Bits {
        Bits((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    #[inline]
    fn get(&self, i: usize) -> bool {
        self.0[i / 64].load(Relaxed) & (1 << (i % 64)) != 0
    }

    /// Sets (or clears) bits `[from, to)`, a word at a time.
    fn set_range(&self, from: usize, to: usize, value: bool) {
        let mut i = from;
        while i < to {
            let bit = i % 64;
            let n = (64 - bit).min(to - i);
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            if value {
                self.0[i / 64].fetch_or(mask, Relaxed);
            } else {
                self.0[i / 64].fetch_and(!mask, Relaxed);
            }
            i += n;
        }
    }
}

/// The state of each page of one region.
///
/// Relaxed atomics suffice: a bit is read and written under the server's lock (shared by the
/// fillers, exclusive for the event reader), which orders the event processing against the
/// fills; the bits themselves only need to be tear-free.
#[derive(Debug)]
pub(crate) struct PageState {
    placed: Bits,
    discarded: Bits,
    /// Whether any page was ever discarded (most regions never are: their placements skip
    /// the per-page check).
    any_discards: std::sync::atomic::AtomicBool,
}

impl PageState {
    pub fn new(pages: usize) -> PageState {
        PageState {
            placed: Bits::new(pages),
            discarded: Bits::new(pages),
            any_discards: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[inline]
    pub fn is_placed(&self, page: usize) -> bool {
        self.placed.get(page)
    }

    #[inline]
    pub fn is_discarded(&self, page: usize) -> bool {
        self.discarded.get(page)
    }

    pub fn mark_placed(&self, from: usize, to: usize) {
        self.placed.set_range(from, to, true);
    }

    /// The process discarded these pages (`MADV_DONTNEED`/`REMOVE`): they are empty again,
    /// and read as zeros when next touched.
    pub fn mark_discarded(&self, from: usize, to: usize) {
        self.any_discards.store(true, Relaxed);
        self.discarded.set_range(from, to, true);
        self.placed.set_range(from, to, false);
    }

    /// Whether the page needs no placement unless faulted: placed, or discarded by the
    /// process (a discarded page is placed again only when the process faults it).
    #[inline]
    pub fn settled(&self, page: usize) -> bool {
        self.placed.get(page) || self.discarded.get(page)
    }

    /// The end of the run of pages from `from` (excluded `to`) with the same settled state.
    #[inline]
    pub fn settled_run_end(&self, from: usize, to: usize, settled: bool) -> usize {
        let mut i = from;
        while i < to && self.settled(i) == settled {
            i += 1;
        }
        i
    }

    /// Whether a page of `[from, to)` other than `except` is discarded.
    #[inline]
    pub fn any_discarded(&self, from: usize, to: usize, except: Option<usize>) -> bool {
        self.any_discards.load(Relaxed)
            && (from..to).any(|i| Some(i) != except && self.is_discarded(i))
    }

    /// The end of the run of pages from `from` (excluded `to`) with the same placed state.
    #[inline]
    pub fn run_end(&self, from: usize, to: usize, placed: bool) -> usize {
        let mut i = from;
        while i < to && self.is_placed(i) == placed {
            i += 1;
        }
        i
    }

    /// The end of the run of pages from `from` with the same discarded state.
    #[inline]
    pub fn discarded_run_end(&self, from: usize, to: usize, discarded: bool) -> usize {
        let mut i = from;
        while i < to && self.is_discarded(i) == discarded {
            i += 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_words() {
        let s = PageState::new(200);
        s.mark_placed(60, 130);
        assert!(!s.is_placed(59) && s.is_placed(60) && s.is_placed(129) && !s.is_placed(130));
        assert_eq!(s.run_end(60, 200, true), 130);
        s.mark_discarded(64, 128);
        assert!(s.is_placed(63) && !s.is_placed(64) && s.is_discarded(127));
        assert_eq!(s.discarded_run_end(64, 200, true), 128);
        assert_eq!(s.run_end(0, 200, false), 60);
    }
}
