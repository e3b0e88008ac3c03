//! [`ObjectSource`]: the page server's [`PageSource`] over a chunk cache in front of a store.
//!
//! A fault asks for a page; if its bytes have not arrived, the page's chunk is queued for the
//! fetch threads (once, however many workers fault into it) starting at that page, and the
//! worker waits only until that page's bytes are in — the rest of the chunk streams in
//! behind it and later faults find it. A chunk that fails for good fails every fault that
//! waits on it, with the error naming the object, the range and the cause.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use userfaultfd::serve::{Arrivals, Chunk, PageSource};

use crate::cache::DiskCache;
use crate::shared::{Shared, DONE};
use crate::stats::Stats;

/// A snapshot in object storage, served to the page server: see the [crate docs](crate).
pub struct ObjectSource {
    shared: Arc<Shared>,
    opened: Instant,
}

impl ObjectSource {
    pub(crate) fn start(shared: Shared) -> io::Result<ObjectSource> {
        let shared = Arc::new(shared);
        for i in 0..shared.opts.parallelism {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("objstore-fetch-{i}"))
                .spawn(move || s.fetch_loop());
            if let Err(e) = spawned {
                shared.close();
                return Err(e);
            }
        }
        if shared.cache.is_some() {
            // Checks the cached chunks ahead of the faults (see `Shared::verify_loop`); if
            // it cannot start, each chunk is checked by its first fault instead.
            let s = shared.clone();
            let _ = std::thread::Builder::new()
                .name("objstore-verify".into())
                .spawn(move || s.verify_loop());
        }
        if shared.opts.background {
            for i in 0..crate::background::threads(shared.opts.parallelism) {
                let s = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("objstore-bg-{i}"))
                    .spawn(move || s.background_loop());
                if let Err(e) = spawned {
                    shared.close();
                    return Err(e);
                }
            }
        }
        shared.plan();
        if let Some(every) = shared.opts.progress {
            let weak = Arc::downgrade(&shared);
            let opened = Instant::now();
            let _ = std::thread::Builder::new()
                .name("objstore-progress".into())
                .spawn(move || progress_loop(weak, every, opened));
        }
        Ok(ObjectSource {
            shared,
            opened: Instant::now(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The progress line for now (what [`Options::progress`](crate::Options::progress) prints).
    pub fn progress_line(&self) -> String {
        self.stats().line(self.opened.elapsed())
    }

    /// The object's ETag when it was opened, if the store sent one.
    pub fn etag(&self) -> Option<&str> {
        self.shared.remote.etag.as_deref()
    }

    /// The object's name (URL, or `s3://bucket/key`).
    pub fn name(&self) -> &str {
        self.shared.remote.store.name()
    }

    /// The disk cache's first I/O error, after which it is no longer used (chunks then come
    /// from the store; a restore never fails because of the cache).
    pub fn cache_error(&self) -> Option<String> {
        self.shared.cache.as_ref().and_then(DiskCache::error)
    }

    /// Whether the page holding byte `offset` of the object is in the source's memory: it
    /// has arrived and has not been dropped since (after the page server placed its whole
    /// chunk).
    pub fn arrived(&self, offset: u64) -> bool {
        let page = (offset / self.shared.page as u64) as usize;
        page < self.shared.pages && self.shared.local(page)
    }

    /// An identity for working-set records ([`userfaultfd::serve::SnapshotId`]) from the
    /// object's length and ETag, read without fetching anything (`SnapshotId::sample` would
    /// fetch 66 chunks); `None` when the store sent no ETag.
    pub fn snapshot_id(&self) -> Option<userfaultfd::serve::SnapshotId> {
        let etag = self.etag()?;
        // FNV-1a of the ETag.
        let tag = etag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Some(userfaultfd::serve::SnapshotId::new(self.len(), tag))
    }

    /// Whether every page of the object has arrived (each chunk in memory, in the disk cache,
    /// or placed whole by the page server and dropped).
    pub fn complete(&self) -> bool {
        let s = &*self.shared;
        (0..s.chunks).all(|k| {
            let (a, b) = s.chunk_pages(k);
            s.cached(k) || s.arrived.all(a, b) || s.released(k)
        })
    }
}

impl std::fmt::Debug for ObjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSource")
            .field("object", &self.name())
            .field("len", &self.shared.remote.len)
            .field("etag", &self.etag())
            .finish_non_exhaustive()
    }
}

/// How long dropping a source waits for fetches to stop before it writes the cache map.
const DROP_WAIT: Duration = Duration::from_secs(2);

impl Drop for ObjectSource {
    /// Closes the source, and with a disk cache writes its map. A fetch whose last page has
    /// arrived may still be writing its chunk to the cache (the fault was answered first):
    /// the map is written once the running fetches have stopped (they stop at their next
    /// read of the body), so that such a chunk is in it; a fetch blocked on the network is
    /// waited for at most 2 seconds.
    fn drop(&mut self) {
        self.shared.close();
        if let Some(cache) = &self.shared.cache {
            let until = Instant::now() + DROP_WAIT;
            while self.shared.busy.load(Ordering::Acquire) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            cache.persist();
        }
    }
}

