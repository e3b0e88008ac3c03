//! SIGBUS mode (`FeatureFlags::SIGBUS`): an access to a missing page raises SIGBUS in the
//! faulting thread and produces no event. Each case runs in a child process: one dies of the
//! signal, the other serves the fault from its signal handler, as the kernel selftest does.

mod support;

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use support::{kernel_lacks, new_uffd, pattern, run_in_child, MemoryType, Region};
use userfaultfd::{FeatureFlags, RegisterMode, Uffd};

/// The features for SIGBUS mode on `memory`, or `None` (skip) when the kernel lacks them.
fn sigbus_features(memory: MemoryType) -> Option<FeatureFlags> {
    let features = memory.features_for(RegisterMode::MISSING) | FeatureFlags::SIGBUS;
    kernel_lacks(features).is_none().then_some(features)
}

#[test]
fn an_access_raises_sigbus() {
    for memory in MemoryType::ALL {
        let Some(features) = sigbus_features(memory) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let outcome = run_in_child(|report| {
            let uffd = new_uffd(features).map_err(|e| e.to_string())?;
            uffd.register(region.addr(), region.len())
                .map_err(|e| e.to_string())?;
            report.note("touching the missing page");
            let _ = region.read_page(0);
            Err("the access went on without SIGBUS".into())
        });
        outcome.assert_killed_by(libc::SIGBUS);
        assert!(
            outcome.report.contains("touching the missing page"),
            "{memory:?}: died before the access:\n{}",
            outcome.report
        );
    }
}

// What the child's SIGBUS handler needs; set by the child before it touches the page.
static HANDLER_UFFD: AtomicPtr<Uffd> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_SOURCE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_ADDR: AtomicUsize = AtomicUsize::new(0);

/// Serves the fault that raised SIGBUS by copying the source page, then returns: the access
/// is retried and succeeds. Only async-signal-safe work: atomics and one ioctl.
extern "C" fn serve_fault(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let count = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    if count > 3 {
        // The copy does not resolve the fault: stop instead of looping.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(3) };
    }
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    SIGNAL_ADDR.store(addr, Ordering::SeqCst);
    let page_size = HANDLER_PAGE_SIZE.load(Ordering::SeqCst);
    let page = addr & !(page_size - 1);
    // SAFETY: the child leaked the descriptor, so it lives for the rest of the process.
    let uffd = unsafe { &*HANDLER_UFFD.load(Ordering::SeqCst) };
    let src = HANDLER_SOURCE.load(Ordering::SeqCst);
    // SAFETY: `page` is the missing page of the child's test mapping; `src` is a page of
    // bytes. The outcome is checked by the child after the access.
    let _ = unsafe { uffd.copy(src.cast(), page as *mut libc::c_void, page_size, true) };
}

#[test]
fn a_signal_handler_serves_the_fault_and_no_event_is_queued() {
    for memory in MemoryType::ALL {
        let Some(features) = sigbus_features(memory) else {
            continue;
        };
        let Some(region) = Region::new(memory, 1) else {
            continue;
        };
        let outcome = run_in_child(|_| {
            let ps = region.page_size();
            let uffd: &'static Uffd =
                Box::leak(Box::new(new_uffd(features).map_err(|e| e.to_string())?));
            uffd.register(region.addr(), region.len())
                .map_err(|e| e.to_string())?;
            let data: &'static [u8] = pattern(6, ps).leak();
            HANDLER_UFFD.store(uffd as *const Uffd as *mut Uffd, Ordering::SeqCst);
            HANDLER_SOURCE.store(data.as_ptr() as *mut u8, Ordering::SeqCst);
            HANDLER_PAGE_SIZE.store(ps, Ordering::SeqCst);
            // SAFETY: installs a SA_SIGINFO handler in this child process only.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = serve_fault as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                    return Err("sigaction failed".into());
                }
            }
            // SAFETY: offset 100 of the page; the first access raises SIGBUS, which the
            // handler resolves.
            let byte = unsafe { region.ptr().add(100).read_volatile() };
            let signals = SIGNALS.load(Ordering::SeqCst);
            if signals != 1 {
                return Err(format!("{signals} SIGBUS for one access"));
            }
            let at = SIGNAL_ADDR.load(Ordering::SeqCst);
            if at != region.ptr() as usize + 100 {
                return Err(format!(
                    "SIGBUS at {at:#x}, access at {:p}+100",
                    region.ptr()
                ));
            }
            if byte != data[100] || region.read_page(0) != data {
                return Err("the page does not hold the handler's bytes".into());
            }
            match uffd.read_event() {
                Ok(None) => Ok(()),
                other => Err(format!("SIGBUS mode queued an event: {other:?}")),
            }
        });
        outcome.assert_success();
    }
}
