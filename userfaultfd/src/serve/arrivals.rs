//! [`Arrivals`]: how a source that fetches tells the server which of its bytes it now holds,
//! so that the server places them before they are faulted on
//! ([`ServerBuilder::place_arrived`](super::ServerBuilder::place_arrived)).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// A handle a [`PageSource`](super::PageSource) reports arrived bytes through: byte ranges of
/// the source that [`fetch`](super::PageSource::fetch) now answers without waiting (fetched
/// from the network into memory, read into a cache). The server places them, at the lowest
/// CPU priority, into every region that maps them, skipping pages already placed and pages
/// the process discarded; faults keep their priority.
///
/// Given to the source once, by [`PageSource::arrivals`](super::PageSource::arrivals), when
/// a server with [`place_arrived`](super::ServerBuilder::place_arrived) starts. Cheap to
/// clone; [`arrived`](Self::arrived) takes a lock for a moment and never blocks on the
/// server's work. The server holds each range reported until it has placed it: report a
/// range once, when it arrives (a source reporting every few KiB makes as many placements
/// of a few KiB). Reports after the server stopped are dropped.
#[derive(Clone)]
pub struct Arrivals(Arc<ArrivalQueue>);

impl Arrivals {
    pub(crate) fn new(queue: Arc<ArrivalQueue>) -> Arrivals {
        Arrivals(queue)
    }

    /// Bytes `[offset, offset + len)` of the source have arrived: `fetch` answers them
    /// without waiting from now on. Pages the range covers only in part are left to the
    /// faults (or to a later report that covers them whole).
    pub fn arrived(&self, offset: u64, len: u64) {
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if len == 0 || self.is_closed() {
            return;
        }
        self.0
            .ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(offset..end);
        self.0.ready.notify_one();
    }

    /// Whether the server has stopped taking reports (it stopped): the source may drop
    /// this handle.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Arrivals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self
            .0
            .ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Arrivals")
            .field("pending", &pending)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The ranges reported and not yet taken by the server's fill thread.
#[derive(Default)]
pub(crate) struct ArrivalQueue {
    ranges: Mutex<VecDeque<Range<u64>>>,
    ready: Condvar,
    closed: AtomicBool,
}

impl ArrivalQueue {
    /// The next range reported, waiting at most `timeout` for one.
    pub(crate) fn pop(&self, timeout: Duration) -> Option<Range<u64>> {
        let mut ranges = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        if ranges.is_empty() {
            ranges = self
                .ready
                .wait_timeout(ranges, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        ranges.pop_front()
    }

    /// Takes no more reports, and forgets those not taken.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        // The fill, waiting for a report, sees the stop at once.
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_taken_in_order_and_dropped_once_closed() {
        let queue = Arc::new(ArrivalQueue::default());
        let arrivals = Arrivals::new(Arc::clone(&queue));
        arrivals.arrived(0, 4096);
        arrivals.arrived(8192, 0); // empty: ignored
        arrivals.arrived(u64::MAX - 1, 10); // past the end of the offsets: ignored
        arrivals.clone().arrived(4096, 8192);
        assert_eq!(queue.pop(Duration::ZERO), Some(0..4096));
        assert_eq!(queue.pop(Duration::ZERO), Some(4096..12288));
        assert_eq!(queue.pop(Duration::from_millis(1)), None);
        arrivals.arrived(0, 4096);
        queue.close();
        assert!(arrivals.is_closed());
        arrivals.arrived(4096, 4096);
        assert_eq!(queue.pop(Duration::ZERO), None);
    }
}
