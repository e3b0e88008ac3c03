//! Reading messages under the exclusive lock and applying the non-cooperative events; failing
//! closed (poisoning what is not placed).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use libc::c_void;

use super::region::{AddressMap, Mapping};
use super::shared::{lock_write, uffd_error, Shared, Stop};
use super::stats::{add, Counters};
use super::ServeError;
use crate::{Errno, Event, EventBuffer};

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
            pending: VecDeque::with_capacity((batch * 8).max(256)),
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
        let mut outside = None;
        for event in events {
            match event.map_err(|e| uffd_error("decoding a message", e))? {
                Event::Pagefault { addr, .. } => {
                    // Checked against the map as it is when the fault is read (an address
                    // unmapped after that is answered by a wake when served).
                    if map.find(addr as usize).is_none() {
                        outside.get_or_insert(addr as u64);
                    }
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
        if let Some(addr) = outside {
            // Fatal: answered by the error policy (the faults read stay queued, and are
            // answered as every outstanding fault is when a worker stops).
            return Err(Stop::Failed(ServeError::FaultOutsideRegions { addr }));
        }
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
            // Missing pages only: accesses raise SIGBUS instead of blocking.
            match shared.uffd.poison(dst, ps, true) {
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
