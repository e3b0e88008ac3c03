//! Knowing, without guessing at timings, that a thread is blocked in a userfault: the kernel
//! names the function a sleeping task waits in (`/proc/self/task/<tid>/wchan`), and a thread
//! waiting for a userfaultfd handler sleeps in `handle_userfault`.

use std::time::{Duration, Instant};

use super::TIMEOUT;

/// Where thread `tid` of this process sleeps (`wchan`), or `None` if it has exited.
pub fn wchan(tid: libc::pid_t) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).ok()
}

/// Whether thread `tid` is blocked waiting for a userfaultfd to resolve its fault.
pub fn blocked_in_userfault(tid: libc::pid_t) -> bool {
    wchan(tid).is_some_and(|w| w == "handle_userfault")
}

/// Waits up to [`TIMEOUT`] until thread `tid` is blocked in a userfault.
#[track_caller]
pub fn wait_blocked_in_userfault(tid: libc::pid_t) {
    let deadline = Instant::now() + TIMEOUT;
    while !blocked_in_userfault(tid) {
        assert!(
            Instant::now() < deadline,
            "thread {tid} did not block in a userfault within {TIMEOUT:?} (wchan {:?})",
            wchan(tid)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The calling thread's id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no memory effects.
    unsafe { libc::gettid() }
}
