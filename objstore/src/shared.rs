//! [`Shared`]: the state the fetch threads and the page server's workers share — the buffer
//! and its page bitmap, each chunk's state (single flight), the work queue, the disk cache —
//! and what a fault does with it: queue its chunk (and read ahead), then wait for its page.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::cache::{DiskCache, Verified};
use crate::error::{Cause, FetchError};
use crate::memory::{zeroed, Buffer, PageBits};
use crate::queue::{Priority, Task, WorkQueue};
use crate::remote::Remote;
use crate::stats::Counters;
use crate::Options;
use userfaultfd::serve::Arrivals;

// A chunk's state: IDLE -> QUEUED -> RUNNING (claimed by one fetch thread) -> DONE or FAILED;
// DONE -> RELEASED once the page server placed all its pages (its bytes dropped; final).
pub(crate) const IDLE: u8 = 0;
pub(crate) const QUEUED: u8 = 1;
pub(crate) const RUNNING: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const FAILED: u8 = 4;
pub(crate) const RELEASED: u8 = 5;

/// Everything the fetch threads and the page server's workers share.
pub(crate) struct Shared {
    pub(crate) remote: Remote,
    pub(crate) opts: Options,
    pub(crate) page: usize,
    pub(crate) pages_per_chunk: usize,
    pub(crate) chunks: usize,
    pub(crate) pages: usize,
    /// The pages that lie wholly inside the object: all of them but a last page the
    /// object's end cuts. The page server never places that one (a region lies inside its
    /// source, in whole pages), so a chunk counts as placed without it.
    pub(crate) whole_pages: usize,
    pub(crate) buffer: Buffer,
    pub(crate) arrived: PageBits,
    /// The pages the page server reported placed (`PageSource::placed`).
    pub(crate) placed: PageBits,
    /// Per chunk: how many of its pages are marked in `placed`.
    pub(crate) placed_count: Box<[AtomicU32]>,
    pub(crate) state: Box<[AtomicU8]>,
    /// Parts of a running chunk still being fetched (1 or 2).
    pub(crate) parts_left: Box<[AtomicU8]>,
    /// The error of each chunk that failed for good (few: a map, not an array the object's
    /// length sizes).
    pub(crate) errors: Mutex<HashMap<usize, FetchError>>,
    pub(crate) queue: WorkQueue,
    /// Waiters for arrived pages.
    pub(crate) ready_lock: Mutex<()>,
    pub(crate) ready: Condvar,
    /// Threads in `wait_for`: with none, `notify` costs two loads (a stream marks pages
    /// after every read of its body, a few KiB at a time).
    pub(crate) waiters: AtomicUsize,
    pub(crate) closed: AtomicBool,
    /// The chunk of the latest fault (read-ahead follows its sequence).
    pub(crate) last_fault_chunk: AtomicUsize,
    /// The next chunk the background fill looks at.
    pub(crate) next_background: AtomicUsize,
    /// Per chunk: a fault waits for it while it runs; a background thread fetching it hands
    /// the rest to the fetch threads ([`crate::background`]).
    pub(crate) urgent: Box<[AtomicBool]>,
    /// Chunks whose every page has arrived.
    pub(crate) done: AtomicUsize,
    /// Tasks being run (fetching, or writing their chunk to the disk cache).
    pub(crate) busy: AtomicUsize,
    pub(crate) cache: Option<DiskCache>,
    pub(crate) counters: Counters,
    /// Where whole chunks are reported as they arrive, when the page server places arrived
    /// bytes (`PageSource::arrivals`; the latest server's handle).
    pub(crate) arrivals: Mutex<Option<Arrivals>>,
}

