//! The worker thread: waits for messages, reads them (see `inbox`), serves the faults read
//! (see `place`), until stopped.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use libc::c_void;

use super::inbox::Inbox;
use super::place::{backoff, Flow, Origin, Placer};
use super::region::Backend;
use super::server::Exit;
use super::shared::{lock_read, uffd_error, Shared, Stop};
use super::stats::add;
use super::ServeError;

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

    /// Serves until stopped; then answers every fault it read and did not serve (see
    /// [`wake_outstanding`]).
    pub fn run(&mut self) -> Result<(), Stop> {
        let result = self.serve();
        let pending = &mut self.inbox.get_mut().pending;
        wake_outstanding(&self.shared, pending.drain(..).map(|(addr, _)| addr));
        result
    }

    fn serve(&mut self) -> Result<(), Stop> {
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

/// Wakes the threads of faults that were read and will not be served (the server stops):
/// each retries its access, which faults again, so that its fault is pending on the
/// descriptor for whoever reads it next (another worker, or the owner of
/// [`Finished::uffd`](super::Finished::uffd)) instead of being lost with the server; a page
/// poisoned meanwhile raises `SIGBUS` instead. A base page at the reported address covers a
/// huge page's waiters too (the kernel reports the huge page's address).
pub(crate) fn wake_outstanding(shared: &Shared, addrs: impl Iterator<Item = usize>) {
    let ps = super::source::page_size();
    for addr in addrs {
        let _ = shared.uffd.wake((addr & !(ps - 1)) as *mut c_void, ps);
    }
}
