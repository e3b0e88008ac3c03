//! The background thread's fills, at the lowest priority: the rest of the regions, block by
//! block ([`background`]), or the bytes the source reports arrived, as they come
//! ([`place_arrived`]).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::place::{Events, Flow, Placer};
use super::region::Region;
use super::shared::{lock_read, Shared, Stop};

/// Lowers the calling thread to the lowest CPU priority (nice 19).
fn lower_priority() {
    // SAFETY: setpriority on this thread only (Linux: a thread id names one thread).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
}

/// The background fill: places every block not yet placed, region by region, at the lowest
/// priority. It fetches, but hands its placements to a thread at the workers' priority,
/// which makes them under the lock (see `FillDesk`).
pub(crate) fn background(shared: &Shared, id: usize) -> Result<(), Stop> {
    lower_priority();
    let mut scratch = vec![0u8; shared.zeros.len];
    for (index, region) in shared.regions.iter().enumerate() {
        let per_block = region.pages_per_block();
        let mut page = 0;
        while page < region.pages() {
            if shared.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            let state = &shared.pages[index];
            if state.run_end(page, (page + per_block).min(region.pages()), true)
                == (page + per_block).min(region.pages())
            {
                page += per_block;
                continue;
            }
            // Never holds the lock itself (see `FillDesk`).
            let placer = Placer::new(shared, id, Events::Delegate);
            let found = lock_read(&shared.map).locate(index, page);
            let flow = match found {
                Some(m) => placer.background_block(&m, page, &mut scratch)?,
                None => Flow::Done, // unmapped: nothing to fill
            };
            match flow {
                Flow::Done => page += per_block,
                // An event is pending (a worker reads it), or was just applied: try again.
                Flow::ReadEvents | Flow::Restart => std::thread::yield_now(),
            }
        }
    }
    Ok(())
}

/// The place-arrived fill: takes the ranges the source reports arrived
/// (`PageSource::arrivals`) as they come and places, in every region that maps them, their
/// pages that are neither placed nor discarded, at the lowest priority and through the fill's
/// hand-over (see `FillDesk`), until the server stops.
pub(crate) fn place_arrived(shared: &Shared, id: usize) -> Result<(), Stop> {
    let Some(queue) = &shared.arrivals else {
        return Ok(());
    };
    lower_priority();
    let mut scratch = vec![0u8; shared.zeros.len];
    while !shared.stopping.load(Ordering::Acquire) {
        // Bounded, so that a stop is seen.
        let Some(range) = queue.pop(Duration::from_millis(20)) else {
            continue;
        };
        for (index, region) in shared.regions.iter().enumerate() {
            if let Some(pages) = whole_pages(region, &range) {
                place_pages(shared, id, index, pages, &mut scratch)?;
            }
        }
    }
    Ok(())
}

/// The pages of `region` whose source bytes lie wholly inside `range` (a page the range
/// covers in part is left to the faults).
fn whole_pages(region: &Region, range: &Range<u64>) -> Option<Range<usize>> {
    let start = region.offset;
    let end = region.offset + region.len as u64;
    let (lo, hi) = (range.start.max(start), range.end.min(end));
    if lo >= hi {
        return None;
    }
    let ps = region.page_size as u64;
    let from = (lo - start).div_ceil(ps) as usize;
    let to = ((hi - start) / ps) as usize;
    (from < to).then_some(from..to)
}

/// Places the pages of `pages` of region `index` that are neither placed nor discarded,
/// fault-around block by block, from the last block back to the first: a process reading
/// forward from the start of an arrived range (a sequential restore faulting into the chunk
/// it waited for) then meets the fill once, in the middle, instead of racing it block by
/// block for the same pages (forward, a sequential restore of 1 GiB found some 20 thousand
/// pages placed twice, `EEXIST`).
fn place_pages(
    shared: &Shared,
    id: usize,
    index: usize,
    pages: Range<usize>,
    scratch: &mut [u8],
) -> Result<(), Stop> {
    let per_block = shared.regions[index].pages_per_block();
    let state = &shared.pages[index];
    let mut end = pages.end;
    while end > pages.start {
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let last = end - 1;
        let start = (last - last % per_block).max(pages.start);
        if state.settled_run_end(start, end, true) == end {
            end = start;
            continue;
        }
        // Never holds the lock itself (see `FillDesk`).
        let placer = Placer::new(shared, id, Events::Delegate);
        let found = lock_read(&shared.map).locate(index, last);
        let Some(m) = found else {
            end = last; // unmapped: this page has nothing to place
            continue;
        };
        let flow = match placer.arrived_block(&m, start, end, scratch) {
            Ok(flow) => flow,
            // A failure here (the source's, or a placement's) is not fatal: the block is
            // left to the faults, which meet it again if it persists, and only they decide
            // under the error policy (unlike a fault's, this page may never be touched).
            Err(Stop::Failed(_)) => Flow::Done,
            Err(stop) => return Err(stop),
        };
        match flow {
            // The start of the block may lie in another mapping (after an `mremap`).
            Flow::Done => end = start.max(m.first_page),
            // An event is pending (a worker reads it), or was just applied: try again.
            Flow::ReadEvents | Flow::Restart => std::thread::yield_now(),
        }
    }
    Ok(())
}
