//! [`ObjectSource`]: the page server's [`PageSource`] over a chunk cache in front of a store.
//!
//! A fault asks for a page; if its bytes have not arrived, the page's chunk is queued for the
//! fetch threads (once, however many workers fault into it) starting at that page, and the
//! worker waits only until that page's bytes are in — the rest of the chunk streams in
//! behind it and later faults find it. A chunk that fails for good fails every fault that
//! waits on it, with the error naming the object, the range and the cause.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use userfaultfd::serve::{Chunk, PageSource};

use crate::cache::DiskCache;
use crate::error::{Cause, FetchError};
use crate::memory::{Arrived, Buffer};
use crate::queue::{Priority, Task, WorkQueue};
use crate::remote::{Backoff, Body, Failure, Remote};
use crate::stats::{Counters, Stats};
use crate::Options;

const IDLE: u8 = 0;
const QUEUED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 3;
const FAILED: u8 = 4;

/// Bytes asked of the body per `read`: pages are marked arrived after each.
const READ_STEP: usize = 256 << 10;

/// Everything the fetch threads and the page server's workers share.
pub(crate) struct Shared {
    pub remote: Remote,
    pub opts: Options,
    pub page: usize,
    pub pages_per_chunk: usize,
    pub chunks: usize,
    pub pages: usize,
    buffer: Buffer,
    arrived: Arrived,
    state: Box<[AtomicU8]>,
    /// Parts of a running chunk still being fetched (1 or 2).
    parts_left: Box<[AtomicU8]>,
    errors: Mutex<Vec<Option<FetchError>>>,
    queue: WorkQueue,
    /// Waiters for arrived pages.
    ready_lock: Mutex<()>,
    ready: Condvar,
    closed: AtomicBool,
    last_demand: AtomicUsize,
    /// Chunks whose every page has arrived.
    done: AtomicUsize,
    pub cache: Option<DiskCache>,
    pub counters: Counters,
}

