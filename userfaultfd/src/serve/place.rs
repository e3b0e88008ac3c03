//! Placing pages: the fault-around block, runs split by page state, the source's chunks, and
//! the ioctl loop with its `EEXIST`, `EAGAIN` and `EFAULT` handling.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libc::c_void;

use super::inbox::Inbox;
use super::region::{Backend, Mapping, Region};
use super::server::Exit;
use super::shared::{lock_read, uffd_error_at, Activity, FillJob, Shared, Stop, IN_FETCH, RUNNING};
use super::source::Chunk;
use super::stats::{add, Counters};
use super::ServeError;
use crate::{Errno, Error, Uffd};

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
pub(crate) enum Fill {
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
    /// The place-arrived fill: the source's bytes come from `PageSource::fetch_held`.
    Arrived,
}

/// After `EAGAIN` with nothing left to read, the event was read but the kernel refuses
/// placements until the thread that caused it resumes (microseconds): retry at once a few
/// times, since under a stream of events only a quick retry lands between two of them; then
/// let that thread have the CPU; then sleep.
pub(crate) fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle < 32 {
        std::hint::spin_loop();
    } else if *idle < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Maps the pages of `[src, src + len)` into this process before a copy to huge pages reads
/// them. A hugetlbfs `COPY` whose source faults (not yet mapped: a fresh scratch buffer, a
/// mapped file's page not yet touched, the zero mapping) allocates a temporary huge page to
/// copy into outside the kernel's lock, besides the destination's: with a single free huge
/// page, the copy fails with `ENOMEM`. Mapped first, the source never faults inside the copy.
/// `MADV_POPULATE_READ` (Linux 5.14+), else (the kernel does not know the advice: `EINVAL`)
/// a read of a byte per page. Any other failure (`EFAULT`: a mapped file truncated under
/// the source, against `MappedFile::new`'s contract) is left to the copy, which reports it
/// as its own `EFAULT`: a read here would raise `SIGBUS` in the server instead.
///
/// # Safety
///
/// `[src, src + len)` is readable memory.
unsafe fn prefault(src: *const u8, len: usize) {
    let base = super::source::page_size();
    let start = src as usize & !(base - 1);
    let end = src as usize + len;
    // SAFETY: advice on readable memory of this process (rounded out to whole pages, which
    // are mapped since the range is); it changes no contents.
    let r = unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_POPULATE_READ) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        let mut p = src as usize;
        while p < end {
            // SAFETY: a byte of the readable range.
            unsafe { std::ptr::read_volatile(p as *const u8) };
            p = (p & !(base - 1)) + base;
        }
    }
}

/// Whether the kernel can read all of `[src, src + len)` of this process: after a copy from
/// the source failed with `EFAULT`, this tells the source's memory failing (a mapped file cut
/// short, a disk's read error) from the destination's (a shmem or hugetlbfs file the process
/// cut short under its mapping). Read in the kernel (`process_vm_readv` of this process, a
/// page at a time into a buffer on the stack), so a page that cannot be read gives `EFAULT`
/// where a load here would raise `SIGBUS`. `None` when the kernel refuses the call (a seccomp
/// filter): it cannot tell.
fn kernel_can_read(src: *const u8, len: usize) -> Option<bool> {
    let mut page = [0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(page.len());
        let local = libc::iovec {
            iov_base: page.as_mut_ptr().cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: src.wrapping_add(at) as *mut c_void,
            iov_len: n,
        };
        // SAFETY: reads this process's memory in the kernel (a fault there is an error, not a
        // signal) into `page`, which is `n` bytes or more.
        let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if r < 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EFAULT) => Some(false),
                _ => None,
            };
        }
        if r as usize != n {
            return Some(false);
        }
        at += n;
    }
    Some(true)
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
    /// What to do about a pending event that refuses a placement.
    pub events: Events<'a>,
    pub counters: &'a Counters,
    /// This thread's activity (marked while in `PageSource::fetch`).
    pub activity: &'a Activity,
    /// `Shared::epoch` when this attempt started.
    pub epoch: u64,
    /// The thread's id (index of its counters and activity).
    pub id: usize,
}

/// Who reads a pending event that refuses a placement (`EAGAIN`, nothing done).
#[derive(Clone, Copy)]
pub(crate) enum Events<'a> {
    /// A worker that reads the messages itself (the source never blocks): reads them, then
    /// retries at once.
    Read(&'a RefCell<Inbox>),
    /// A fetch worker: the reader thread reads them; backs off and retries, until stopped.
    Wait,
    /// The replay: [`Flow::ReadEvents`], leaving them to the others.
    Leave,
    /// The background fill: makes no ioctl itself, but hands each placement to a thread that
    /// reads the messages (see `FillDesk`).
    Delegate,
}

