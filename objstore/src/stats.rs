//! What a source has done: requests, bytes, retries, hedges, cache hits, waits.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Live counters, shared by the fetch threads and the page server's workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    cache_reads: AtomicU64,
    cache_bytes: AtomicU64,
    waits: AtomicU64,
    chunks_fetched: AtomicU64,
    handoffs: AtomicU64,
    cache_verified: AtomicU64,
    cache_discarded: AtomicU64,
    chunks_released: AtomicU64,
    bytes_released: AtomicU64,
    asked_after_release: AtomicU64,
}

impl Counters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
    pub(crate) fn fetched(&self, bytes: u64) {
        self.bytes_fetched.fetch_add(bytes, Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub(crate) fn hedge(&self) {
        self.hedges.fetch_add(1, Relaxed);
    }
    pub(crate) fn cache_hit(&self, bytes: u64) {
        self.cache_reads.fetch_add(1, Relaxed);
        self.cache_bytes.fetch_add(bytes, Relaxed);
    }
    pub(crate) fn wait(&self) {
        self.waits.fetch_add(1, Relaxed);
    }
    pub(crate) fn cache_verified(&self) {
        self.cache_verified.fetch_add(1, Relaxed);
    }
    pub(crate) fn cache_discarded(&self) {
        self.cache_discarded.fetch_add(1, Relaxed);
    }
    pub(crate) fn handoff(&self) {
        self.handoffs.fetch_add(1, Relaxed);
    }
    pub(crate) fn chunk_done(&self) {
        self.chunks_fetched.fetch_add(1, Relaxed);
    }
    pub(crate) fn asked_after_release(&self) {
        self.asked_after_release.fetch_add(1, Relaxed);
    }
    pub(crate) fn released(&self, bytes: u64) {
        self.chunks_released.fetch_add(1, Relaxed);
        self.bytes_released.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            retries: self.retries.load(Relaxed),
            hedges: self.hedges.load(Relaxed),
            cache_reads: self.cache_reads.load(Relaxed),
            cache_bytes: self.cache_bytes.load(Relaxed),
            waits: self.waits.load(Relaxed),
            chunks_fetched: self.chunks_fetched.load(Relaxed),
            handoffs: self.handoffs.load(Relaxed),
            cache_verified: self.cache_verified.load(Relaxed),
            cache_discarded: self.cache_discarded.load(Relaxed),
            chunks_released: self.chunks_released.load(Relaxed),
            bytes_released: self.bytes_released.load(Relaxed),
            asked_after_release: self.asked_after_release.load(Relaxed),
        }
    }
}

/// A snapshot of a source's counters ([`ObjectSource::stats`](crate::ObjectSource::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Range requests sent (hedges and retries included; the first probe not).
    pub requests: u64,
    /// Body bytes received from the store.
    pub bytes_fetched: u64,
    /// Attempts that failed transiently and were retried.
    pub retries: u64,
    /// Hedged requests sent.
    pub hedges: u64,
    /// Page-server reads answered from the disk cache (`pread` into the worker's buffer).
    pub cache_reads: u64,
    /// Bytes read from the disk cache.
    pub cache_bytes: u64,
    /// Page requests that had to wait for bytes in flight or not yet asked for.
    pub waits: u64,
    /// Chunks fetched whole from the store.
    pub chunks_fetched: u64,
    /// Background fetches that a fault caught in flight and handed over to the fetch
    /// threads, which run at the caller's priority (the background threads run at nice 19).
    pub handoffs: u64,
    /// Chunks of the disk cache read back whole and found intact (their checksum matched):
    /// once per chunk per source, on its first read; later reads are not checked again.
    pub cache_verified: u64,
    /// Chunks of the disk cache whose checksum did not match on their first read: dropped
    /// from the cache, never served, fetched again from the store.
    pub cache_discarded: u64,
    /// Chunks whose bytes were dropped from the source's memory because the page server
    /// had placed every page of them ([`PageSource::placed`](userfaultfd::serve::PageSource::placed)).
    pub chunks_released: u64,
    /// The bytes those chunks held.
    pub bytes_released: u64,
    /// Requests for pages of those chunks, answered with zeros: duplicate faults on pages
    /// already placed, or pages the process discarded without the server being told.
    pub asked_after_release: u64,
}

impl Stats {
    /// One progress line, as the handler prints it: bytes fetched, rate over `elapsed`,
    /// requests, retries, hedges, cache hits.
    pub fn line(&self, elapsed: Duration) -> String {
        self.with(elapsed).to_string()
    }

    fn with(&self, elapsed: Duration) -> Line<'_> {
        Line {
            stats: self,
            elapsed,
        }
    }
}

struct Line<'a> {
    stats: &'a Stats,
    elapsed: Duration,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        let mib = s.bytes_fetched as f64 / (1 << 20) as f64;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "objstore: {mib:.1} MiB fetched in {secs:.1} s ({:.1} MiB/s), {} requests, {} retries, \
             {} hedged, cache: {} reads ({:.1} MiB), {:.1} MiB placed and dropped",
            mib / secs,
            s.requests,
            s.retries,
            s.hedges,
            s.cache_reads,
            s.cache_bytes as f64 / (1 << 20) as f64,
            s.bytes_released as f64 / (1 << 20) as f64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line() {
        let s = Stats {
            requests: 12,
            bytes_fetched: 48 << 20,
            retries: 2,
            hedges: 1,
            cache_reads: 3,
            cache_bytes: 1 << 20,
            waits: 5,
            chunks_fetched: 12,
            handoffs: 0,
            cache_verified: 3,
            cache_discarded: 0,
            chunks_released: 8,
            bytes_released: 32 << 20,
            asked_after_release: 1,
        };
        assert_eq!(
            s.line(Duration::from_secs(2)),
            "objstore: 48.0 MiB fetched in 2.0 s (24.0 MiB/s), 12 requests, 2 retries, \
             1 hedged, cache: 3 reads (1.0 MiB), 32.0 MiB placed and dropped"
        );
    }
}
