//! `ServerBuilder::no_discards`: a descriptor made without `EVENT_REMOVE` (by another process,
//! e.g. Firecracker before 1.12 when the VM has no balloon) is refused by default, and served
//! when the owner states that nothing discards pages — on every memory type, every byte.

mod support;

use std::sync::Arc;

use support::serve::{mismatches, snapshot};
use support::{uffd_for, MemoryType, Region};
use userfaultfd::serve::{Memory, Region as Served, Server};
use userfaultfd::{FeatureFlags, RegisterMode};

#[test]
fn a_descriptor_without_remove_is_served_when_nothing_discards() {
    for memory in MemoryType::ALL {
        let pages = if memory == MemoryType::Hugetlb { 4 } else { 64 };
        let Some(region) = Region::new(memory, pages) else {
            continue;
        };
        // Only what the memory type needs: no EVENT_REMOVE.
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        assert!(!uffd.features().contains(FeatureFlags::EVENT_REMOVE));
        let bytes = snapshot(pages, memory.page_size());
        let mut builder = Server::builder();
        builder
            .region(Served::new(region.addr(), region.len()).page_size(memory.page_size()))
            .fault_around(0);
        // Refused by default: pages discarded later would be refilled with stale contents.
        let again = uffd.try_clone().unwrap();
        // SAFETY: the region is our test mapping, holding no Rust object.
        let e = match unsafe { builder.start(again, Arc::new(Memory::new(bytes.clone()))) } {
            Ok(_) => panic!("a descriptor without EVENT_REMOVE is refused by default"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("no_discards(true)"), "{e}");
        builder.no_discards(true);
        // SAFETY: as above.
        let server = unsafe { builder.start(uffd, Arc::new(Memory::new(bytes.clone()))) }
            .expect("served with no_discards(true)");
        assert_eq!(
            mismatches(&region, &bytes, 0..pages),
            Vec::<usize>::new(),
            "{memory:?}"
        );
        let finished = server.stop();
        finished.outcome.expect("the server ended cleanly");
        assert_eq!(finished.stats.faults, pages as u64, "{memory:?}");
    }
}
