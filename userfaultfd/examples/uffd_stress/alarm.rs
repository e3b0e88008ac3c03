//! Every ten seconds (`SIGALRM`), the next background copy that succeeds is repeated through
//! the alias view and must fail with `EEXIST`: the kernel must refuse to populate a page
//! twice. The first copy of the run is checked too.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

const INTERVAL_SECS: libc::c_uint = 10;

static CHECK_EEXIST: AtomicBool = AtomicBool::new(true);

extern "C" fn on_alarm(_: libc::c_int) {
    CHECK_EEXIST.store(true, Ordering::Relaxed);
    // SAFETY: alarm is async-signal-safe and touches no memory of ours.
    unsafe { libc::alarm(INTERVAL_SECS) };
}

/// Installs the handler (with `SA_RESTART`: blocking reads continue, `poll` returns `EINTR`)
/// and starts the timer.
pub fn arm() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, completed below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler only stores to an atomic and calls alarm, both async-signal-safe;
    // nothing else in this program handles SIGALRM.
    if unsafe { libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: alarm only schedules the signal.
    unsafe { libc::alarm(INTERVAL_SECS) };
    Ok(())
}

/// Whether this successful copy is the one to repeat (clears the request).
#[inline]
pub fn take_eexist_check() -> bool {
    CHECK_EEXIST.load(Ordering::Relaxed) && CHECK_EEXIST.swap(false, Ordering::Relaxed)
}
