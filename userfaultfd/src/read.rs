//! Reading events: [`Uffd::read_event`], [`Uffd::read_events`] and the [`EventBuffer`] they
//! fill. Nothing is allocated per event: messages are read into the caller's buffer (or the
//! stack) and decoded in place.

use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{syscall, Errno, Error, Event, FeatureFlags, Result, Uffd};
use userfaultfd_sys as sys;

const MSG_SIZE: usize = size_of::<sys::uffd_msg>();

/// A buffer that [`Uffd::read_events`] reads several messages into with one `read(2)`.
pub struct EventBuffer(Vec<sys::uffd_msg>);

impl EventBuffer {
    /// A buffer for up to `size` events (at least one: a buffer for none would make every
    /// read fail with `EINVAL`).
    pub fn new(size: usize) -> EventBuffer {
        EventBuffer(vec![sys::uffd_msg::default(); size.max(1)])
    }

    /// How many events one read can return.
    pub fn capacity(&self) -> usize {
        self.0.len()
    }

    /// The first `bytes / MSG_SIZE` messages, just read, as events decoded for `features`.
    ///
    /// Takes the byte count `read(2)` returned rather than a message count: the iterator's
    /// end is then `start + bytes`, with no division and multiplication by the message size
    /// in between (a few instructions per batch, measured by `ci/callgrind`).
    ///
    /// # Safety
    ///
    /// `bytes` is a multiple of the message size and at most the buffer's size, and the
    /// messages in it were just read from the kernel and are decoded once (a fork event's
    /// descriptor is adopted by whoever iterates it, or closed when `Events` is dropped).
    #[inline]
    pub(crate) unsafe fn events(&self, bytes: usize, features: FeatureFlags) -> Events<'_> {
        debug_assert!(bytes % MSG_SIZE == 0 && bytes <= std::mem::size_of_val(&self.0[..]));
        // SAFETY: the caller guarantees it; telling the compiler lets it compute the end of
        // the slice as `start + bytes`.
        unsafe { std::hint::assert_unchecked(bytes % MSG_SIZE == 0) };
        // SAFETY: `bytes / MSG_SIZE` messages were read into the buffer, and read(2) never
        // returns more bytes than asked for.
        let msgs = unsafe { self.0.get_unchecked(..bytes / MSG_SIZE) };
        Events {
            msgs: msgs.iter(),
            features,
        }
    }
}

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer")
            .field("capacity", &self.0.len())
            .finish()
    }
}

/// The events of one [`Uffd::read_events`] call, decoded as they are iterated.
///
/// Dropping it before the end closes the descriptors of the fork events not yet iterated,
/// so none leaks.
pub struct Events<'a> {
    msgs: std::slice::Iter<'a, sys::uffd_msg>,
    features: FeatureFlags,
}

impl Iterator for Events<'_> {
    type Item = Result<Event>;

    #[inline]
    fn next(&mut self) -> Option<Result<Event>> {
        let msg = self.msgs.next()?;
        // SAFETY: `msg` was just read from the kernel, and the iterator yields it once.
        Some(unsafe { Event::from_msg(msg, self.features) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.msgs.size_hint()
    }
}

impl ExactSizeIterator for Events<'_> {}

impl Drop for Events<'_> {
    #[inline]
    fn drop(&mut self) {
        // Handlers iterate every event, so there is usually nothing left: the check stays
        // inline, the closing loop does not.
        // The slice goes by value: a reference to the iterator would keep it in memory (its
        // position stored at every step) for the sake of this rare call.
        if self.msgs.len() != 0 {
            close_unread(self.msgs.as_slice());
        }
    }
}

