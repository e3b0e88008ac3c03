//! The worker: waits for messages, reads them under the exclusive lock (applying the
//! non-cooperative events), and places pages under the shared lock.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use libc::c_void;

use super::pages::PageState;
use super::region::{AddressMap, Backend, Mapping, Region};
use super::server::Exit;
use super::source::{Chunk, PageSource};
use super::stats::{add, Counters};
use super::working_set::Recorder;
use super::{ErrorPolicy, ServeError};
use crate::{Errno, Error, Event, EventBuffer, Uffd};

/// Settings the workers read.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub busy_poll: Duration,
    pub policy: ErrorPolicy,
    pub batch: usize,
}

/// What every worker shares.
pub(crate) struct Shared {
    pub uffd: Uffd,
    pub source: Arc<dyn PageSource>,
    pub regions: Vec<Region>,
    pub pages: Vec<PageState>,
    /// The lock: shared by placements, exclusive for reading messages and applying events.
    pub map: RwLock<AddressMap>,
    /// Counts the changes of the address map (`UNMAP`, `REMAP`; under the exclusive lock): a
    /// placement looked up before a change is not made.
    pub epoch: AtomicU64,
    /// Readable once the server stops (an eventfd that is written and never read).
    pub stop_fd: OwnedFd,
    /// The served process's pidfd, readable once it exits.
    pub peer: Option<OwnedFd>,
    pub stopping: AtomicBool,
    /// One per worker, then one for the background fill.
    pub counters: Box<[Counters]>,
    pub outcome: Mutex<Option<Result<Exit, ServeError>>>,
    pub config: Config,
    /// A read-only anonymous mapping of zeros, at least a fault-around block long: the
    /// source of zero pages on hugetlbfs, which has no `ZEROPAGE`.
    pub zeros: ZeroMap,
    /// Records the demand faults, when asked to.
    pub recorder: Option<Recorder>,
    /// The pages to replay, in order: (region, page of the region).
    pub replay: Vec<(usize, usize)>,
    /// Per region, each page's position in `replay` plus one (0: not in the record); empty
    /// boxes without replay.
    pub replay_rank: Vec<Box<[u32]>>,
    /// When the server started.
    pub started: Instant,
    /// Nanoseconds from the start to the end of the replay (`u64::MAX` until then).
    pub replay_done_ns: AtomicU64,
    /// Why the replay ended early.
    pub replay_error: Mutex<Option<ServeError>>,
}

/// A read-only private anonymous mapping: all zeros, costing no memory.
pub(crate) struct ZeroMap {
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: a read-only mapping that lives as long as the value and is only read (by the
// kernel, as the source of copies).
unsafe impl Send for ZeroMap {}
// SAFETY: as above.
unsafe impl Sync for ZeroMap {}

impl Drop for ZeroMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused once the workers are gone.
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
    }
}

/// Why a worker stops.
pub(crate) enum Stop {
    /// The server was stopped, or the process exited.
    Exit(Exit),
    Failed(ServeError),
}

/// How a placement ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Done,
    /// `EAGAIN` with no progress: read the pending messages, then start over.
    ReadEvents,
    /// An event was applied since the placement looked at the page state: start over.
    Restart,
}

/// Where pages come from in one placement.
#[derive(Clone, Copy)]
enum Fill {
    Copy(*const u8),
    Zero,
    Continue,
}

/// Who asked for a placement (for the statistics).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Fault,
    Background,
    Replay,
}

fn uffd_error(operation: &'static str, source: Error) -> Stop {
    if source.errno() == Some(Errno::ESRCH) || matches!(source, Error::ReadEof) {
        return Stop::Exit(Exit::ProcessExited);
    }
    Stop::Failed(ServeError::Uffd { operation, source })
}

/// After `EAGAIN` with nothing left to read, the event was read but the kernel refuses
/// placements until the thread that caused it resumes (microseconds): retry at once a few
/// times, since under a stream of events only a quick retry lands between two of them; then
/// let that thread have the CPU; then sleep.
fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle < 32 {
        std::hint::spin_loop();
    } else if *idle < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