fn progress_loop(shared: std::sync::Weak<Shared>, every: Duration, opened: Instant) {
    let step = Duration::from_millis(100).min(every);
    let mut next = crate::remote::after(every);
    loop {
        std::thread::sleep(step);
        let Some(s) = shared.upgrade() else { return };
        if s.closed.load(Ordering::Acquire) {
            return;
        }
        if Instant::now() >= next {
            eprintln!("{}", s.counters.snapshot().line(opened.elapsed()));
            next += every;
        }
    }
}

impl PageSource for ObjectSource {
    fn len(&self) -> u64 {
        self.shared.remote.len
    }

    /// Reports each chunk as it arrives whole from the store or is found intact in the disk
    /// cache (and, at once, those already held), so that a page server with
    /// [`place_arrived`](userfaultfd::serve::ServerBuilder::place_arrived) places them ahead
    /// of the faults.
    fn arrivals(&self, arrivals: Arrivals) {
        let s = &*self.shared;
        // A later server over the same source takes the reports from now on.
        *s.arrivals.lock().unwrap_or_else(PoisonError::into_inner) = Some(arrivals);
        for k in 0..s.chunks {
            let verified = s.cache.as_ref().is_some_and(|c| c.has(k) && c.verified(k));
            if verified || s.state[k].load(Ordering::Acquire) == DONE {
                s.report_arrived(k);
            }
        }
    }

    /// Drops the bytes of every chunk whose pages have all been placed: the source's memory
    /// then holds only what is fetched and not yet placed (see the crate docs, "Memory").
    fn placed(&self, offset: u64, len: usize) {
        let s = &*self.shared;
        if !s.opts.release_placed {
            return;
        }
        let page = s.page as u64;
        // Whole pages inside the object only (the page server reports what it placed from
        // this source, so anything else is ignored rather than trusted).
        let first = offset.div_ceil(page);
        let end = offset.saturating_add(len as u64) / page;
        if first < end && first < s.pages as u64 {
            s.placed(first as usize, end.min(s.pages as u64) as usize);
        }
    }

    /// The kernel could not read the disk cache's mapping (a failing disk, the cache file cut
    /// short): the cache is turned off ([`ObjectSource::cache_error`]) and the page server
    /// asks again; the chunks then come from the network.
    fn unreadable(&self, offset: u64, _len: usize) -> bool {
        self.shared
            .cache
            .as_ref()
            .is_some_and(|cache| cache.unreadable(offset))
    }

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Chunk<'a>> {
        let s = &*self.shared;
        let page = self.check(offset, len)?;
        let chunk = page / s.pages_per_chunk;
        s.read_ahead(chunk);
        if !s.arrived.is_set(page) && !s.released(chunk) {
            if let Some(bytes) = s.read_cached(page, len, scratch) {
                return Ok(Chunk::Data(bytes));
            }
            s.counters.wait();
            s.demand(page);
            s.wait_for(page)?;
        }
        Ok(self.in_memory(page, len))
    }

    /// What the source holds, for the page server's place-arrived fill: the pages in memory
    /// or in the checked disk cache, without a request, a wait or a read-ahead (these are
    /// not the guest's accesses); `None` for anything else.
    fn fetch_held<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Option<Chunk<'a>>> {
        let s = &*self.shared;
        let page = self.check(offset, len)?;
        let chunk = page / s.pages_per_chunk;
        if s.arrived.is_set(page) {
            return Ok(Some(self.in_memory(page, len)));
        }
        let checked = s
            .cache
            .as_ref()
            .is_some_and(|c| c.has(chunk) && c.verified(chunk));
        if checked && !s.released(chunk) {
            return Ok(s.read_cached(page, len, scratch).map(Chunk::Data));
        }
        Ok(None)
    }
}

impl ObjectSource {
    /// `offset` and `len` as whole pages inside the object: the first page's index.
    fn check(&self, offset: u64, len: usize) -> io::Result<usize> {
        let s = &*self.shared;
        let page = offset / s.page as u64;
        if !offset.is_multiple_of(s.page as u64) || len == 0 || page >= s.pages as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: fetch of {len} bytes at {offset}: not whole pages of {} bytes inside \
                     the object's {} bytes",
                    s.remote.store.name(),
                    s.page,
                    s.remote.len
                ),
            ));
        }
        Ok(page as usize)
    }

    /// The answer for `page` once it has arrived (or its chunk was dropped after placement).
    fn in_memory(&self, page: usize, len: usize) -> Chunk<'_> {
        let s = &*self.shared;
        let chunk = page / s.pages_per_chunk;
        let want = len.div_ceil(s.page);
        let run = s.arrived.run_end(page, page + want) - page;
        if run == 0 {
            // The chunk was placed whole by the page server and dropped (before this call,
            // or while it waited): this is a duplicate fault (the page is present) or a page
            // discarded without the server being told. Zeros are right for both
            // (`Shared::release`), and cost no fetch.
            debug_assert!(s.released(chunk));
            s.counters.asked_after_release();
            let (_, end) = s.chunk_pages(chunk);
            return Chunk::Zeros(len.min((end - page) * s.page));
        }
        let bytes = (run * s.page).min(len);
        // SAFETY: pages `[page, page + run)` have arrived (bitmap, Acquire), so their bytes
        // are written and not written again; the buffer is `pages * page` bytes long. (If
        // the chunk is dropped meanwhile, the bytes read as zeros: see `Shared::release` for
        // why a copy of them is then harmless.)
        Chunk::Data(unsafe { s.buffer.read_slice(page * s.page, bytes) })
    }
}