impl<'a> Placer<'a> {
    /// A placer for thread `id`, which reads no events.
    pub(crate) fn new(shared: &'a Shared, id: usize, events: Events<'a>) -> Placer<'a> {
        Placer {
            shared,
            events,
            counters: &shared.counters[id],
            activity: &shared.activity[id],
            epoch: shared.epoch.load(Ordering::Acquire),
            id,
        }
    }

    /// A placer for a thread that reads no events (the background fill, the replay): a
    /// placement that meets one leaves it to the workers.
    pub(crate) fn without_inbox(shared: &'a Shared, id: usize) -> Placer<'a> {
        Placer::new(shared, id, Events::Leave)
    }

    /// Whether `stop` may leave this thread behind in a fetch (every thread but a worker
    /// that reads messages: it is joined, and the source promised not to block it).
    #[inline]
    fn abandonable(&self) -> bool {
        !matches!(self.events, Events::Read(_))
    }

    /// `PageSource::fetch`, marked as such for [`Server::stop`](super::Server::stop), which
    /// may leave the thread behind in it. (A fault being served when the server stops is
    /// finished if its fetches return within the grace `stop` gives.)
    /// [`PageSource::fetch_held`]: never waits, so not abandonable.
    fn fetch_held<'s>(
        &self,
        offset: u64,
        len: usize,
        scratch: &'s mut [u8],
    ) -> Result<Option<Chunk<'s>>, Stop>
    where
        'a: 's,
    {
        self.shared
            .source
            .fetch_held(offset, len, scratch)
            .map_err(|source| Stop::Failed(ServeError::Source { offset, source }))
    }

    fn fetch<'s>(&self, offset: u64, len: usize, scratch: &'s mut [u8]) -> Result<Chunk<'s>, Stop>
    where
        'a: 's,
    {
        let abandonable = self.abandonable();
        if abandonable {
            self.activity.set(IN_FETCH);
        }
        let chunk = self
            .shared
            .source
            .fetch(offset, len, scratch)
            .map_err(|source| Stop::Failed(ServeError::Source { offset, source }));
        if abandonable {
            self.activity.set(RUNNING);
        }
        chunk
    }
}