impl Shared {
    pub(crate) fn new(
        remote: Remote,
        opts: Options,
        cache: Option<DiskCache>,
    ) -> io::Result<Shared> {
        let page = opts.page_size;
        let pages_per_chunk = opts.chunk_size / page;
        let pages = remote.len.div_ceil(page as u64) as usize;
        let chunks = pages.div_ceil(pages_per_chunk);
        Ok(Shared {
            buffer: Buffer::new(pages * page)?,
            arrived: Arrived::new(pages),
            state: (0..chunks).map(|_| AtomicU8::new(IDLE)).collect(),
            parts_left: (0..chunks).map(|_| AtomicU8::new(0)).collect(),
            errors: Mutex::new(vec![None; chunks]),
            queue: WorkQueue::new(opts.parallelism),
            ready_lock: Mutex::new(()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            // No chunk before the first: read-ahead starts at the second consecutive chunk.
            last_demand: AtomicUsize::new(usize::MAX - 1),
            done: AtomicUsize::new(0),
            cache,
            counters: Counters::default(),
            remote,
            page,
            pages_per_chunk,
            chunks,
            pages,
            opts,
        })
    }

    fn chunk_pages(&self, chunk: usize) -> (usize, usize) {
        let from = chunk * self.pages_per_chunk;
        (from, (from + self.pages_per_chunk).min(self.pages))
    }

    /// Whether chunk `k` is in the disk cache (and the cache works).
    fn cached(&self, k: usize) -> bool {
        self.cache.as_ref().is_some_and(|c| c.has(k))
    }

    /// Whether `page` can be served now: arrived, or in the disk cache.
    fn local(&self, page: usize) -> bool {
        self.arrived.is_set(page) || self.cached(page / self.pages_per_chunk)
    }

    /// Answers a fault on `page` from the disk cache, into `scratch`: `None` when its chunk
    /// is not there or the read failed (the cache is then off).
    fn read_cached<'a>(&self, page: usize, len: usize, scratch: &'a mut [u8]) -> Option<&'a [u8]> {
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
        self.cache.as_ref()?.read(offset, &mut buf[..data]).ok()?;
        buf[data..].fill(0);
        self.counters.cache_hit(n as u64);
        Some(buf)
    }

    /// Queues `chunk` (from `page`) with `priority` unless it is already running or done.
    fn want(&self, chunk: usize, page: usize, priority: Priority) {
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
        let _ = state.compare_exchange(IDLE, QUEUED, Ordering::AcqRel, Ordering::Acquire);
        self.queue.push(Task {
            chunk,
            from: page,
            to: 0,
            claimed: false,
            priority,
        });
    }

    /// A fault wants `page`: queue its chunk, and read ahead on sequential access.
    fn demand(&self, page: usize) {
        let chunk = page / self.pages_per_chunk;
        self.want(chunk, page, Priority::Demand);
        let prev = self.last_demand.swap(chunk, Ordering::Relaxed);
        if prev.wrapping_add(1) == chunk {
            let ahead = self.opts.parallelism;
            for next in chunk + 1..(chunk + 1 + ahead).min(self.chunks) {
                self.want(next, next * self.pages_per_chunk, Priority::Prefetch);
            }
        }
    }

    /// Queues the chunks of a working set in order, then (with `background`) the rest.
    pub(crate) fn plan(&self) {
        for &offset in &self.opts.working_set {
            if offset < self.remote.len {
                let page = (offset / self.page as u64) as usize;
                self.want(page / self.pages_per_chunk, page, Priority::Prefetch);
            }
        }
        if self.opts.background {
            for chunk in 0..self.chunks {
                self.want(chunk, chunk * self.pages_per_chunk, Priority::Background);
            }
        }
    }

    fn notify(&self) {
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

    /// Waits until `page` has arrived, or its chunk failed.
    fn wait_for(&self, page: usize) -> io::Result<()> {
        let chunk = page / self.pages_per_chunk;
        let mut guard = self
            .ready_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.arrived.is_set(page) {
                return Ok(());
            }
            if self.state[chunk].load(Ordering::Acquire) == FAILED {
                let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(e) = &errors[chunk] {
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

    /// A fetch thread: takes tasks until the source closes.
    pub(crate) fn fetch_loop(self: Arc<Shared>) {
        while let Some(task) = self.queue.pop() {
            self.run(task);
            if task.priority == Priority::Background && !task.claimed {
                self.queue.background_done();
            }
        }
    }

    fn run(&self, task: Task) {
        let k = task.chunk;
        let (first, end) = self.chunk_pages(k);
        let part = if task.claimed {
            task.from..task.to
        } else {
            let claimed = [IDLE, QUEUED].iter().any(|&from| {
                self.state[k]
                    .compare_exchange(from, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
            if !claimed {
                return;
            }
            let start = task.from.clamp(first, end - 1);
            if start > first {
                self.parts_left[k].store(2, Ordering::Release);
                // The part before the faulting page: next in line, on any free thread.
                self.queue.push(Task {
                    chunk: k,
                    from: first,
                    to: start,
                    claimed: true,
                    priority: Priority::Demand,
                });
            } else {
                self.parts_left[k].store(1, Ordering::Release);
            }
            start..end
        };
        match self.fetch_part(part.start, part.end) {
            Ok(()) => {
                if self.parts_left[k].fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.chunk_done(k);
                }
            }
            Err(e) => {
                self.errors.lock().unwrap_or_else(PoisonError::into_inner)[k] = Some(e);
                self.state[k].store(FAILED, Ordering::Release);
                self.notify();
            }
        }
    }

    /// Chunk `k` has arrived whole from the store: it is written to the disk cache.
    fn chunk_done(&self, k: usize) {
        self.state[k].store(DONE, Ordering::Release);
        self.counters.chunk_done();
        if let Some(cache) = &self.cache {
            let (a, b) = self.chunk_pages(k);
            let bytes = (b * self.page).min(self.remote.len as usize) - a * self.page;
            // SAFETY: every page of the chunk has arrived: its bytes are final.
            cache.store(k, unsafe { self.buffer.read_slice(a * self.page, bytes) });
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.chunks {
            if let Some(cache) = &self.cache {
                cache.persist();
            }
        }
    }

    /// Fetches pages `[from, to)` into the buffer, marking them as their bytes arrive;
    /// retries transient failures from the last byte received until the deadline.
    fn fetch_part(&self, from: usize, to: usize) -> Result<(), FetchError> {
        let start = (from * self.page) as u64;
        let end = ((to * self.page) as u64).min(self.remote.len);
        let deadline = Instant::now() + self.opts.deadline;
        let mut backoff = self.backoff(deadline);
        let mut pos = start;
        let mut attempts = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(self.remote.error(start..end, Cause::Closed, attempts));
            }
            attempts += 1;
            let before = pos;
            let last = match self.remote.open_range(&(pos..end), &self.counters) {
                Ok(body) => match self.stream(body, start, &mut pos, end) {
                    Ok(()) => return Ok(()),
                    Err(why) => why,
                },
                Err(Failure::Fatal(cause)) => {
                    return Err(self.remote.error(start..end, cause, attempts))
                }
                Err(Failure::Transient(why)) => why,
            };
            self.counters.retry();
            if pos > before {
                // Progress: the store is up; start the backoff over.
                backoff = self.backoff(deadline);
            }
            if !backoff.wait() {
                return Err(self
                    .remote
                    .error(start..end, Cause::Deadline(last), attempts));
            }
        }
    }

    fn backoff(&self, deadline: Instant) -> Backoff {
        Backoff::new(self.opts.backoff_initial, self.opts.backoff_max, deadline)
    }

    /// Reads `body` (the bytes from `*pos` to `end`) into the buffer, marking each page
    /// whose bytes have all arrived (a part starts at `start`, page-aligned).
    fn stream(&self, mut body: Body, start: u64, pos: &mut u64, end: u64) -> Result<(), String> {
        let page = self.page as u64;
        let mut marked = (*pos / page).max(start / page) as usize;
        while *pos < end {
            let n = ((end - *pos) as usize).min(READ_STEP);
            // SAFETY: `[pos, pos + n)` lies in the buffer (end <= len <= buffer length); its
            // pages are not marked (they are marked below, once complete) and this thread
            // owns this part of the chunk (single flight).
            let dst = unsafe { self.buffer.write_slice(*pos as usize, n) };
            match body.read(dst) {
                Ok(0) => return Err(format!("body ended {} bytes short", end - *pos)),
                Ok(got) => {
                    *pos += got as u64;
                    self.counters.fetched(got as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the body: {e}")),
            }
            let done = if *pos == end {
                end.div_ceil(page) as usize
            } else {
                (*pos / page) as usize
            };
            if done > marked {
                self.arrived.set(marked, done);
                marked = done;
                self.notify();
            }
            if self.closed.load(Ordering::Acquire) {
                return Err("the source was closed".into());
            }
        }
        // Read to the end, so that the connection goes back to the pool.
        let mut rest = [0u8; 1];
        let _ = body.read(&mut rest);
        Ok(())
    }
}

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

    /// The progress line for now (what [`Options::progress`] prints).
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

    /// Whether the page holding byte `offset` of the object has arrived.
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

    /// Whether every page of the object has arrived.
    pub fn complete(&self) -> bool {
        let s = &*self.shared;
        (0..s.chunks).all(|k| {
            let (a, b) = s.chunk_pages(k);
            s.cached(k) || s.arrived.all(a, b)
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

impl Drop for ObjectSource {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(cache) = &self.shared.cache {
            cache.persist();
        }
    }
}

fn progress_loop(shared: std::sync::Weak<Shared>, every: Duration, opened: Instant) {
    let step = Duration::from_millis(100).min(every);
    let mut next = Instant::now() + every;
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

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Chunk<'a>> {
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
        let page = page as usize;
        if !s.arrived.is_set(page) {
            if let Some(bytes) = s.read_cached(page, len, scratch) {
                return Ok(Chunk::Data(bytes));
            }
            s.counters.wait();
            s.demand(page);
            s.wait_for(page)?;
        }
        let want = len.div_ceil(s.page);
        let run = s.arrived.run_end(page, page + want) - page;
        let bytes = (run * s.page).min(len);
        // SAFETY: pages `[page, page + run)` have arrived (bitmap, Acquire), so their bytes
        // are written and never written again; the buffer is `pages * page` bytes long.
        Ok(Chunk::Data(unsafe {
            s.buffer.read_slice(page * s.page, bytes)
        }))
    }
}
