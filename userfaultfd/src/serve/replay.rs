//! The replay: places a recorded working set's pages in order, in runs of at most 2 MiB per
//! ioctl, while the workers serve faults.

use std::sync::atomic::Ordering;

use super::place::{Flow, Origin, Placer};
use super::region::Mapping;
use super::shared::{lock_read, Shared, Stop};

/// The most bytes one replay ioctl places: a fault waits at most that long for the lock.
const REPLAY_RUN: usize = 2 << 20;

/// The replay: places the recorded pages in order, a run of consecutive pages (at most
/// [`REPLAY_RUN`] bytes) at a time, under the shared lock one ioctl at a time.
pub(crate) fn replay(shared: &Shared, id: usize) -> Result<(), Stop> {
    let list = &shared.replay;
    if list.is_empty() {
        return Ok(());
    }
    let ps = shared.regions[list[0].0].page_size;
    let per_run = (REPLAY_RUN / ps).max(1);
    let mut scratch = vec![0u8; per_run * ps];
    let mut k = 0;
    while k < list.len() {
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        // The run: entries that follow each other in the region.
        let (region, from) = list[k];
        let mut n = 1;
        while k + n < list.len() && n < per_run && list[k + n] == (region, from + n) {
            n += 1;
        }
        let placer = Placer::without_inbox(shared, id);
        let found = lock_read(&shared.map).locate(region, from);
        let flow = match found {
            Some(m) => {
                // Clipped to the mapping (an unmap may have cut the region); the rest of the
                // run is the next one.
                n = n.min(m.first_page + m.len / ps - from);
                placer.replay_run(&m, from, from + n, &mut scratch)?
            }
            None => Flow::Done, // unmapped: nothing to replay
        };
        match flow {
            Flow::Done => k += n,
            // An event is pending (a worker reads it), or was just applied: try again.
            Flow::ReadEvents | Flow::Restart => std::thread::yield_now(),
        }
    }
    let ns = shared
        .started
        .elapsed()
        .as_nanos()
        .min(u64::MAX as u128 - 1) as u64;
    shared.replay_done_ns.store(ns, Ordering::Release);
    Ok(())
}

impl Placer<'_> {
    /// A fault on page `page` of `m`, which the replayed record holds at position `rank`:
    /// places it, then (instead of the block around it) the pages the record lists after
    /// it, up to the fault-around budget. The workload has overtaken the replay there, and
    /// the record says what it touches next; the pages around it are mostly not wanted.
    pub(super) fn along_record(
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
}
