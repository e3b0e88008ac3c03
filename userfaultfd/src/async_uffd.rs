//! [`AsyncUffd`]: reading events inside a tokio runtime (cargo feature `tokio`).

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::{Error, Event, EventBuffer, Events, Rejected, Result, Uffd};

/// A [`Uffd`] whose events are read with `.await`, without blocking a runtime thread.
///
/// The descriptor is registered with tokio's reactor ([`AsyncFd`]); a read waits for
/// readiness, then reads without blocking, and clears the readiness when the read finds
/// nothing (`EAGAIN`), so the next `.await` waits for the kernel again.
///
/// The descriptor must be non-blocking (`UffdBuilder::non_blocking(true)`): the kernel reports
/// `POLLERR` to `poll`/`epoll` on a blocking userfaultfd, so readiness could never be awaited.
/// [`AsyncUffd::new`] checks this rather than changing the flag, because the flag belongs to
/// the open file, which clones ([`Uffd::try_clone`]) share.
///
/// # Cancellation safety
///
/// [`read_event`](Self::read_event) and [`read_events`](Self::read_events) are cancellation
/// safe: an event is read from the kernel only in the same poll that returns it, so dropping
/// the future (in `select!`, on a timeout) never loses an event.
///
/// ```no_run
/// # async fn serve() -> userfaultfd::Result<()> {
/// use userfaultfd::{AsyncUffd, Event, UffdBuilder};
/// let uffd = AsyncUffd::new(UffdBuilder::new().non_blocking(true).create()?)?;
/// // SAFETY: sysconf has no preconditions.
/// let page = vec![0u8; unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize];
/// loop {
///     if let Event::Pagefault { addr, .. } = uffd.read_event().await? {
///         // SAFETY: `addr` is in a registered mapping that holds no Rust object.
///         unsafe { uffd.get_ref().copy(page.as_ptr().cast(), addr, page.len(), true)? };
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncUffd {
    fd: AsyncFd<Uffd>,
}

impl AsyncUffd {
    /// Registers a non-blocking `uffd` with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// `uffd` is given back with the error (as tokio's [`AsyncFd::register`] does), so a
    /// refusal does not close it: [`Error::InvalidArgument`] if it is blocking;
    /// [`Error::Io`] naming the operation if `fcntl(F_GETFL)` fails or the reactor refuses
    /// the descriptor. `?` turns the [`Rejected`] into an [`Error`], closing the descriptor.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (tokio's [`AsyncFd::register`] panics there).
    pub fn new(uffd: Uffd) -> std::result::Result<AsyncUffd, Rejected<Uffd>> {
        // SAFETY: F_GETFL reads the descriptor's status flags.
        let flags = unsafe { libc::fcntl(uffd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            let source = io::Error::last_os_error();
            return Err(Rejected::new(
                uffd,
                Error::Io {
                    operation: "fcntl(F_GETFL) on the userfaultfd (AsyncUffd::new)",
                    source,
                },
            ));
        }
        if flags & libc::O_NONBLOCK == 0 {
            return Err(Rejected::new(
                uffd,
                Error::InvalidArgument {
                    operation: "AsyncUffd::new",
                    reason: "the userfaultfd is blocking, and epoll reports POLLERR for a \
                             blocking userfaultfd: create it with UffdBuilder::non_blocking(true)",
                },
            ));
        }
        // SAFETY: `Uffd` owns its descriptor (an `OwnedFd`): it stays open, refers to the same
        // file, and `as_raw_fd` returns the same number until the `AsyncFd` gives it back
        // (`into_inner`) or drops it. `AsyncUffd` never hands out `&mut Uffd`.
        match unsafe { AsyncFd::register_with_interest(uffd, Interest::READABLE) } {
            Ok(fd) => Ok(AsyncUffd { fd }),
            Err(e) => {
                let (uffd, source) = e.into_parts();
                Err(Rejected::new(
                    uffd,
                    Error::Io {
                        operation: "registering the userfaultfd with the tokio reactor \
                                    (AsyncUffd::new)",
                        source,
                    },
                ))
            }
        }
    }

    /// The descriptor, for the ioctls that resolve faults (`copy`, `wake`, ...).
    pub fn get_ref(&self) -> &Uffd {
        self.fd.get_ref()
    }

    /// Deregisters from the reactor and returns the descriptor.
    pub fn into_inner(self) -> Uffd {
        self.fd.into_inner()
    }

    /// Waits for and reads one event.
    ///
    /// # Errors
    ///
    /// As [`Uffd::read_event`].
    pub async fn read_event(&self) -> Result<Event> {
        loop {
            let mut guard = self.fd.readable().await.map_err(reactor_error)?;
            match guard.get_inner().read_event()? {
                Some(event) => return Ok(event),
                None => guard.clear_ready(),
            }
        }
    }

    /// Waits until at least one event is pending, and reads up to `buf.capacity()` events.
    ///
    /// # Errors
    ///
    /// As [`Uffd::read_events`].
    pub async fn read_events<'a>(&self, buf: &'a mut EventBuffer) -> Result<Events<'a>> {
        let bytes = loop {
            let mut guard = self.fd.readable().await.map_err(reactor_error)?;
            match guard.get_inner().fill(buf)? {
                0 => guard.clear_ready(),
                n => break n,
            }
        };
        // SAFETY: `fill` read `bytes` (whole messages, at most the capacity) just now.
        Ok(unsafe { buf.events(bytes, self.get_ref().features()) })
    }
}

/// An error of the reactor while waiting for readiness (for example, its runtime was shut
/// down): not a read of the userfaultfd, which `Error::SystemError` is.
fn reactor_error(source: io::Error) -> Error {
    Error::Io {
        operation: "waiting for the userfaultfd to become readable (tokio reactor)",
        source,
    }
}
