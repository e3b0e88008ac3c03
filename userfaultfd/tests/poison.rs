//! `poison` (Linux 6.6): a poisoned page raises SIGBUS when touched, also in a thread that
//! was blocked on it; the other pages are unaffected; a populated page cannot be poisoned.
//! The accesses run in child processes, which die of the SIGBUS.

mod support;

use std::sync::Arc;

use support::{kernel_lacks, new_uffd, pattern, run_in_child, spawn_named, uffd_for, wait_event};
use support::{MemoryType, Region};
use userfaultfd::{Errno, Error, Event, FeatureFlags, IoctlFlags, RegisterMode};

/// The features to poison `memory`, or `None` (skip) when the kernel lacks them.
fn poison_features(memory: MemoryType) -> Option<FeatureFlags> {
    let features = memory.features_for(RegisterMode::MISSING) | FeatureFlags::POISON;
    kernel_lacks(features).is_none().then_some(features)
}

#[test]
fn touching_a_poisoned_page_raises_sigbus() {
    for memory in MemoryType::ALL {
        let Some(features) = poison_features(memory) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let outcome = run_in_child(|report| {
            let uffd = new_uffd(features).map_err(|e| e.to_string())?;
            let ps = region.page_size();
            let ioctls = uffd
                .register(region.addr(), region.len())
                .map_err(|e| e.to_string())?;
            if !ioctls.contains(IoctlFlags::POISON) {
                return Err(format!("no POISON in {ioctls:?}"));
            }
            // Page 0 of the child's copy of the test mapping; nothing lives there.
            let poisoned = uffd.poison(region.addr(), ps, true);
            if poisoned.as_ref().ok() != Some(&ps) {
                return Err(format!("poison: {poisoned:?}"));
            }
            let data = pattern(1, ps);
            // SAFETY: page 1 of the test mapping.
            unsafe { uffd.copy(data.as_ptr().cast(), region.page(1).cast(), ps, true) }
                .map_err(|e| e.to_string())?;
            if region.read_page(1) != data {
                return Err("page 1 does not hold the copied bytes".into());
            }
            report.note("page 1 intact; touching the poisoned page 0");
            let _ = region.read_page(0);
            Err("read a poisoned page without SIGBUS".into())
        });
        outcome.assert_killed_by(libc::SIGBUS);
        assert!(
            outcome.report.contains("touching the poisoned page 0"),
            "{memory:?}: died before the access:\n{}",
            outcome.report
        );
    }
}

/// A thread blocked on a missing page that is then poisoned (with wake) gets SIGBUS.
#[test]
fn poisoning_a_page_a_thread_waits_on_raises_sigbus_in_it() {
    for memory in MemoryType::ALL {
        let Some(features) = poison_features(memory) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let region = Arc::new(region);
        let outcome = run_in_child(|report| {
            let uffd = new_uffd(features).map_err(|e| e.to_string())?;
            let ps = region.page_size();
            uffd.register(region.addr(), region.len())
                .map_err(|e| e.to_string())?;
            let reader = {
                let region = Arc::clone(&region);
                spawn_named("reader", move || region.read_page(0))
            };
            let Event::Pagefault { addr, .. } = wait_event(&uffd) else {
                return Err("expected a page fault".into());
            };
            report.note("poisoning the page the reader waits on");
            // The page of the child's test mapping; only the reader touches it.
            uffd.poison(addr, ps, true).map_err(|e| e.to_string())?;
            let _ = support::join_timeout(reader);
            Err("the reader read a poisoned page without SIGBUS".into())
        });
        outcome.assert_killed_by(libc::SIGBUS);
        assert!(
            outcome.report.contains("poisoning the page"),
            "{memory:?}: died before poisoning:\n{}",
            outcome.report
        );
    }
}

#[test]
fn poisoning_a_populated_page_is_eexist() {
    for memory in MemoryType::ALL {
        let Some(uffd) = uffd_for(memory, RegisterMode::MISSING, FeatureFlags::POISON) else {
            continue;
        };
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let ps = region.page_size();
        // Not registered yet: the kernel refuses, nothing is poisoned.
        let result = uffd.poison(region.addr(), ps, true);
        assert!(
            matches!(result, Err(Error::PoisonFailed(Errno::ENOENT))),
            "{memory:?}: {result:?}"
        );
        uffd.register(region.addr(), region.len()).unwrap();
        let data = pattern(2, ps);
        // SAFETY: populates page 1 of our test mapping.
        unsafe { uffd.copy(data.as_ptr().cast(), region.page(1).cast(), ps, true) }.unwrap();
        // Page 1 is populated, which the kernel refuses: nothing is poisoned.
        let err = uffd.poison(region.page(1).cast(), ps, true).unwrap_err();
        assert!(
            matches!(err, Error::PoisonFailed(Errno::EEXIST)),
            "{memory:?}: {err:?}"
        );
        assert!(err.to_string().contains("UFFDIO_POISON"), "{err}");
        assert!(region.read_page(1) == data, "{memory:?}");
        // Rejected: unaligned.
        let result = uffd.poison(region.ptr().wrapping_add(1).cast(), ps, true);
        assert!(
            matches!(result, Err(Error::PoisonFailed(Errno::EINVAL))),
            "{memory:?}: {result:?}"
        );
    }
}
