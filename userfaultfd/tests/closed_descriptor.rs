//! Closing the userfaultfd while threads are blocked on faults releases them: the kernel wakes
//! every waiter and the faults are then handled as if the range were not registered (fresh
//! zero-filled pages). A handler that exits must not leave its process hung.

mod support;

use std::sync::{mpsc, Arc};

use support::{join_timeout, spawn_named, uffd_for, wait_blocked_in_userfault, MemoryType, Region};
use userfaultfd::{FeatureFlags, RegisterMode};

#[test]
fn closing_the_descriptor_releases_blocked_threads() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::empty()) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let region = Arc::new(region);
        uffd.register(region.addr(), region.len()).unwrap();

        let readers: Vec<_> = (0..region.pages())
            .map(|i| {
                let region = Arc::clone(&region);
                let (tid_tx, tid_rx) = mpsc::channel();
                let reader = spawn_named("faulting", move || {
                    tid_tx.send(support::gettid()).unwrap();
                    region.read_page(i)
                });
                (tid_rx.recv().unwrap(), reader)
            })
            .collect();
        for (tid, _) in &readers {
            wait_blocked_in_userfault(*tid);
        }
        drop(uffd);
        for (_, reader) in readers {
            let page = join_timeout(reader);
            assert!(
                page.iter().all(|&b| b == 0),
                "{memory:?}: a released fault reads zeros"
            );
        }
    }
}
