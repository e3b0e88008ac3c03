//! `copy` serves missing faults with exactly the bytes placed, on every memory type.

mod support;

use std::sync::Arc;

use support::{join_timeout, spawn_named, uffd_for, wait_event, MemoryType, Region};
use userfaultfd::{Event, FaultKind, FeatureFlags, ReadWrite, RegisterMode};

/// A page of a recognisable pattern: byte `j` of page `i` is `(i * 7 + j) as u8`.
fn pattern(page: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (page * 7 + j) as u8).collect()
}

#[test]
fn copy_serves_missing_faults_on_every_memory_type() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::THREAD_ID) else {
            continue;
        };
        let Some(region) = Region::new(memory, 4) else {
            continue;
        };
        let region = Arc::new(region);
        uffd.register(region.addr(), region.len())
            .unwrap_or_else(|e| panic!("{memory:?}: {e}"));

        let reader = {
            let region = Arc::clone(&region);
            spawn_named("faulting", move || {
                // SAFETY: `gettid` has no memory effects.
                let tid = unsafe { libc::gettid() };
                let sums: Vec<u64> = (0..region.pages())
                    .map(|i| {
                        // SAFETY: the page is mapped; the read blocks until it is populated.
                        let page = unsafe {
                            std::slice::from_raw_parts(region.page(i), region.page_size())
                        };
                        page.iter().map(|&b| b as u64).sum()
                    })
                    .collect();
                (tid, sums)
            })
        };

        let mut faults = 0;
        while faults < region.pages() {
            let event = wait_event(&uffd);
            let Event::Pagefault {
                kind,
                rw,
                addr,
                thread_id,
            } = event
            else {
                panic!("{memory:?}: unexpected event {event:?}");
            };
            assert_eq!(kind, FaultKind::Missing);
            assert_eq!(rw, ReadWrite::Read);
            assert!(
                thread_id.is_some(),
                "THREAD_ID enabled: the id must be reported"
            );
            let index = (addr as usize - region.ptr() as usize) / region.page_size();
            let data = pattern(index, region.page_size());
            // SAFETY: the destination is a missing page of our test mapping.
            let done = unsafe { uffd.copy(data.as_ptr().cast(), addr, data.len(), true) };
            assert_eq!(done.unwrap(), region.page_size());
            faults += 1;
        }
        let (_tid, sums) = join_timeout(reader);
        for (i, sum) in sums.iter().enumerate() {
            let expected: u64 = pattern(i, region.page_size())
                .iter()
                .map(|&b| b as u64)
                .sum();
            assert_eq!(*sum, expected, "{memory:?} page {i}");
        }
        // Every byte, not only the sums.
        for i in 0..region.pages() {
            // SAFETY: the page is populated now.
            let page = unsafe { std::slice::from_raw_parts(region.page(i), region.page_size()) };
            assert!(
                page == pattern(i, region.page_size()),
                "{memory:?} page {i} differs"
            );
        }
    }
}