impl Placer<'_> {
    /// Places the pages of the fault-around block holding region page `page` of `m` that are
    /// neither placed nor discarded (for a fault: `page` itself first, whatever its recorded
    /// state, and woken). A page the process discarded is placed again only when it faults.
    pub fn block(
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
        // The faulting page is placed (or found present and woken) even if recorded as
        // placed: the record could predate a zap the server was not told about.
        let forced = (origin == Origin::Fault).then_some(page);
        for (from, to) in [(page, end), (start, page)] {
            let flow = self.unsettled(m, from, to, forced, page, origin, scratch)?;
            if flow != Flow::Done {
                return Ok(flow);
            }
        }
        Ok(Flow::Done)
    }

    /// Places the pages of `[from, to)` of `m`'s region that are neither placed nor
    /// discarded, run by run (`forced`: a page placed whatever its recorded state).
    #[allow(clippy::too_many_arguments)]
    fn unsettled(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        forced: Option<usize>,
        fault: usize,
        origin: Origin,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let state = &self.shared.pages[m.region];
        let mut i = from;
        while i < to {
            if Some(i) != forced && state.settled(i) {
                i = state.settled_run_end(i, to, true);
                continue;
            }
            let j = state.settled_run_end(i + 1, to, false);
            let flow = self.run(m, i, j, fault, origin, scratch)?;
            if flow != Flow::Done {
                return Ok(flow);
            }
            i = j;
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

    /// Places the pages of `[from, to)` (inside one fault-around block) of `m`'s region that
    /// are neither placed nor discarded, clipped to `m`: bytes the source reported arrived.
    pub fn arrived_block(
        &self,
        m: &Mapping,
        from: usize,
        to: usize,
        scratch: &mut [u8],
    ) -> Result<Flow, Stop> {
        let from = from.max(m.first_page);
        let to = to.min(m.first_page + m.len / m.page_size);
        self.unsettled(m, from, to, None, from, Origin::Arrived, scratch)
    }

    /// Places pages `[from, to)` of `m`'s region, splitting by discarded state.
    pub(super) fn run(
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
            let chunk = if origin == Origin::Arrived {
                match self.fetch_held(offset, asked, &mut scratch[..asked])? {
                    Some(chunk) => chunk,
                    // Not held any more: left to the faults.
                    None => return Ok(Flow::Done),
                }
            } else {
                self.fetch(offset, asked, &mut scratch[..asked])?
            };
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
        if m.page_size > self.shared.base_page {
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

    /// Makes a placement the background fill handed over (on this thread, which reads the
    /// messages: `self.events` is its own).
    pub fn place_for_fill(&self, job: &FillJob) -> Result<Flow, Stop> {
        self.place(
            &job.mapping,
            job.from,
            job.to,
            job.fill,
            usize::MAX,
            Origin::Background,
        )
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
        if let (Events::Delegate, Some(desk)) = (self.events, &self.shared.desk) {
            let job = FillJob {
                mapping: *m,
                from,
                to,
                fill,
                epoch: self.epoch,
                id: self.id,
            };
            return desk.submit(job, &self.shared.stopping);
        }
        let ps = m.page_size;
        let state = &self.shared.pages[m.region];
        let addr_of = |page: usize| (m.addr + (page - m.first_page) * ps) as *mut c_void;
        let zero_fill = matches!(fill, Fill::Copy(p) if p == self.shared.zeros.ptr);
        // The source's bytes: what is placed is reported to it (`PageSource::placed`).
        let from_source = matches!(fill, Fill::Copy(_)) && !zero_fill;
        let region_offset = self.shared.regions[m.region].offset;
        let report = |first: usize, pages: usize| {
            if from_source {
                let offset = region_offset + (first * ps) as u64;
                self.shared.source.placed(offset, pages * ps);
            }
        };
        let mut guard = lock_read(&self.shared.map);
        if self.shared.epoch.load(Ordering::Acquire) != self.epoch {
            return Ok(Flow::Restart); // unmapped or moved since the lookup
        }
        // Checked here, under the lock (so that an unrelated REMOVE does not restart the
        // placement): no page of the range was discarded since the decision. Contents a
        // discard makes stale (the source's, or a private mapping's file page) must not
        // land on any of them; nor may anything land on a discarded page other than the
        // faulting one (what the process gave back is placed again only when it faults).
        let stale_if_discarded = match fill {
            Fill::Copy(_) => !zero_fill,
            Fill::Zero => false,
            Fill::Continue => {
                self.shared.regions[m.region].backend != (Backend::Continue { private: false })
            }
        };
        let exempt = (origin == Origin::Fault && !stale_if_discarded).then_some(fault);
        if state.any_discarded(from, to, exempt) {
            return Ok(Flow::Restart);
        }
        if let Fill::Copy(src) = fill {
            if ps > self.shared.base_page {
                // SAFETY: the bytes to copy: a chunk of the source (a `&[u8]` of this length)
                // or the zero mapping (at least a block long).
                unsafe { prefault(src, (to - from) * ps) };
            }
        }
        let mut i = from;
        let mut idle = 0u32;
        // Pages per ioctl: halved after an `ENOENT` (the range crosses the end of a VMA),
        // reset after a success.
        let mut limit = usize::MAX;
        while i < to {
            let n = (to - i).min(limit);
            let (dst, len) = (addr_of(i), n * ps);
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
                    guard.uffd()?.copy(src.cast(), dst, len, true)
                },
                // SAFETY: as above; zeros are what the page holds.
                // (`zeropage_with_mode`, not 0.9's `zeropage`: it keeps the count of a
                // partial zeroing.)
                Fill::Zero => unsafe {
                    guard
                        .uffd()?
                        .zeropage_with_mode(dst, len, crate::ZeropageMode::empty())
                },
                Fill::Continue => guard.uffd()?.r#continue(dst, len, true).map(|n| n as usize),
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
                                drop(guard);
                                match self.events {
                                    Events::Leave | Events::Delegate => {
                                        return Ok(Flow::ReadEvents)
                                    }
                                    Events::Read(inbox) => {
                                        let read =
                                            inbox.borrow_mut().read(self.shared, self.counters)?;
                                        if read == 0 {
                                            backoff(&mut idle);
                                        } else {
                                            idle = 0; // a new event: its thread resumes soon
                                        }
                                    }
                                    Events::Wait => {
                                        if self.shared.stopping.load(Ordering::Acquire) {
                                            return Err(Stop::Exit(Exit::Stopped));
                                        }
                                        backoff(&mut idle);
                                    }
                                }
                                guard = lock_read(&self.shared.map);
                                if self.shared.epoch.load(Ordering::Acquire) != self.epoch
                                    || state.any_discarded(i, to, exempt)
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
                        report(i, 1);
                        if i == fault && origin == Origin::Fault {
                            guard.uffd()?.wake(dst, ps).map_err(|e| {
                                uffd_error_at("waking a faulting thread", m.region, dst, ps, e)
                            })?;
                        }
                        i += 1;
                        continue;
                    }
                    // The range is not inside one registered VMA: it crosses a VMA
                    // boundary made after registration (`mprotect`, `mlock`), or part of it
                    // was unmapped (without `EVENT_UNMAP`, or its event not yet read). Try
                    // fewer pages; a single page that is not registered is left out, and if
                    // it is the faulting one, its thread is woken: it retries the access and
                    // meets the kernel's verdict (a fault is never left unanswered).
                    Some(Errno::ENOENT) if n > 1 => {
                        limit = n / 2;
                        continue;
                    }
                    Some(Errno::ENOENT) => {
                        if i == fault && origin == Origin::Fault {
                            guard.uffd()?.wake(dst, ps).map_err(|e| {
                                uffd_error_at("waking a faulting thread", m.region, dst, ps, e)
                            })?;
                        }
                        i += 1;
                        continue;
                    }
                    // CONTINUE of a page the page cache lacks (a hole): a zero page.
                    Some(Errno::EFAULT) if matches!(fill, Fill::Continue) => {
                        match self.zero_one(guard.uffd()?, m, i, fault, origin)? {
                            Flow::Done => {
                                i += 1;
                                continue;
                            }
                            flow => return Ok(flow),
                        }
                    }
                    // The kernel could not read the source's bytes (a mapped file cut
                    // short, a disk's read error; not the destination: checked): the
                    // source may answer from elsewhere.
                    Some(Errno::EFAULT)
                        if from_source
                            && matches!(fill, Fill::Copy(src)
                                if kernel_can_read(src.wrapping_add((i - from) * ps), len)
                                    == Some(false))
                            && self
                                .shared
                                .source
                                .unreadable(region_offset + (i * ps) as u64, len) =>
                    {
                        return Ok(Flow::Restart);
                    }
                    _ => {
                        let op = match fill {
                            Fill::Copy(_) => "placing pages (UFFDIO_COPY)",
                            Fill::Zero => "placing zero pages (UFFDIO_ZEROPAGE)",
                            Fill::Continue => "mapping page-cache pages (UFFDIO_CONTINUE)",
                        };
                        return Err(uffd_error_at(op, m.region, dst, len, e));
                    }
                },
            };
            self.count(i, i + done, fault, fill, zero_fill, origin, ps);
            state.mark_placed(i, i + done);
            if done > 0 {
                report(i, done);
            }
            i += done;
            limit = usize::MAX;
        }
        drop(guard);
        Ok(Flow::Done)
    }

    /// One zero page in place of a page the page cache lacks (`CONTINUE` gave `EFAULT`),
    /// under the shared lock the caller holds.
    fn zero_one(
        &self,
        uffd: &Uffd,
        m: &Mapping,
        page: usize,
        fault: usize,
        origin: Origin,
    ) -> Result<Flow, Stop> {
        let ps = m.page_size;
        let dst = (m.addr + (page - m.first_page) * ps) as *mut c_void;
        let result = if ps > self.shared.base_page {
            // SAFETY: as in `place`: a served page, and the zero mapping is readable.
            unsafe { uffd.copy(self.shared.zeros.ptr.cast(), dst, ps, true) }
        } else {
            // SAFETY: as in `place`.
            unsafe { uffd.zeropage(dst, ps, true) }
        };
        match result {
            Ok(_) => self.count(page, page + 1, fault, Fill::Zero, true, origin, ps),
            Err(e) => match e.errno() {
                Some(Errno::EAGAIN) => return Ok(Flow::ReadEvents),
                Some(Errno::EEXIST) => {
                    add(&self.counters.eexist, 1);
                    if page == fault && origin == Origin::Fault {
                        let _ = uffd.wake(dst, ps);
                    }
                }
                // Not registered (see `place`): left out; its faulting thread is woken.
                Some(Errno::ENOENT) => {
                    if page == fault && origin == Origin::Fault {
                        let _ = uffd.wake(dst, ps);
                    }
                    return Ok(Flow::Done);
                }
                _ => {
                    let op = "placing a zero page for a page-cache hole";
                    return Err(uffd_error_at(op, m.region, dst, ps, e));
                }
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
            Origin::Background | Origin::Arrived => add(&c.background_pages, n),
            Origin::Replay => add(&c.replay_pages, n),
            Origin::Fault => {
                let own = u64::from((from..to).contains(&fault));
                add(&c.fault_around_pages, n - own);
            }
        }
    }
}
