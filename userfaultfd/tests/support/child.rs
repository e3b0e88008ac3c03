//! Running a closure in a forked child process, for what would kill or change the test
//! process: an access that raises `SIGBUS`, dropping privileges, a fork seen by a userfaultfd.
//!
//! The child runs only the closure, then `_exit`s: it never returns into the test harness.
//! It reports through a pipe (the closure's progress notes and its error), and the parent
//! waits with a timeout, killing a child that hangs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::TIMEOUT;

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this status (0: the closure returned `Ok`).
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

/// What a child did: how it ended and what it wrote to its report pipe.
#[derive(Debug)]
pub struct ChildOutcome {
    /// How it ended.
    pub exit: ChildExit,
    /// Its notes (see [`Reporter::note`]) and, on failure, its error, one per line.
    pub report: String,
}

impl ChildOutcome {
    /// Panics unless the closure returned `Ok` in the child.
    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(
            self.exit,
            ChildExit::Exited(0),
            "child failed; its report:\n{}",
            self.report
        );
    }

    /// Panics unless the child was killed by `signal`.
    #[track_caller]
    pub fn assert_killed_by(&self, signal: i32) {
        assert_eq!(
            self.exit,
            ChildExit::Signaled(signal),
            "child should have been killed by signal {signal}; its report:\n{}",
            self.report
        );
    }
}

/// The child's end of the report pipe.
pub struct Reporter(RawFd);

impl Reporter {
    /// Writes a line to the parent (with `write(2)`: no lock, no buffering, so a line written
    /// right before the child is killed still arrives).
    pub fn note(&self, line: &str) {
        let text = format!("{line}\n");
        // SAFETY: writes `text`'s bytes to our pipe; a short or failed write only loses a note.
        unsafe { libc::write(self.0, text.as_ptr().cast(), text.len()) };
    }
}

/// Forks; the child runs `f` and `_exit`s with 0 if it returns `Ok`, 1 (after reporting the
/// error or panic message) otherwise. The parent waits up to [`TIMEOUT`] for it.
#[track_caller]
pub fn run_in_child(f: impl FnOnce(&Reporter) -> Result<(), String>) -> ChildOutcome {
    spawn_child(f).wait()
}

/// A child process started by [`spawn_child`], still running.
pub struct RunningChild {
    pid: libc::pid_t,
    report: OwnedFd,
}

impl RunningChild {
    /// The child's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits up to [`TIMEOUT`] for the child to end (killing it then), and collects its
    /// report.
    #[track_caller]
    pub fn wait(self) -> ChildOutcome {
        let exit = wait_child(self.pid);
        ChildOutcome {
            exit,
            report: drain(&self.report),
        }
    }

    /// Waits up to `timeout` for the child to end; `None` if it did not (it is then killed
    /// and reaped), for callers that report a hang instead of failing at once.
    pub fn wait_within(self, timeout: Duration) -> Option<ChildOutcome> {
        let exit = try_wait_child(self.pid, timeout)?;
        Some(ChildOutcome {
            exit,
            report: drain(&self.report),
        })
    }
}

/// As [`run_in_child`], but returns at once: the parent does something while the child runs,
/// then calls [`RunningChild::wait`].
pub fn spawn_child(f: impl FnOnce(&Reporter) -> Result<(), String>) -> RunningChild {
    let (read_end, write_end) = pipe();
    // SAFETY: the child only runs `f` and then `_exit`s; it never returns into the harness.
    // The tests' children use allocation and std I/O, which glibc keeps usable after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(read_end);
        let reporter = Reporter(write_end.as_raw_fd());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&reporter)));
        let status = match result {
            Ok(Ok(())) => 0,
            Ok(Err(message)) => {
                reporter.note(&format!("error: {message}"));
                1
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                reporter.note(&format!("panic: {message}"));
                1
            }
        };
        // SAFETY: ends the child at once, without running the harness's exit handlers.
        unsafe { libc::_exit(status) };
    }
    drop(write_end);
    RunningChild {
        pid,
        report: read_end,
    }
}

/// Waits for `pid` to end (polling, so that a concurrent fork elsewhere in the test process
/// holding our pipe cannot delay us); kills it after [`TIMEOUT`].
#[track_caller]
pub fn wait_child(pid: libc::pid_t) -> ChildExit {
    match try_wait_child(pid, TIMEOUT) {
        Some(exit) => exit,
        None => panic!("child process {pid} did not finish within {TIMEOUT:?}"),
    }
}

/// Waits up to `timeout` for `pid` to end; `None` (after killing and reaping it) if it did
/// not.
fn try_wait_child(pid: libc::pid_t, timeout: Duration) -> Option<ChildExit> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Some(ChildExit::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Some(ChildExit::Signaled(libc::WTERMSIG(status)));
            }
            continue; // stopped or continued: keep waiting
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Everything the child wrote (it has exited: what it wrote is in the pipe).
fn drain(read_end: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into `buf`, which is writable for its length.
        let n = unsafe { libc::read(read_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break; // EOF, or EAGAIN: a concurrent fork holds the write end, but we have it all
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}