impl Shared {
    /// The state of an object of `remote.len` bytes (the disk cache is set afterwards).
    /// Every allocation the length sizes can fail, with an error saying which (the caller
    /// names the object and its length); nothing is written to them here.
    pub(crate) fn new(remote: Remote, opts: Options) -> io::Result<Shared> {
        let page = opts.page_size;
        let pages_per_chunk = opts.chunk_size / page;
        let pages = remote.len.div_ceil(page as u64) as usize;
        let remote_len = remote.len;
        let chunks = pages.div_ceil(pages_per_chunk);
        let arrived = PageBits::new(pages)?;
        let placed = PageBits::new(pages)?;
        let placed_count = zeroed(chunks, "the chunks' placed counts")?;
        // IDLE is 0: zeroed states are idle chunks.
        let state = zeroed(chunks, "the chunk states")?;
        let parts_left = zeroed(chunks, "the chunk parts")?;
        let urgent = zeroed(chunks, "the chunk flags")?;
        let buffer = Buffer::new(pages * page).map_err(|e| {
            io::Error::new(e.kind(), format!("mapping {} bytes: {e}", pages * page))
        })?;
        Ok(Shared {
            buffer,
            arrived,
            placed,
            placed_count,
            state,
            parts_left,
            errors: Mutex::new(HashMap::new()),
            queue: WorkQueue::new(),
            ready_lock: Mutex::new(()),
            ready: Condvar::new(),
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            // "The chunk before chunk 0": a first fault in chunk 0 reads ahead at once, as a
            // restore that starts at the beginning goes on in order.
            last_fault_chunk: AtomicUsize::new(usize::MAX),
            next_background: AtomicUsize::new(0),
            urgent,
            done: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            cache: None,
            counters: Counters::default(),
            arrivals: Mutex::new(None),
            remote,
            page,
            pages_per_chunk,
            chunks,
            pages,
            whole_pages: (remote_len / page as u64) as usize,
            opts,
        })
    }

    pub(crate) fn chunk_pages(&self, chunk: usize) -> (usize, usize) {
        let from = chunk * self.pages_per_chunk;
        (from, (from + self.pages_per_chunk).min(self.pages))
    }

    /// The object's bytes in `chunk` (the last chunk may end inside a page).
    pub(crate) fn chunk_span(&self, chunk: usize) -> std::ops::Range<u64> {
        let (a, b) = self.chunk_pages(chunk);
        (a * self.page) as u64..((b * self.page) as u64).min(self.remote.len)
    }

    /// Whether chunk `k` is in the disk cache (and the cache works).
    pub(crate) fn cached(&self, k: usize) -> bool {
        self.cache.as_ref().is_some_and(|c| c.has(k))
    }

    /// Whether `page` can be served now: arrived, or in the disk cache.
    pub(crate) fn local(&self, page: usize) -> bool {
        self.arrived.is_set(page) || self.cached(page / self.pages_per_chunk)
    }

