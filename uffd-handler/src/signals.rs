//! SIGTERM and SIGINT, received as data (`signalfd`) instead of handlers: blocked in every
//! thread from the start (the page server's workers inherit the mask), read by the main
//! thread where it waits, so that stopping is an ordinary step (stop the server, print the
//! statistics, exit 0).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The signals that stop the handler.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// A signalfd for the stop signals.
pub struct Signals(OwnedFd);

impl Signals {
    /// Blocks the stop signals in this thread (call before any other thread starts: threads
    /// inherit the mask) and opens a signalfd for them.
    pub fn block() -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in STOP_SIGNALS {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: `set` is initialised; no old mask is asked for.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor only we own.
        Ok(Signals(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The pending stop signal, if any (consumed).
    fn take(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `len` bytes.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                len,
            )
        };
        (n as usize == len).then_some(info.ssi_signo as i32)
    }
}

/// What ended a [`wait`].
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// One of the descriptors is readable (or hung up).
    Ready,
    /// A stop signal arrived (its number).
    Signal(i32),
    /// The deadline passed.
    Timeout,
}

/// Waits until one of `fds` is readable, a stop signal arrives, or `deadline` passes.
pub fn wait(fds: &[RawFd], signals: &Signals, deadline: Option<Instant>) -> Woken {
    let mut pollfds: Vec<libc::pollfd> = std::iter::once(signals.0.as_raw_fd())
        .chain(fds.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Woken::Timeout;
                }
                // Rounded up, so that the deadline has passed when poll times out.
                left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1
            }
        };
        // SAFETY: `pollfds` is a live array of as many pollfds as passed.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        if pollfds[0].revents != 0 {
            if let Some(s) = signals.take() {
                return Woken::Signal(s);
            }
        }
        if pollfds[1..].iter().any(|p| p.revents != 0) {
            return Woken::Ready;
        }
    }
}
