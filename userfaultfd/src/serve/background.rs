//! The background fill: the rest of the regions, block by block, at the lowest priority.

use std::sync::atomic::Ordering;

use super::place::{Events, Flow, Placer};
use super::shared::{lock_read, Shared, Stop};

/// The background fill: places every block not yet placed, region by region, at the lowest
/// priority. It fetches, but hands its placements to a thread at the workers' priority,
/// which makes them under the lock (see `FillDesk`).
pub(crate) fn background(shared: &Shared, id: usize) -> Result<(), Stop> {
    // SAFETY: setpriority on this thread only (Linux: a thread id names one thread).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
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