/// Closes the descriptors of the fork events among `msgs`, read and not iterated. Looks at
/// the event codes only (a fork event is one whatever the descriptor's features): nothing is
/// decoded for messages nobody will see.
#[cold]
#[inline(never)]
fn close_unread(msgs: &[sys::uffd_msg]) {
    for msg in msgs {
        if msg.event != sys::UFFD_EVENT_FORK {
            continue;
        }
        // A negative number is no descriptor (`fork_descriptor` says so with an error,
        // ignored here: there is nothing to close).
        // SAFETY: the event code is a fork's.
        if let Ok(fd) = unsafe { crate::event::fork_descriptor(msg) } {
            // SAFETY: the kernel installed this descriptor for us and it was never handed
            // out; closing it is its only use.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

impl Uffd {
    /// Reads one event. Blocks until one is pending, unless the descriptor is non-blocking:
    /// then `Ok(None)` means none is pending.
    ///
    /// A read interrupted by a signal (`EINTR`) is retried. To stop a blocked reader, make the
    /// descriptor non-blocking and `poll(2)` it together with a wake-up descriptor.
    ///
    /// The `read(2)` is issued directly (on x86-64), not through the C library: it is not a
    /// `pthread_cancel(3)` cancellation point, and a failure's `errno` is in the returned
    /// error, not in the thread's `errno`. With the decoding inlined, a fault served by
    /// `copy` costs 25 user-space instructions, against 101 for the same loop in C over
    /// glibc (`ci/callgrind`; the table is in [`read_events`](Self::read_events)).
    ///
    /// # Errors
    ///
    /// [`Error::SystemError`] for a failed `read(2)`, [`Error::ReadEof`],
    /// [`Error::IncompleteMsg`], [`Error::UnrecognizedEvent`],
    /// [`Error::ForkWithoutDescriptor`].
    #[inline]
    pub fn read_event(&self) -> Result<Option<Event>> {
        // The hot path of every handler: one read of one message into the stack, no
        // zeroing, and the decoding inlined into the caller.
        let mut msg = MaybeUninit::<sys::uffd_msg>::uninit();
        loop {
            // SAFETY: `msg` is writable for MSG_SIZE bytes.
            let n = unsafe { syscall::read(self.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_SIZE) };
            if n == MSG_SIZE as isize {
                // SAFETY: the kernel wrote a whole message (any bytes are a valid `uffd_msg`),
                // which is decoded once.
                return unsafe { Event::from_msg(msg.assume_init_ref(), self.features()) }
                    .map(Some);
            }
            match read_outcome(n)? {
                ReadOutcome::Interrupted => continue,
                ReadOutcome::Messages(_) => return Ok(None),
            }
        }
    }

    /// Reads up to `buf.capacity()` events with one `read(2)`. Blocks until at least one is
    /// pending, unless the descriptor is non-blocking: then the iterator may be empty.
    ///
    /// Decoding happens as the iterator advances; each item is an [`Event`], or the
    /// [`Error::UnrecognizedEvent`] or [`Error::ForkWithoutDescriptor`] of one message.
    ///
    /// Which to use, in user-space instructions per served fault (the handler thread,
    /// counted by callgrind with `ci/callgrind`: the same minimal handler on this crate, each
    /// fault resolved by one 4 KiB `copy` or one `zeropage`):
    ///
    /// | reading | faulting threads | events per read (`copy`, `zeropage`) | `copy` | `zeropage` |
    /// |---|---|---|---|---|
    /// | `read_event` | 1, 4 or 8 | 1 | 25 | 24 |
    /// | `read_events`, buffer of 64 | 1 | 1 | 43 | 40 |
    /// | `read_events`, buffer of 64 | 4 | 3.0, 2.1 | 28 | 28 |
    /// | `read_events`, buffer of 64 | 8 | 5.0, 4.9 | 25 | 24 |
    ///
    /// (The same loop in C over glibc's `read` and `ioctl`: 101 and 120 for the first two
    /// rows with `copy`. With several faulting threads, how many events a read finds depends
    /// on scheduling.)
    ///
    /// Decision: use `read_event` where faults come one at a time, `read_events` where they
    /// come together, and do not expect a batch to save user-space instructions. Once a
    /// message is read, serving it from a batch costs about 20 instructions (test the code,
    /// take the address, resolve, advance) against 25 for a whole `read_event` round: the
    /// read itself costs this crate only the few instructions around the `syscall`
    /// instruction, so a batch has little to share. What a batch adds per `read(2)` (testing
    /// the byte count, finding the end, the handler's loop around its loop) makes a fault at
    /// one event per read cost 43, 18 more than `read_event`: about what C's own batch loop
    /// adds over its single reads (120 against 101). A batch draws level at about five events
    /// per read (25 against 25 at 5.0 with `copy`, 24 against 24 at 4.9 with `zeropage`).
    /// Its gain is elsewhere: one system call (a kernel entry and exit, which these counts
    /// leave out) for several faults. Nothing is allocated either way.
    ///
    /// The figures are for a loop in which nothing can unwind while it holds an event or a
    /// batch (the benchmark ends the process on an error, as the C handler does). Anything
    /// that may unwind there (an `unwrap()`, a fallback arm that panics, a call into code the
    /// compiler cannot see, such as formatting or logging an error) makes the compiler keep
    /// the events, and the iterator's position, for the cleanup that would drop them:
    /// measured with `unwrap()` of each result and a fallback arm that prints the event, 28
    /// for `read_event` and 43 for a batch; with a loop that reads the error it fails on, 39
    /// and 55 to 71.
    ///
    /// # Errors
    ///
    /// As [`read_event`](Self::read_event).
    #[inline]
    pub fn read_events<'a>(&self, buf: &'a mut EventBuffer) -> Result<Events<'a>> {
        let bytes = self.fill(buf)?;
        // SAFETY: `fill` read `bytes` (whole messages, at most the capacity) just now.
        Ok(unsafe { buf.events(bytes, self.features()) })
    }

    /// Reads whole messages into `buf`; returns how many bytes (a multiple of the message
    /// size; 0: none pending, non-blocking).
    #[inline]
    pub(crate) fn fill(&self, buf: &mut EventBuffer) -> Result<usize> {
        // As in `read_event`: the common outcome (whole messages) is decided inline, and
        // everything else (EINTR, EAGAIN, errors) is left to a function out of line.
        let msgs = buf.0.as_mut_slice();
        loop {
            // SAFETY: `msgs` is writable for its whole size, and `uffd_msg` is valid for any
            // bytes the kernel writes.
            let n = unsafe {
                syscall::read(
                    self.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(msgs),
                )
            };
            if n > 0 && n as usize % MSG_SIZE == 0 {
                return Ok(n as usize);
            }
            match read_outcome(n)? {
                ReadOutcome::Interrupted => continue,
                ReadOutcome::Messages(count) => return Ok(count * MSG_SIZE),
            }
        }
    }
}

/// What a `read(2)` of messages returned, other than an error.
enum ReadOutcome {
    /// `EINTR`: read again.
    Interrupted,
    /// This many whole messages (0: none pending on a non-blocking descriptor).
    Messages(usize),
}

/// Interprets the return value of a `read(2)` of messages (`-errno` on failure).
#[cold]
#[inline(never)]
fn read_outcome(n: isize) -> Result<ReadOutcome> {
    match n {
        n if n < 0 => match Errno::from_raw(-n as i32) {
            Errno::EINTR => Ok(ReadOutcome::Interrupted),
            Errno::EAGAIN => Ok(ReadOutcome::Messages(0)),
            errno => Err(Error::SystemError(errno)),
        },
        0 => Err(Error::ReadEof),
        n if n as usize % MSG_SIZE != 0 => Err(Error::IncompleteMsg {
            read: n as usize % MSG_SIZE,
            expected: MSG_SIZE,
        }),
        n => Ok(ReadOutcome::Messages(n as usize / MSG_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::RawFd;

    /// A fork message as the kernel writes it, with descriptor `fd`.
    fn fork_msg(fd: RawFd) -> sys::uffd_msg {
        let mut msg = sys::uffd_msg {
            event: sys::UFFD_EVENT_FORK,
            ..Default::default()
        };
        msg.arg.fork.ufd = fd as u32;
        msg
    }

    #[test]
    fn dropping_unread_fork_events_closes_their_descriptors_and_skips_negative_ones() {
        // The descriptor handed over is a pipe's write end: once it is closed, reading the
        // read end gives end of file (whatever reuses the number meanwhile); while it is
        // open, the non-blocking read fails with EAGAIN.
        let mut ends = [0; 2];
        // SAFETY: `pipe2` writes two descriptors into `ends`.
        let made = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(made, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: the read end is ours, owned once.
        let read_end = unsafe { OwnedFd::from_raw_fd(ends[0]) };
        let mut buf = EventBuffer::new(3);
        buf.0[0] = fork_msg(-1);
        buf.0[1] = fork_msg(ends[1]);
        buf.0[2] = fork_msg(i32::MIN);
        // SAFETY: three whole messages; the write end is ours to hand over, and the negative
        // ones are what this test is about.
        let events = unsafe { buf.events(3 * MSG_SIZE, FeatureFlags::empty()) };
        drop(events);
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(read_end.as_raw_fd(), (&raw mut byte).cast(), 1) };
        assert_eq!(n, 0, "the unread fork event's descriptor was not closed");
    }

    #[test]
    fn a_fork_event_without_a_descriptor_is_an_error() {
        let mut buf = EventBuffer::new(1);
        buf.0[0] = fork_msg(-1);
        // SAFETY: one whole message, with no descriptor in it.
        let mut events = unsafe { buf.events(MSG_SIZE, FeatureFlags::empty()) };
        assert!(matches!(
            events.next(),
            Some(Err(Error::ForkWithoutDescriptor(-1)))
        ));
        assert!(events.next().is_none());
    }
}
