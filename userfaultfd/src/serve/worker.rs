//! The server's threads: a worker that reads messages (see `inbox`) and serves the faults it
//! read (see `place`), for sources that never block; or, for sources that may block, a
//! reader that only reads messages and hands the faults to fetch workers, which only serve.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use libc::c_void;

use super::inbox::{Fault, Inbox};
use super::place::{backoff, Events, Flow, Origin, Placer};
use super::region::Backend;
use super::server::Exit;
use super::shared::{lock_read, uffd_error, Shared, Stop};
use super::stats::add;
use super::ServeError;

/// One server thread's state.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub id: usize,
    pub inbox: RefCell<Inbox>,
    pub scratch: Vec<u8>,
}

impl Worker {
    /// Thread `id`; `serves`: whether it places pages (and so needs a scratch buffer).
    pub fn new(shared: Arc<Shared>, id: usize, serves: bool) -> Worker {
        let batch = shared.config.batch;
        let block = shared
            .regions
            .iter()
            .filter(|r| serves && r.backend == Backend::Copy)
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

    /// A worker that reads the messages and serves the faults it read (the source never
    /// blocks), until stopped; then answers every fault it read and did not serve (see
    /// [`wake_outstanding`]).
    pub fn run(&mut self) -> Result<(), Stop> {
        let result = self.serve_inline();
        let pending = &mut self.inbox.get_mut().pending;
        wake_outstanding(&self.shared, pending.drain(..).map(|f| f.addr));
        result
    }

    fn serve_inline(&mut self) -> Result<(), Stop> {
        loop {
            loop {
                let next = self.inbox.get_mut().pending.pop_front();
                let Some(fault) = next else { break };
                if let Err(stop) = self.serve_fault(fault, true) {
                    // Not served: answered with the other outstanding faults (see `run`).
                    self.inbox.get_mut().pending.push_front(fault);
                    return Err(stop);
                }
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            let fill_job = self.wait()?;
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            if fill_job {
                self.place_for_fill()?;
            }
            self.read_messages()?;
        }
    }

    /// Makes the placement the background fill handed over, if one waits (see `FillDesk`).
    fn place_for_fill(&mut self) -> Result<(), Stop> {
        let shared = Arc::clone(&self.shared);
        let Some(desk) = &shared.desk else {
            return Ok(());
        };
        let Some(job) = desk.take() else {
            return Ok(());
        };
        // Hands a result back even if the placement panics (the fill waits for it).
        struct Answer<'d>(&'d super::shared::FillDesk, Option<Result<Flow, Stop>>);
        impl Drop for Answer<'_> {
            fn drop(&mut self) {
                self.0
                    .finish(self.1.take().unwrap_or(Err(Stop::Exit(Exit::Stopped))));
            }
        }
        let mut answer = Answer(desk, None);
        let placer = Placer {
            shared: &shared,
            events: Events::Read(&self.inbox),
            counters: &shared.counters[job.id],
            activity: &shared.activity[self.id],
            epoch: job.epoch,
            id: job.id,
        };
        answer.1 = Some(placer.place_for_fill(&job));
        Ok(())
    }

    /// The reader (the source may block): reads the messages, applies the events, and hands
    /// the faults to the fetch workers; never fetches. When it stops, the faults still
    /// queued are answered (see [`wake_outstanding`]).
    pub fn run_reader(&mut self) -> Result<(), Stop> {
        let result = self.read_until_stopped();
        let shared = &*self.shared;
        if let Some(dispatch) = &shared.dispatch {
            let mut queue = dispatch.queue.lock().unwrap_or_else(|e| e.into_inner());
            wake_outstanding(shared, queue.drain(..).map(|f| f.addr));
        }
        result
    }