    /// Answers a fault on `page` from the disk cache, into `scratch`: `None` when its chunk
    /// is not there or the read failed (the cache is then off).
    pub(crate) fn read_cached<'a>(
        &'a self,
        page: usize,
        len: usize,
        scratch: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        let k = page / self.pages_per_chunk;
        if !self.cached(k) {
            return None;
        }
        let (_, end) = self.chunk_pages(k);
        let n = len.min((end - page) * self.page);
        let offset = (page * self.page) as u64;
        // The last page of the object may be partial: its tail is zeros.
        let data = n.min((self.remote.len - offset) as usize);
        let buf = &mut scratch[..n];
        let cache = self.cache.as_ref()?;
        if cache.verified(k) {
            // The warm path: the kernel copies straight from the cache file's mapping (a
            // read it cannot complete comes back through `PageSource::unreadable`) ...
            if let Some(bytes) = cache.mapped(offset, n) {
                self.counters.cache_hit(n as u64);
                return Some(bytes);
            }
            // ... or, unmapped, one pread of the pages asked for.
            cache.read(offset, &mut buf[..data]).ok()?;
        } else {
            // The chunk's first read: whole, checked against its checksum.
            let span = self.chunk_span(k);
            match cache.verify(k, span, offset, &mut buf[..data]).ok()? {
                Verified::Intact(first) => {
                    if first {
                        self.counters.cache_verified();
                        self.report_arrived(k);
                    }
                }
                Verified::Corrupt(dropped) => {
                    if dropped {
                        self.counters.cache_discarded();
                    }
                    return None; // fetched from the store instead
                }
            }
        }
        buf[data..].fill(0);
        self.counters.cache_hit(n as u64);
        Some(buf)
    }

    /// Checks the disk cache's chunks against their checksums ahead of the faults, so that a
    /// fault on a cached chunk is one `pread` of its pages (a chunk not yet checked is
    /// checked by its first fault, on the fault's time): the working set's chunks first, in
    /// its order, then every chunk in order. Runs on a thread of its own from `open` until
    /// done or the source is closed; a chunk that fails its check is dropped from the cache
    /// (a fault then fetches it from the store); a read error turns the cache off and ends
    /// the thread. Reading a chunk back costs about what the page server's copy of it does,
    /// on a CPU the faults do not use: a warm restore then costs its copies, not its checks.
    pub(crate) fn verify_loop(&self) {
        let Some(cache) = &self.cache else { return };
        let ws = self
            .opts
            .working_set
            .iter()
            .filter(|&&offset| offset < self.remote.len)
            .map(|&offset| (offset / self.page as u64) as usize / self.pages_per_chunk);
        for k in ws.chain(0..self.chunks) {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            if !cache.has(k) || cache.verified(k) {
                continue;
            }
            let span = self.chunk_span(k);
            match cache.verify(k, span.clone(), span.start, &mut []) {
                Ok(Verified::Intact(first)) => {
                    if first {
                        self.counters.cache_verified();
                        self.report_arrived(k);
                    }
                }
                Ok(Verified::Corrupt(dropped)) => {
                    if dropped {
                        self.counters.cache_discarded();
                    }
                }
                Err(_) => return, // the cache is off
            }
        }
    }

    /// Queues `chunk` (from `page`) with `priority` unless it is already running or done.
    pub(crate) fn want(&self, chunk: usize, page: usize, priority: Priority) {
        if self.cached(chunk) {
            return; // read straight from the disk when asked
        }
        let state = &self.state[chunk];
        let s = state.load(Ordering::Acquire);
        if s != IDLE && s != QUEUED {
            return;
        }
        if s == QUEUED && priority != Priority::Demand {
            return; // already queued at this priority or above, or lower: a fault bumps it
        }
        debug_assert!(priority != Priority::Background, "the fill is not queued");
        let _ = state.compare_exchange(IDLE, QUEUED, Ordering::AcqRel, Ordering::Acquire);
        self.queue.push(Task {
            chunk,
            from: page,
            to: 0,
            claimed: false,
            priority,
        });
    }

    /// A fault wants `page`, which has not arrived: queue its chunk.
    pub(crate) fn demand(&self, page: usize) {
        let chunk = page / self.pages_per_chunk;
        self.want(chunk, page, Priority::Demand);
        // Running already, maybe on a background thread (at nice 19): that one hands the
        // rest over. (Loaded after `want`: a background thread that claimed the chunk
        // meanwhile is seen.)
        if self.state[chunk].load(Ordering::Acquire) == RUNNING
            && !self.urgent[chunk].load(Ordering::Relaxed)
        {
            self.urgent[chunk].store(true, Ordering::Release);
        }
    }

    /// Read-ahead on sequential access: a fault in the chunk after the previous fault's
    /// queues the `parallelism` chunks after its own. Called on every fault, arrived page or
    /// not, on the first fault in each chunk: a sequential restore that runs on read-ahead
    /// chunks keeps the window ahead of it. (Looked at on misses only, the window ran dry:
    /// the first fault past it missed without reading ahead, the next read ahead, so two
    /// chunks in six were fetched while a fault waited; a cold sequential restore took 4x
    /// the local one.) Chunks already arrived, running or queued cost one load each.
    pub(crate) fn read_ahead(&self, chunk: usize) {
        let prev = self.last_fault_chunk.load(Ordering::Relaxed);
        if prev == chunk {
            return;
        }
        self.last_fault_chunk.store(chunk, Ordering::Relaxed);
        if prev.wrapping_add(1) == chunk {
            let ahead = self.opts.parallelism;
            for next in chunk + 1..(chunk + 1 + ahead).min(self.chunks) {
                self.want(next, next * self.pages_per_chunk, Priority::Prefetch);
            }
        }
    }

    /// Queues the chunks of a working set in order (the background fill, if any, starts
    /// once they have all been taken).
    pub(crate) fn plan(&self) {
        for &offset in &self.opts.working_set {
            if offset < self.remote.len {
                let page = (offset / self.page as u64) as usize;
                self.want(page / self.pages_per_chunk, page, Priority::Prefetch);
            }
        }
    }

    /// The page server placed pages `[from, to)`: a chunk whose every page is placed has its
    /// bytes dropped (see [`release`](Self::release)).
    pub(crate) fn placed(&self, from: usize, to: usize) {
        // A report of the cut last page (no page server makes one) changes nothing.
        let to = to.min(self.whole_pages);
        let mut page = from;
        while page < to {
            let k = page / self.pages_per_chunk;
            let (_, b) = self.chunk_pages(k);
            let end = to.min(b);
            let new = self.placed.set(page, end) as u32;
            // SeqCst, with `chunk_done`'s store of DONE and load of the count: one of the
            // two sees the other's change, so a chunk placed whole before its fetch ended
            // is released when it ends.
            if new > 0
                && self.placed_count[k].fetch_add(new, Ordering::SeqCst) + new
                    == self.placeable(k) as u32
            {
                self.release(k);
                if let Some(cache) = &self.cache {
                    // Served from the cache's mapping: its pages leave this process.
                    let span = self.chunk_span(k);
                    cache.forget(span.start, (span.end - span.start) as usize);
                }
            }
            page = end;
        }
    }

    /// Tells the page server, if it places arrived bytes, that chunk `k` is whole in memory
    /// or checked in the disk cache: `fetch` answers it without waiting.
    pub(crate) fn report_arrived(&self, k: usize) {
        let arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(arrivals) = &*arrivals {
            let span = self.chunk_span(k);
            arrivals.arrived(span.start, span.end - span.start);
        }
    }

    /// Whether every page of chunk `k` that the page server can place has been reported
    /// placed.
    pub(crate) fn all_placed(&self, k: usize) -> bool {
        self.placed_count[k].load(Ordering::SeqCst) as usize == self.placeable(k)
    }

    /// How many pages of chunk `k` the page server can place: all but the cut last page.
    fn placeable(&self, k: usize) -> usize {
        let (a, b) = self.chunk_pages(k);
        b.min(self.whole_pages).saturating_sub(a)
    }

    /// Drops the bytes of chunk `k`, every page of which the page server placed, unless they
    /// are not (all) in the buffer (fetching, failed, or answered from the disk cache).
    ///
    /// Final: the page server asks for a page it placed only in the cases
    /// `PageSource::placed` lists, and the source then answers zeros (`ObjectSource::fetch`)
    /// instead of fetching the chunk again: a duplicate fault (the zero page finds the page
    /// present: nothing written, the thread woken) or a page the process discarded without
    /// the server being told (zeros are what a discarded page reads). A fetch that read a
    /// page's arrived bit before it was cleared here and copies after the `MADV_DONTNEED`
    /// copies zeros, into the same two kinds of page. Serving the same bytes into two
    /// regions is the case where zeros would be wrong: `Options::release_placed` off.
    pub(crate) fn release(&self, k: usize) {
        if self.state[k]
            .compare_exchange(DONE, RELEASED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let (a, b) = self.chunk_pages(k);
        // Unmarked first: a fault from now on is answered with zeros instead of reading the
        // buffer.
        self.arrived.clear(a, b);
        // SAFETY: the chunk's pages lie in the buffer, none is marked arrived, and no fetch
        // writes them (RELEASED is final: the chunk is never fetched again).
        unsafe { self.buffer.discard(a * self.page, (b - a) * self.page) };
        self.counters.released(((b - a) * self.page) as u64);
    }

    /// Whether chunk `k`'s bytes were dropped after the page server placed them all.
    pub(crate) fn released(&self, k: usize) -> bool {
        self.state[k].load(Ordering::Acquire) == RELEASED
    }

    /// Wakes the threads in `wait_for`, after a change they wait on (pages marked arrived,
    /// a chunk failed, the source closed).
    pub(crate) fn notify(&self) {
        // With `wait_for`'s fence: either this load sees the waiter, or the waiter's next
        // look at the bitmap and states sees the change made before this call.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _guard = self
            .ready_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.ready.notify_all();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.queue.close();
        self.notify();
    }

    /// Waits until `page` has arrived, or its chunk failed, or was dropped after the page
    /// server placed it whole.
    pub(crate) fn wait_for(&self, page: usize) -> io::Result<()> {
        let chunk = page / self.pages_per_chunk;
        let mut guard = self
            .ready_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Counted under the lock, so that a `notify` that sees the count finds this thread
        // waiting or about to look again (it cannot take the lock in between).
        self.waiters.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let _counted = Counted(&self.waiters);
        loop {
            // Dropped: every page of the chunk was placed (the caller answers zeros).
            if self.arrived.is_set(page) || self.released(chunk) {
                return Ok(());
            }
            if self.state[chunk].load(Ordering::Acquire) == FAILED {
                let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(e) = errors.get(&chunk) {
                    return Err(e.clone().into());
                }
            }
            if self.closed.load(Ordering::Acquire) {
                let (a, b) = self.chunk_pages(chunk);
                let range = (a * self.page) as u64..(b * self.page) as u64;
                return Err(self.remote.error(range, Cause::Closed, 0).into());
            }
            // The timeout only guards against a missed wake-up; fetches notify.
            guard = self
                .ready
                .wait_timeout(guard, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Takes a waiter off the count when `wait_for` returns.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