fn lock_read(map: &RwLock<AddressMap>) -> RwLockReadGuard<'_, AddressMap> {
    map.read().unwrap_or_else(|e| e.into_inner())
}

fn lock_write(map: &RwLock<AddressMap>) -> RwLockWriteGuard<'_, AddressMap> {
    map.write().unwrap_or_else(|e| e.into_inner())
}

/// Places pages: the part of a worker that only needs shared access.
///
/// The page state and the address map are looked at, and the source is read, without the
/// lock; each placement then takes the shared lock and is made only if the address map did
/// not change since `epoch` was read and none of its pages was discarded meanwhile
/// (otherwise [`Flow::Restart`]). So a slow source never delays the reading of events, and a
/// placement never contradicts an event applied before it.
pub(crate) struct Placer<'a> {
    pub shared: &'a Shared,
    /// Where a worker reads pending events when a placement meets one (`None` for the
    /// background fill, which leaves them to the workers).
    pub inbox: Option<&'a RefCell<Inbox>>,
    pub counters: &'a Counters,
    /// `Shared::epoch` when this attempt started.
    pub epoch: u64,
}

impl Placer<'_> {
    /// Places the unplaced pages of the fault-around block holding region page `page` of
    /// `m` (for a fault: `page` itself first, whatever its recorded state, and woken).
    fn block(
        &self,
        m: &Mapping,
        page: usize,
        origin: Origin,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let ps = m.page_size;
        let per_block = self.shared.regions[m.region].pages_per_block();
        let map_end = m.first_page + m.len / ps;
        let aligned = page - page % per_block;
        let start = aligned.max(m.first_page);
        let end = (aligned + per_block).min(map_end);
        let state = &self.shared.pages[m.region];
        for (from, to) in [(page, end), (start, page)] {
            let mut i = from;
            while i < to {
                // The faulting page is placed (or found present and woken) even if recorded
                // as placed: the record could predate a zap the server was not told about.
                let forced = origin == Origin::Fault && i == page;
                if !forced && state.is_placed(i) {
                    i = state.run_end(i, to, true);
                    continue;
                }
                let j = state.run_end(i + 1, to, false);
                let flow = self.run(m, i, j, page, origin, scratch)?;
                if flow != Flow::Done {
                    return Ok(flow);
                }
                i = j;
            }
        }
        Ok(Flow::Done)
    }

    /// Places the unplaced pages of the block holding region page `page` of `m`.
    pub fn background_block(
        &self,
        m: &Mapping,
        page: usize,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        self.block(m, page, Origin::Background, scratch)
    }

    /// A fault on page `page` of `m`, which the replayed record holds at position `rank`:
    /// places it, then (instead of the block around it) the pages the record lists after
    /// it, up to the fault-around budget. The workload has overtaken the replay there, and
    /// the record says what it touches next; the pages around it are mostly not wanted.
    fn along_record(
        &self,
        m: &Mapping,
        page: usize,
        rank: usize,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let flow = self.run(m, page, page + 1, page, Origin::Fault, scratch)?;
        if flow != Flow::Done {
            return Ok(flow);
        }
        let budget = self.shared.regions[m.region].pages_per_block() - 1;
        let map_end = m.first_page + m.len / m.page_size;
        let state = &self.shared.pages[m.region];
        let list = &self.shared.replay;
        // Looks a few budgets far at most: the replay may have placed the pages already.
        let end = list.len().min(rank + 1 + 4 * budget);
        let mut placed = 0;
        for &(region, p) in &list[(rank + 1).min(end)..end] {
            if placed == budget {
                break;
            }
            if region != m.region
                || !(m.first_page..map_end).contains(&p)
                || state.is_placed(p)
                || state.is_discarded(p)
            {
                continue;
            }
            // The faulting page is in place and woken: whatever stops these extra
            // placements (an event to read first) ends them, not the fault.
            if self.run(m, p, p + 1, page, Origin::Fault, scratch)? != Flow::Done {
                break;
            }
            placed += 1;
        }
        Ok(Flow::Done)
    }

    /// Replay: places the pages of `[from, to)` (inside `m`) that are neither placed nor
    /// discarded; a discarded page stays empty (the process's discard wins over the record).
    pub fn replay_run(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let state = &self.shared.pages[m.region];
        let mut i = from;
        while i < to {
            if state.is_placed(i) || state.is_discarded(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < to && !state.is_placed(j) && !state.is_discarded(j) {
                j += 1;
            }
            // No page of a replay run is a fault: `usize::MAX` matches none.
            let flow = self.run(m, i, j, usize::MAX, Origin::Replay, scratch)?;
            if flow != Flow::Done {
                return Ok(flow);
            }
            i = j;
        }
        Ok(Flow::Done)
    }

    /// Places pages `[from, to)` of `m`'s region, splitting by discarded state.
    fn run(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        fault: usize,
        origin: Origin,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let region = &self.shared.regions[m.region];
        let state = &self.shared.pages[m.region];
        let honours_discard = region.backend != Backend::Continue { private: false };
        let mut i = from;
        while i < to {
            let discarded = honours_discard && state.is_discarded(i);
            let j = if honours_discard {
                state.discarded_run_end(i + 1, to, discarded)
            } else {
                to
            };
            let flow = if discarded {
                self.zeros(m, i, j, fault, origin)?
            } else {
                match region.backend {
                    Backend::Copy => self.source_run(m, region, i, j, fault, origin, scratch)?,
                    Backend::Continue { .. } => {
                        self.place(m, i, j, Fill::Continue, fault, origin)?
                    }
                }
            };
            if flow != Flow::Done {
                return Ok(flow);
            }
            i = j;
        }
        Ok(Flow::Done)
    }

    #[allow(clippy::too_many_arguments)]
    fn source_run(
        &self,
        m: &Mapping,
        region: &Region,
        from: usize,
        to: usize,
        fault: usize,
        origin: Origin,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let ps = m.page_size;
        let mut i = from;
        while i < to {
            let offset = region.offset + (i * ps) as u64;
            let asked = (to - i) * ps;
            let chunk = self
                .shared
                .source
                .fetch(offset, asked, &mut scratch[..asked])
                .map_err(|source| Stop::Failed(ServeError::Source { offset, source }))?;
            let (fill, got) = match chunk {
                Chunk::Data(bytes) => (Fill::Copy(bytes.as_ptr()), bytes.len()),
                Chunk::Zeros(n) => (Fill::Zero, n),
            };
            if got == 0 || got > asked || got % ps != 0 {
                return Err(Stop::Failed(ServeError::InvalidChunk {
                    offset,
                    asked,
                    got,
                }));
            }
            let j = i + got / ps;
            let flow = match fill {
                Fill::Zero => self.zeros(m, i, j, fault, origin)?,
                _ => self.place(m, i, j, fill, fault, origin)?,
            };
            if flow != Flow::Done {
                return Ok(flow);
            }
            i = j;
        }
        Ok(Flow::Done)
    }

    /// Zero pages: `ZEROPAGE`, or on huge pages a copy from the zero mapping.
    fn zeros(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        fault: usize,
        origin: Origin,
    ) -> Result<Flow, Stop> {
        if m.page_size > super::source::page_size() {
            self.place(
                m,
                from,
                to,
                Fill::Copy(self.shared.zeros.ptr),
                fault,
                origin,
            )
        } else {
            self.place(m, from, to, Fill::Zero, fault, origin)
        }
    }

    /// The ioctl loop: places `[from, to)` with `fill`, continuing after partial progress
    /// and present pages, waking the faulting page when someone else placed it.
    fn place(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        fill: Fill,
        fault: usize,
        origin: Origin,
    ) -> Result<Flow, Stop> {
        let ps = m.page_size;
        let state = &self.shared.pages[m.region];
        let addr_of = |page: usize| (m.addr + (page - m.first_page) * ps) as *mut c_void;
        let zero_fill = matches!(fill, Fill::Copy(p) if p == self.shared.zeros.ptr);
        let mut guard = lock_read(&self.shared.map);
        if self.shared.epoch.load(Ordering::Acquire) != self.epoch {
            return Ok(Flow::Restart); // unmapped or moved since the lookup
        }
        // Contents that a discard since the decision would make stale: checked here, under
        // the lock, so that an unrelated REMOVE does not restart the placement.
        let stale_if_discarded = match fill {
            Fill::Copy(_) => !zero_fill,
            Fill::Zero => false,
            Fill::Continue => {
                self.shared.regions[m.region].backend != (Backend::Continue { private: false })
            }
        };
        if stale_if_discarded && state.discarded_run_end(from, to, false) != to {
            return Ok(Flow::Restart);
        }
        let mut i = from;
        let mut idle = 0u32;
        while i < to {
            let (dst, len) = (addr_of(i), (to - i) * ps);
            let result = match fill {
                // SAFETY: the destination is a served region, whose contents belong to the
                // source by the caller of `ServerBuilder::start`; the source bytes are
                // readable for `len` (a chunk of that length, or the zero mapping).
                Fill::Copy(src) => unsafe {
                    let src = if zero_fill {
                        src
                    } else {
                        src.add((i - from) * ps)
                    };
                    self.shared.uffd.copy(src.cast(), dst, len, true)
                },
                // SAFETY: as above; zeros are what the page holds.
                Fill::Zero => unsafe { self.shared.uffd.zeropage(dst, len, true) },
                Fill::Continue => self
                    .shared
                    .uffd
                    .r#continue(dst, len, true)
                    .map(|n| n as usize),
            };
            let done = match result {
                Ok(n) => n / ps,
                Err(e) => match e.errno() {
                    Some(Errno::EAGAIN) => {
                        add(&self.counters.eagain_retries, 1);
                        match e {
                            Error::PartiallyCopied(n) if n >= ps => n / ps,
                            _ => {
                                // An event is pending: read it, then retry this very ioctl
                                // (not the whole fault: under a stream of events, only a
                                // quick retry lands between two of them).
                                let Some(inbox) = self.inbox else {
                                    return Ok(Flow::ReadEvents);
                                };
                                drop(guard);
                                let read = inbox.borrow_mut().read(self.shared, self.counters)?;
                                if read == 0 {
                                    backoff(&mut idle);
                                } else {
                                    idle = 0; // a new event: its thread resumes soon
                                }
                                guard = lock_read(&self.shared.map);
                                if self.shared.epoch.load(Ordering::Acquire) != self.epoch
                                    || (stale_if_discarded
                                        && state.discarded_run_end(i, to, false) != to)
                                {
                                    return Ok(Flow::Restart);
                                }
                                continue;
                            }
                        }
                    }
                    Some(Errno::EEXIST) => {
                        // Present: record it, wake a faulting thread, go on after it.
                        add(&self.counters.eexist, 1);
                        state.mark_placed(i, i + 1);
                        if i == fault && origin == Origin::Fault {
                            self.shared
                                .uffd
                                .wake(dst, ps)
                                .map_err(|e| uffd_error("waking a faulting thread", e))?;
                        }
                        i += 1;
                        continue;
                    }
                    // Unmapped meanwhile (its UNMAP is being read): nothing to serve.
                    Some(Errno::ENOENT) => return Ok(Flow::Done),
                    // CONTINUE of a page the page cache lacks (a hole): a zero page.
                    Some(Errno::EFAULT) if matches!(fill, Fill::Continue) => {
                        match self.zero_one(m, i, fault, origin)? {
                            Flow::Done => {
                                i += 1;
                                continue;
                            }
                            flow => return Ok(flow),
                        }
                    }
                    _ => {
                        let op = match fill {
                            Fill::Copy(_) => "placing pages (UFFDIO_COPY)",
                            Fill::Zero => "placing zero pages (UFFDIO_ZEROPAGE)",
                            Fill::Continue => "mapping page-cache pages (UFFDIO_CONTINUE)",
                        };
                        return Err(uffd_error(op, e));
                    }
                },
            };
            self.count(i, i + done, fault, fill, zero_fill, origin, ps);
            state.mark_placed(i, i + done);
            i += done;
        }
        drop(guard);
        Ok(Flow::Done)
    }

    /// One zero page in place of a page the page cache lacks (`CONTINUE` gave `EFAULT`),
    /// under the shared lock the caller holds.
    fn zero_one(
        &self,
        m: &Mapping,
        page: usize,
        fault: usize,
        origin: Origin,
    ) -> Result<Flow, Stop> {
        let ps = m.page_size;
        let dst = (m.addr + (page - m.first_page) * ps) as *mut c_void;
        let result = if ps > super::source::page_size() {
            // SAFETY: as in `place`: a served page, and the zero mapping is readable.
            unsafe {
                self.shared
                    .uffd
                    .copy(self.shared.zeros.ptr.cast(), dst, ps, true)
            }
        } else {
            // SAFETY: as in `place`.
            unsafe { self.shared.uffd.zeropage(dst, ps, true) }
        };
        match result {
            Ok(_) => self.count(page, page + 1, fault, Fill::Zero, true, origin, ps),
            Err(e) => match e.errno() {
                Some(Errno::EAGAIN) => return Ok(Flow::ReadEvents),
                Some(Errno::EEXIST | Errno::ENOENT) => {
                    add(&self.counters.eexist, 1);
                    if page == fault && origin == Origin::Fault {
                        let _ = self.shared.uffd.wake(dst, ps);
                    }
                }
                _ => return Err(uffd_error("placing a zero page for a page-cache hole", e)),
            },
        }
        self.shared.pages[m.region].mark_placed(page, page + 1);
        Ok(Flow::Done)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn count(
        &self,
        from: usize,
        to: usize,
        fault: usize,
        fill: Fill,
        zero_fill: bool,
        origin: Origin,
        ps: usize,
    ) {
        let n = (to - from) as u64;
        let c = self.counters;
        match fill {
            Fill::Copy(_) if !zero_fill => {
                add(&c.pages_copied, n);
                add(&c.bytes_copied, n * ps as u64);
            }
            Fill::Copy(_) | Fill::Zero => add(&c.pages_zeroed, n),
            Fill::Continue => add(&c.pages_continued, n),
        }
        match origin {
            Origin::Background => add(&c.background_pages, n),
            Origin::Replay => add(&c.replay_pages, n),
            Origin::Fault => {
                let own = u64::from((from..to).contains(&fault));
                add(&c.fault_around_pages, n - own);
            }
        }
    }
}

/// Messages read and not yet handled: a worker's batch buffer and its queue of faults.
pub(crate) struct Inbox {
    buf: EventBuffer,
    /// Faults read and not yet served, with when they were read.
    pub pending: VecDeque<(usize, Instant)>,
}

impl Inbox {
    pub fn new(batch: usize) -> Inbox {
        Inbox {
            buf: EventBuffer::new(batch),
            pending: VecDeque::with_capacity(batch * 8),
        }
    }

    /// Reads a batch of messages under the exclusive lock, applying the non-cooperative
    /// events and queueing the faults. Returns how many messages were read.
    pub fn read(&mut self, shared: &Shared, counters: &Counters) -> Result<usize, Stop> {
        let mut map = lock_write(&shared.map);
        let events = shared
            .uffd
            .read_events(&mut self.buf)
            .map_err(|e| uffd_error("reading messages", e))?;
        let now = Instant::now();
        let count = events.len();
        for event in events {
            match event.map_err(|e| uffd_error("decoding a message", e))? {
                Event::Pagefault { addr, .. } => {
                    self.pending.push_back((addr as usize, now));
                    continue;
                }
                Event::Remove { start, end } => {
                    add(&counters.events, 1);
                    // Marks only: placements re-check them under the lock.
                    apply_remove(shared, &map, start as usize, end as usize, counters);
                    continue;
                }
                Event::Unmap { start, end } => {
                    add(&counters.events, 1);
                    map.cut(start as usize, end as usize);
                }
                Event::Remap { from, to, len } => {
                    add(&counters.events, 1);
                    map.remap(from as usize, to as usize, len);
                }
                // Refused when the server is built (no EVENT_FORK); closing the child's
                // descriptor leaves its copy of the regions unregistered.
                Event::Fork { uffd } => drop(uffd),
                #[allow(unreachable_patterns)]
                _ => {}
            }
            // The address map changed: placements looked up before must start over.
            shared.epoch.fetch_add(1, Ordering::Release);
        }
        drop(map);
        Ok(count)
    }
}

/// One worker thread's state.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub id: usize,
    pub inbox: RefCell<Inbox>,
    pub scratch: Vec<u8>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, id: usize) -> Worker {
        let batch = shared.config.batch;
        let block = shared
            .regions
            .iter()
            .filter(|r| r.backend == Backend::Copy)
            .map(|r| r.block)
            .max()
            .unwrap_or(0);
        Worker {
            shared,
            id,
            inbox: RefCell::new(Inbox::new(batch)),
            scratch: vec![0; block],
        }
    }

    /// Serves until stopped.
    pub fn run(&mut self) -> Result<(), Stop> {
        loop {
            loop {
                let next = self.inbox.get_mut().pending.pop_front();
                let Some((addr, read_at)) = next else { break };
                self.serve_fault(addr, read_at)?;
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            self.wait()?;
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            self.read_messages()?;
        }
    }

    fn read_messages(&mut self) -> Result<usize, Stop> {
        let counters = &self.shared.counters[self.id];
        self.inbox.get_mut().read(&self.shared, counters)
    }

    fn serve_fault(&mut self, addr: usize, read_at: Instant) -> Result<(), Stop> {
        let mut idle = 0;
        loop {
            let flow = {
                let Worker {
                    shared,
                    id,
                    scratch,
                    inbox,
                } = &mut *self;
                let placer = Placer {
                    shared,
                    inbox: Some(inbox),
                    counters: &shared.counters[*id],
                    epoch: shared.epoch.load(Ordering::Acquire),
                };
                let found = lock_read(&shared.map).find(addr).copied();
                match found {
                    Some(m) => {
                        let page = m.first_page + (addr - m.addr) / m.page_size;
                        if let Some(recorder) = &shared.recorder {
                            let region = &shared.regions[m.region];
                            let first = region.offset / region.page_size as u64;
                            recorder.touch(first + page as u64);
                        }
                        let rank = shared
                            .replay_rank
                            .get(m.region)
                            .and_then(|r| r.get(page))
                            .map_or(0, |&r| r as usize);
                        if rank > 0 {
                            placer.along_record(&m, page, rank - 1, scratch)?
                        } else {
                            placer.block(&m, page, Origin::Fault, scratch)?
                        }
                    }
                    None => {
                        // Not (or no longer) served: the range was unmapped. Wake the thread,
                        // which retries the access and meets the kernel's verdict.
                        let page = addr & !(super::source::page_size() - 1);
                        shared
                            .uffd
                            .wake(page as *mut c_void, super::source::page_size())
                            .map_err(|e| uffd_error("waking a faulting thread", e))?;
                        Flow::Done
                    }
                }
            };
            match flow {
                Flow::Done => break,
                Flow::ReadEvents => {
                    if self.read_messages()? == 0 {
                        backoff(&mut idle);
                    } else {
                        idle = 0;
                    }
                }
                Flow::Restart => {}
            }
        }
        let counters = &self.shared.counters[self.id];
        add(&counters.faults, 1);
        counters.record_latency(read_at.elapsed());
        Ok(())
    }

    /// Waits until the userfaultfd is readable, the server stops, or the peer exits.
    fn wait(&self) -> Result<(), Stop> {
        let shared = &*self.shared;
        let mut fds = [
            libc::pollfd {
                fd: shared.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.peer.as_ref().map_or(-1, |p| p.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let spin_until = Instant::now() + shared.config.busy_poll;
        loop {
            let timeout = if Instant::now() < spin_until { 0 } else { -1 };
            // SAFETY: `fds` is an array of valid pollfds (a negative fd is ignored).
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Stop::Failed(ServeError::Io {
                    operation: "poll",
                    source: err,
                }));
            }
            if r == 0 {
                continue;
            }

            if fds[2].revents != 0 {
                return Err(Stop::Exit(Exit::ProcessExited));
            }
            if fds[0].revents & libc::POLLERR != 0 {
                return Err(Stop::Failed(ServeError::Io {
                    operation: "poll on the userfaultfd",
                    source: std::io::Error::other("POLLERR: the descriptor is not usable"),
                }));
            }
            return Ok(());
        }
    }
}

/// Marks the pages of `[start, end)` discarded (or, for a shared page-cache mapping, only no
/// longer placed), rounding out to whole pages.
fn apply_remove(shared: &Shared, map: &AddressMap, start: usize, end: usize, counters: &Counters) {
    for m in map.overlapping(start, end) {
        let ps = m.page_size;
        let first = m.first_page;
        // Mappings are page aligned: a range starting inside a page covers it from its start.
        let last = m.first_page + (m.addr % ps + m.len).div_ceil(ps);
        let state = &shared.pages[m.region];
        if shared.regions[m.region].backend == (Backend::Continue { private: false }) {
            // The page cache keeps the contents (the mapping is the file): nothing to zero.
            state.mark_unplaced(first, last);
        } else {
            state.mark_discarded(first, last);
        }
        add(&counters.removed_pages, (last - first) as u64);
    }
}

/// Fails closed: poisons every page not yet placed, and wakes the regions.
pub(crate) fn poison_unplaced(shared: &Shared) {
    let mut buf = EventBuffer::new(16);
    let mut map = lock_write(&shared.map);
    let counters = &shared.counters[0];
    let mappings: Vec<Mapping> = map.overlapping(0, usize::MAX).collect();
    for m in mappings {
        let ps = m.page_size;
        let state = &shared.pages[m.region];
        let mut i = m.first_page;
        let end = m.first_page + m.len / ps;
        let mut attempts = 0;
        while i < end && attempts < 1000 {
            if state.is_placed(i) && !state.is_discarded(i) {
                i += 1;
                continue;
            }
            let dst = (m.addr + (i - m.first_page) * ps) as *mut c_void;
            // SAFETY: poisoning a served page makes accesses to it raise SIGBUS; it holds no
            // Rust object (the caller of `start` promised the region's contents to us).
            match unsafe { shared.uffd.poison(dst, ps, true) } {
                Ok(_) => i += 1,
                Err(e) if matches!(e.errno(), Some(Errno::EEXIST | Errno::ENOENT)) => i += 1,
                Err(e) if e.errno() == Some(Errno::EAGAIN) => {
                    // An event is pending: read it (faults read here are resolved by the
                    // poison that follows; events are applied).
                    attempts += 1;
                    if let Ok(events) = shared.uffd.read_events(&mut buf) {
                        for event in events.flatten() {
                            match event {
                                Event::Remove { start, end } => apply_remove(
                                    shared,
                                    &map,
                                    start as usize,
                                    end as usize,
                                    counters,
                                ),
                                Event::Unmap { start, end } => {
                                    map.cut(start as usize, end as usize)
                                }
                                Event::Remap { from, to, len } => {
                                    map.remap(from as usize, to as usize, len)
                                }
                                _ => {}
                            }
                            shared.epoch.fetch_add(1, Ordering::Release);
                        }
                    }
                }
                // No POISON (before Linux 6.6), or the process is gone: leave them blocked.
                Err(_) => return,
            }
        }
    }
}
