//! Threads with timeouts, so that a bug fails a test instead of hanging CI.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use userfaultfd::{Event, Uffd};

/// How long any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A named thread whose result can be awaited with [`join_timeout`].
pub struct Waitable<T> {
    done: mpsc::Receiver<()>,
    handle: JoinHandle<T>,
}

/// Spawns `f` on a named thread.
pub fn spawn_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Waitable<T> {
    let (tx, done) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let result = f();
            let _ = tx.send(());
            result
        })
        .expect("spawning a test thread");
    Waitable { done, handle }
}

impl<T> Waitable<T> {
    /// Whether the thread has finished (then [`join_timeout`] returns at once).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// The thread's name.
    pub fn name(&self) -> String {
        self.handle.thread().name().unwrap_or("?").to_string()
    }
}

/// Waits for the thread to finish; panics (naming it) after [`TIMEOUT`], or if it panicked.
#[track_caller]
pub fn join_timeout<T>(w: Waitable<T>) -> T {
    let name = w.handle.thread().name().unwrap_or("?").to_string();
    match w.done.recv_timeout(TIMEOUT) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match w.handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("thread {name:?} did not finish within {TIMEOUT:?}")
        }
    }
}

/// Waits up to [`TIMEOUT`] for an event on a non-blocking descriptor and reads it; panics on
/// timeout, so a missing event fails the test instead of hanging it.
#[track_caller]
pub fn wait_event(uffd: &Uffd) -> Event {
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(event) = uffd.read_event().expect("read_event") {
            return event;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no userfaultfd event within {TIMEOUT:?}");
        // SAFETY: `pfd` is one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        assert!(
            r >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR),
            "poll: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            pfd.revents & libc::POLLERR,
            0,
            "POLLERR: is the descriptor blocking?"
        );
    }
}

/// Waits up to [`TIMEOUT`] until an event is pending on a non-blocking descriptor, without
/// reading it (so that a non-cooperative event stays pending).
#[track_caller]
pub fn wait_readable(uffd: &Uffd) {
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, TIMEOUT.as_millis() as libc::c_int) };
    assert_eq!(r, 1, "no event pending within {TIMEOUT:?}");
    assert_eq!(
        pfd.revents & libc::POLLERR,
        0,
        "POLLERR: is the descriptor blocking?"
    );
}

/// Waits until `condition` holds, polling every millisecond; fails the test after [`TIMEOUT`].
/// For effects a thread makes after the one the test saw (the page server reports a page
/// placed after the copy that already woke the faulting thread).
#[track_caller]
pub fn wait_until(condition: impl FnMut() -> bool, what: &str) {
    wait_until_showing(condition, || format!("for {what}"));
}

/// As [`wait_until`], the failure saying what `state` shows then (what was seen instead).
#[track_caller]
pub fn wait_until_showing(mut condition: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {TIMEOUT:?}: {}", state());
        thread::sleep(Duration::from_millis(1));
    }
}