    fn read_until_stopped(&mut self) -> Result<(), Stop> {
        let shared = Arc::clone(&self.shared);
        let Some(dispatch) = &shared.dispatch else {
            return Ok(());
        };
        loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            let fill_job = self.wait()?;
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            // (Faults read while placing for the fill are handed over below.)
            let read = match fill_job {
                true => self.place_for_fill().and_then(|()| self.read_messages()),
                false => self.read_messages(),
            };
            // Faults read are handed over even when the read ends in an error: they are
            // then answered with the others when the reader stops.
            let pending = &mut self.inbox.get_mut().pending;
            let n = pending.len();
            if n > 0 {
                let mut queue = dispatch.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.extend(pending.drain(..));
                drop(queue);
                if n == 1 {
                    dispatch.ready.notify_one();
                } else {
                    dispatch.ready.notify_all();
                }
            }
            read?;
        }
    }

    /// A fetch worker (the source may block): serves the faults the reader hands over, until
    /// stopped. On `EAGAIN` it waits for the reader to read the event. A fault it does not
    /// finish is answered (see [`wake_outstanding`]); if `stop` leaves it behind in a fetch,
    /// `stop` answers its fault.
    pub fn run_fetcher(&mut self) -> Result<(), Stop> {
        let shared = Arc::clone(&self.shared);
        let activity = &shared.activity[self.id];
        while let Some(fault) = self.next_fault() {
            let addr = fault.addr;
            activity.fault.store(addr, Ordering::Release);
            let result = self.serve_fault(fault, false);
            activity.fault.store(usize::MAX, Ordering::Release);
            if let Err(stop) = result {
                wake_outstanding(&shared, std::iter::once(addr));
                return match stop {
                    Stop::Exit(Exit::Stopped) => Ok(()),
                    other => Err(other),
                };
            }
        }
        Ok(())
    }

    /// The next fault the reader handed over; `None` once the server stops.
    fn next_fault(&self) -> Option<Fault> {
        let shared = &*self.shared;
        let dispatch = shared.dispatch.as_ref()?;
        let mut queue = dispatch.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if shared.stopping.load(Ordering::Acquire) {
                return None;
            }
            if let Some(fault) = queue.pop_front() {
                return Some(fault);
            }
            queue = dispatch
                .ready
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn read_messages(&mut self) -> Result<usize, Stop> {
        let counters = &self.shared.counters[self.id];
        self.inbox.get_mut().read(&self.shared, counters)
    }

    /// Serves one fault; `inline`: this worker reads the messages itself.
    #[inline]
    fn serve_fault(&mut self, fault: Fault, inline: bool) -> Result<(), Stop> {
        let addr = fault.addr;
        let mut idle = 0;
        loop {
            let flow = {
                let Worker {
                    shared,
                    id,
                    scratch,
                    inbox,
                } = &mut *self;
                let events = if inline {
                    Events::Read(inbox)
                } else {
                    Events::Wait
                };
                let placer = Placer::new(shared, *id, events);
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
                    // Outside the map, which has not changed since the fault was read: a
                    // fault outside every region. Fatal, answered by the error policy (the
                    // fault is woken with the other outstanding ones when the worker stops).
                    None if shared.epoch.load(Ordering::Acquire) == fault.epoch => {
                        return Err(Stop::Failed(ServeError::FaultOutsideRegions {
                            addr: addr as u64,
                        }));
                    }
                    None => {
                        // In the map when read, no longer: the range was unmapped or moved
                        // since. Wake the thread, which retries the access and meets the
                        // kernel's verdict.
                        let page = addr & !(super::source::page_size() - 1);
                        lock_read(&shared.map)
                            .uffd()?
                            .wake(page as *mut c_void, super::source::page_size())
                            .map_err(|e| uffd_error("waking a faulting thread", e))?;
                        Flow::Done
                    }
                }
            };
            match flow {
                Flow::Done => break,
                Flow::ReadEvents if inline => {
                    if self.read_messages()? == 0 {
                        backoff(&mut idle);
                    } else {
                        idle = 0;
                    }
                }
                // The reader reads the event: wait for it (or for the stop).
                Flow::ReadEvents | Flow::Restart => {
                    if !inline && self.shared.stopping.load(Ordering::Acquire) {
                        return Err(Stop::Exit(Exit::Stopped));
                    }
                    if flow == Flow::ReadEvents {
                        backoff(&mut idle);
                    }
                }
            }
        }
        let counters = &self.shared.counters[self.id];
        add(&counters.faults, 1);
        counters.record_latency(fault.read_at.elapsed());
        Ok(())
    }

    /// Waits until the userfaultfd is readable, the server stops, the peer exits, or the
    /// background fill hands over a placement (then returns `true`).
    #[inline]
    fn wait(&self) -> Result<bool, Stop> {
        let shared = &*self.shared;
        let mut fds = [
            libc::pollfd {
                fd: shared.uffd_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&shared.stop_fd),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared
                    .peer
                    .as_ref()
                    .map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared
                    .desk
                    .as_ref()
                    .map_or(-1, |d| std::os::fd::AsRawFd::as_raw_fd(&d.fd)),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // (No clock read without busy-polling, the default.)
        let busy = shared.config.busy_poll;
        let spin_until = (!busy.is_zero()).then(|| Instant::now() + busy);
        loop {
            let timeout = match spin_until {
                Some(until) if Instant::now() < until => 0,
                _ => -1,
            };
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
            return Ok(fds[3].revents != 0);
        }
    }
}

/// Wakes the threads of faults that were read and will not be served (the server stops):
/// each retries its access, which faults again, so that its fault is pending on the
/// descriptor for whoever reads it next (another worker, or the owner of
/// [`Finished::uffd`](super::Finished::uffd)) instead of being lost with the server; a page
/// poisoned meanwhile raises `SIGBUS` instead. A base page at the reported address covers a
/// huge page's waiters too (the kernel reports the huge page's address).
pub(crate) fn wake_outstanding(shared: &Shared, addrs: impl Iterator<Item = usize>) {
    let ps = super::source::page_size();
    let guard = lock_read(&shared.map);
    let Ok(uffd) = guard.uffd() else { return };
    for addr in addrs {
        let _ = uffd.wake((addr & !(ps - 1)) as *mut c_void, ps);
    }
}
