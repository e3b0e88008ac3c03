//! Reading messages under the exclusive lock and applying the non-cooperative events; failing
//! closed (poisoning what is not placed).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use libc::c_void;

use super::region::{AddressMap, Mapping};
use super::shared::{lock_read, lock_write, uffd_error, Shared, Stop};
use super::stats::{add, Counters};
use crate::{Errno, Error, Event, EventBuffer};

/// A fault read and not yet served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    pub addr: usize,
    /// When it was read.
    pub read_at: Instant,
    /// `Shared::epoch` when it was read: a fault outside the address map is outside every
    /// region if the map has not changed since (otherwise its range was unmapped or moved).
    pub epoch: u64,
}

/// Messages read and not yet handled: a worker's batch buffer and its queue of faults.
pub(crate) struct Inbox {
    buf: EventBuffer,
    /// Faults read and not yet served.
    pub pending: VecDeque<Fault>,
}

impl Inbox {
    pub fn new(batch: usize) -> Inbox {
        Inbox {
            buf: EventBuffer::new(batch),
            pending: VecDeque::with_capacity((batch * 8).max(256)),
        }
    }

    /// Reads a batch of messages under the exclusive lock, applying the non-cooperative
    /// events and queueing the faults. Returns how many messages were read.
    pub fn read(&mut self, shared: &Shared, counters: &Counters) -> Result<usize, Stop> {
        let mut map = lock_write(&shared.map);
        let events = map
            .uffd()?
            .read_events(&mut self.buf)
            .map_err(|e| uffd_error("reading messages", e))?;
        let now = Instant::now();
        let count = events.len();
        for event in events {
            match event.map_err(|e| uffd_error("decoding a message", e))? {
                Event::Pagefault { addr, .. } => {
                    self.pending.push_back(Fault {
                        addr: addr as usize,
                        read_at: now,
                        epoch: shared.epoch.load(Ordering::Relaxed),
                    });
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

/// Marks the pages of `[start, end)` discarded, rounding out to whole pages: none of them is
/// placed again unless the process faults it (what a fault on it gets depends on the
/// backend: zeros, or for a shared page-cache mapping the file's page).
pub(crate) fn apply_remove(
    shared: &Shared,
    map: &AddressMap,
    start: usize,
    end: usize,
    counters: &Counters,
) {
    for m in map.overlapping(start, end) {
        let ps = m.page_size;
        let first = m.first_page;
        // Mappings are page aligned: a range starting inside a page covers it from its start.
        let last = m.first_page + (m.addr % ps + m.len).div_ceil(ps);
        shared.pages[m.region].mark_discarded(first, last);
        add(&counters.removed_pages, (last - first) as u64);
    }
}

/// Fails closed: poisons every page of the served regions not known to be placed (and the
/// page of `outside`, a fault outside them), waking their threads: each then gets `SIGBUS`.
///
/// Runs of unplaced pages are poisoned one ioctl each, under the shared lock. A pending event
/// (`EAGAIN`) is read under the exclusive lock and applied, and the ioctl retried (without a
/// limit: the kernel refuses only while an event is pending, and reading it ends that); a
/// change of the address map (`UNMAP`, `REMAP`) restarts the scan over the new map. Faults
/// read meanwhile are woken at the end: they meet the poison. Stops early only if the
/// descriptor cannot poison (no `UFFDIO_POISON` before Linux 6.6: faulting threads then stay
/// blocked, as with [`ErrorPolicy::Stop`](super::ErrorPolicy::Stop)) or the process is gone.
pub(crate) fn poison_unplaced(shared: &Shared, id: usize, outside: Option<u64>) {
    let counters = &shared.counters[id];
    let mut inbox = Inbox::new(16);
    let base = super::source::page_size();
    if let Some(addr) = outside {
        let guard = lock_read(&shared.map);
        if let Ok(uffd) = guard.uffd() {
            // The page size there is unknown: a base page, else a huge page (hugetlbfs).
            for ps in [base, 2 << 20] {
                let page = (addr as usize & !(ps - 1)) as *mut c_void;
                // A page outside the served regions that faulted: it is missing (poisoning a
                // present page fails with EEXIST), so no contents are lost.
                if uffd.poison(page, ps, true).is_ok() {
                    break;
                }
            }
        }
    }
    'scan: loop {
        let epoch = shared.epoch.load(Ordering::Acquire);
        let mappings: Vec<Mapping> = lock_read(&shared.map).overlapping(0, usize::MAX).collect();
        for m in mappings {
            let ps = m.page_size;
            let state = &shared.pages[m.region];
            let end = m.first_page + m.len / ps;
            let mut i = m.first_page;
            let mut limit = usize::MAX;
            let mut idle = 0;
            while i < end {
                if state.is_placed(i) {
                    i = state.run_end(i, end, true);
                    continue;
                }
                let n = (state.run_end(i + 1, end, false) - i).min(limit);
                let dst = (m.addr + (i - m.first_page) * ps) as *mut c_void;
                let result = {
                    let guard = lock_read(&shared.map);
                    if shared.epoch.load(Ordering::Acquire) != epoch {
                        continue 'scan;
                    }
                    let Ok(uffd) = guard.uffd() else { return };
                    // Missing pages of a served region (a present page fails with EEXIST):
                    // accesses raise SIGBUS instead of blocking.
                    uffd.poison(dst, n * ps, true)
                };
                match result {
                    Ok(done) => {
                        i += (done / ps).max(1);
                        limit = usize::MAX;
                    }
                    Err(Error::PartiallyCopied(done)) if done >= ps => i += done / ps,
                    Err(e) => match e.errno() {
                        // Present (the process wrote it, or a racing placement): skip it.
                        Some(Errno::EEXIST) => i += 1,
                        // Across a VMA boundary, or unmapped: fewer pages, as in placing.
                        Some(Errno::ENOENT) if n > 1 => limit = n / 2,
                        Some(Errno::ENOENT) => i += 1,
                        Some(Errno::EAGAIN) => {
                            // An event is pending: read and apply it, then retry.
                            match inbox.read(shared, counters) {
                                Ok(0) => super::place::backoff(&mut idle),
                                Ok(_) => idle = 0,
                                Err(_) => return,
                            }
                        }
                        // No POISON (before Linux 6.6), or the process is gone.
                        _ => return,
                    },
                }
            }
        }
        break;
    }
    super::worker::wake_outstanding(shared, inbox.pending.drain(..).map(|f| f.addr));
}
