//! Statistics: counters and a latency histogram per worker, each written only by its worker
//! (no cache line shared between workers is written per fault), summed when read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency buckets: bucket `i` counts faults resolved in `[2^i, 2^(i+1))` nanoseconds
/// (bucket 0 also holds 0 ns; the last bucket everything from about 2 s up).
pub const LATENCY_BUCKETS: usize = 32;

/// The counters of one worker, alone on their cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub pages_copied: AtomicU64,
    pub pages_zeroed: AtomicU64,
    pub pages_continued: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub fault_around_pages: AtomicU64,
    pub background_pages: AtomicU64,
    pub replay_pages: AtomicU64,
    pub eexist: AtomicU64,
    pub eagain_retries: AtomicU64,
    pub removed_pages: AtomicU64,
    pub events: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            faults: AtomicU64::new(0),
            pages_copied: AtomicU64::new(0),
            pages_zeroed: AtomicU64::new(0),
            pages_continued: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            fault_around_pages: AtomicU64::new(0),
            background_pages: AtomicU64::new(0),
            replay_pages: AtomicU64::new(0),
            eexist: AtomicU64::new(0),
            eagain_retries: AtomicU64::new(0),
            removed_pages: AtomicU64::new(0),
            events: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Adds `n` to a counter only its owner writes: a plain load and store, no locked
/// instruction.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

impl Counters {
    #[inline]
    pub fn record_latency(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let bucket = (63 - ns.max(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        add(&self.latency[bucket], 1);
    }

    fn add_to(&self, s: &mut Stats) {
        s.faults += self.faults.load(Relaxed);
        s.pages_copied += self.pages_copied.load(Relaxed);
        s.pages_zeroed += self.pages_zeroed.load(Relaxed);
        s.pages_continued += self.pages_continued.load(Relaxed);
        s.bytes_copied += self.bytes_copied.load(Relaxed);
        s.fault_around_pages += self.fault_around_pages.load(Relaxed);
        s.background_pages += self.background_pages.load(Relaxed);
        s.replay_pages += self.replay_pages.load(Relaxed);
        s.eexist += self.eexist.load(Relaxed);
        s.eagain_retries += self.eagain_retries.load(Relaxed);
        s.removed_pages += self.removed_pages.load(Relaxed);
        s.events += self.events.load(Relaxed);
        for (sum, b) in s.latency.iter_mut().zip(&self.latency) {
            *sum += b.load(Relaxed);
        }
    }
}

/// What the server has done so far (summed over its workers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Page faults read and served.
    pub faults: u64,
    /// Pages placed by copying from the source (`UFFDIO_COPY`).
    pub pages_copied: u64,
    /// Pages placed as zero pages (`UFFDIO_ZEROPAGE`, or a copy of zeros on hugetlbfs).
    pub pages_zeroed: u64,
    /// Pages mapped from the page cache (`UFFDIO_CONTINUE`).
    pub pages_continued: u64,
    /// Bytes copied from the source.
    pub bytes_copied: u64,
    /// Pages placed around a faulting page (included in the three counts above).
    pub fault_around_pages: u64,
    /// Pages placed by the background fill, or as they arrived
    /// ([`ServerBuilder::place_arrived`](super::ServerBuilder::place_arrived)) (included in
    /// the three counts above).
    pub background_pages: u64,
    /// Pages prefetched by replaying a working set (included in the three counts above;
    /// pages already placed, or discarded, when their turn came are not counted).
    pub replay_pages: u64,
    /// The time from the start to the end of the replay (the last recorded page placed or
    /// skipped); `None` without replay or while it runs.
    ///
    /// Pages prefetched and never touched (the waste) are not counted by the server: a
    /// placed page is not told when it is accessed. Measure them from the workload's own
    /// knowledge of what it touched against [`WorkingSet::order`](super::WorkingSet::order)
    /// (as `benches/replay.rs` does), or record the next run (without replay) and compare the
    /// two records.
    pub replay_time: Option<Duration>,
    /// Pages a placement found already present (`EEXIST`; for a page-cache hole of
    /// [`Backend::Continue`](super::Backend::Continue), also a zero page refused with
    /// `ENOENT`), once per page and placement: the page was placed by a racing worker or the
    /// replay, or populated by the process itself (a write through another mapping of shared
    /// memory). The placement goes on after the page; when it is the faulting page, its
    /// thread is woken. Not an error; such pages are not in the page counts above.
    pub eexist: u64,
    /// Placements retried after `EAGAIN` (a page further on present, or a pending event read
    /// first).
    pub eagain_retries: u64,
    /// Pages marked discarded by `REMOVE` events.
    pub removed_pages: u64,
    /// Non-cooperative events handled (`REMOVE`, `UNMAP`, `REMAP`, `FORK`).
    pub events: u64,
    /// Per-fault latency, from reading the fault to its page being in place: bucket `i`
    /// counts faults resolved in `[2^i, 2^(i+1))` ns.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Stats {
    pub(crate) fn sum(counters: &[Counters]) -> Stats {
        let mut s = Stats::default();
        for c in counters {
            c.add_to(&mut s);
        }
        s
    }

    /// The latency below which `q` (0.0..=1.0) of the faults were resolved (the upper bound
    /// of the histogram bucket holding that quantile); `None` before any fault.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(Duration::from_nanos(2u64 << i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_sum() {
        let c = [Counters::default(), Counters::default()];
        c[0].record_latency(Duration::from_nanos(1500)); // bucket 10
        c[1].record_latency(Duration::from_nanos(0)); // bucket 0
        add(&c[1].faults, 2);
        let s = Stats::sum(&c);
        assert_eq!(s.faults, 2);
        assert_eq!(s.latency[10], 1);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency_quantile(1.0), Some(Duration::from_nanos(2048)));
        assert_eq!(s.latency_quantile(0.5), Some(Duration::from_nanos(2)));
    }
}
