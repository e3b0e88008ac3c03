//! [`Event`]: what a `uffd_msg` says, decoded.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libc::c_void;

use crate::{Error, FeatureFlags, Result, Uffd};
use userfaultfd_sys as sys;

/// Whether a faulting access was a read or a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadWrite {
    /// The access was a read (or an instruction fetch).
    Read,
    /// The access was a write (`UFFD_PAGEFAULT_FLAG_WRITE`).
    Write,
}

/// Why a page fault was reported: the registration mode that caught it.
///
/// Not `#[non_exhaustive]`: userfaultfd 0.9 code matches it exhaustively, and the kernel adds a
/// fault kind about once in five years (write-protect in 5.7, minor in 5.13). A new kind will
/// come with a new minor version of this 0.x crate, which is where Cargo expects breaking
/// changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The page is not present ([`RegisterMode::MISSING`](crate::RegisterMode::MISSING)):
    /// resolve with `copy`, `zeropage`, `move` or `poison`.
    Missing,
    /// A write to a write-protected page
    /// ([`RegisterMode::WRITE_PROTECT`](crate::RegisterMode::WRITE_PROTECT)): resolve with
    /// `remove_write_protection`.
    WriteProtected,
    /// The page is in the page cache but not mapped
    /// ([`RegisterMode::MINOR`](crate::RegisterMode::MINOR)): resolve with `r#continue`.
    Minor,
}

/// An event read from a userfaultfd.
///
/// Non-cooperative events (`Fork`, `Remap`, `Remove`, `Unmap`) are reported only when their
/// feature was enabled; while one is pending and unread, ioctls that change the address space
/// fail with `EAGAIN`.
///
/// `Event` is `Send` and `Sync` (userfaultfd 0.9's was neither): its pointers are addresses
/// in the registered memory, reported for the handler to pass back to the kernel, never
/// dereferenced by this crate. A handler thread can hand events to workers.
///
/// Not `#[non_exhaustive]`, for the reason given at [`FaultKind`]: 0.9 handlers match every
/// event, and a new event (the last were added in Linux 4.11) will come with a new minor
/// version of this crate. Event codes the crate does not know are reported as
/// [`Error::UnrecognizedEvent`](crate::Error::UnrecognizedEvent) meanwhile.
#[derive(Debug)]
pub enum Event {
    /// A thread faulted on a registered range and waits until the fault is resolved.
    Pagefault {
        /// The registration mode that caught the fault.
        kind: FaultKind,
        /// Whether the access was a read or a write.
        rw: ReadWrite,
        /// The faulting address, rounded down to the page (unless
        /// `FeatureFlags::EXACT_ADDRESS`).
        addr: *mut c_void,
        /// The faulting thread, `Some` only when [`FeatureFlags::THREAD_ID`] is enabled on the
        /// descriptor (userfaultfd 0.9 returned an undefined value otherwise).
        thread_id: Option<libc::pid_t>,
    },
    /// The process forked (`FeatureFlags::EVENT_FORK`): `uffd` is the child's userfaultfd,
    /// with the parent's registrations, owned by this event (dropping it closes it).
    ///
    /// The forking thread waits, inside `fork(2)`, until this event is read. If the handler
    /// runs in the same process, it must read the event without first taking a lock the
    /// forking thread holds: glibc's `fork` holds the `malloc` locks, so a handler that
    /// allocates before reading this event deadlocks the process. Reading events allocates
    /// nothing; keep the handler's path to `read_event` allocation-free too.
    Fork {
        /// The child's userfaultfd.
        uffd: Uffd,
    },
    /// A registered range was moved by `mremap(2)` (`FeatureFlags::EVENT_REMAP`).
    Remap {
        /// The old start address.
        from: *mut c_void,
        /// The new start address.
        to: *mut c_void,
        /// The length of the moved range.
        len: usize,
    },
    /// Pages of a registered range were dropped by `madvise(2)` with `MADV_DONTNEED`,
    /// `MADV_FREE` or `MADV_REMOVE` (`FeatureFlags::EVENT_REMOVE`): they will fault again.
    Remove {
        /// Start of the range.
        start: *mut c_void,
        /// End of the range (exclusive).
        end: *mut c_void,
    },
    /// A registered range was unmapped (`munmap(2)`, or replaced by `mmap(2)`/`mremap(2)`;
    /// `FeatureFlags::EVENT_UNMAP`).
    Unmap {
        /// Start of the range.
        start: *mut c_void,
        /// End of the range (exclusive).
        end: *mut c_void,
    },
}

// SAFETY: the raw pointers in `Event` are plain addresses that this crate never dereferences
// (see the type's docs); `Uffd` is `Send + Sync`. Nothing in an `Event` is tied to a thread.
unsafe impl Send for Event {}
// SAFETY: as above; `Event` has no interior mutability.
unsafe impl Sync for Event {}

/// The fault kind and the access of a page fault's `flags`, looked up in a table: a handler
/// that keeps the whole [`Event`] (to print it, say) has them computed in every loop, and a
/// lookup is four instructions where tests and branches are eight.
///
/// Minor and write-protect faults are exclusive; a minor fault is reported with the MINOR
/// flag, a write-protect fault with the WP flag (both set, which the kernel does not do, is
/// read as minor). A flag the kernel adds later does not change the kind.
#[inline(always)]
fn fault_kind_and_access(flags: u64) -> (FaultKind, ReadWrite) {
    use FaultKind::{Minor, Missing, WriteProtected};
    use ReadWrite::{Read, Write};
    const _: () = assert!(
        sys::UFFD_PAGEFAULT_FLAG_WRITE == 1
            && sys::UFFD_PAGEFAULT_FLAG_WP == 2
            && sys::UFFD_PAGEFAULT_FLAG_MINOR == 4
    );
    // Indexed by the WRITE, WP and MINOR bits.
    const TABLE: [(FaultKind, ReadWrite); 8] = [
        (Missing, Read),
        (Missing, Write),
        (WriteProtected, Read),
        (WriteProtected, Write),
        (Minor, Read),
        (Minor, Write),
        (Minor, Read),
        (Minor, Write),
    ];
    TABLE[(flags & 7) as usize]
}

/// The descriptor of a fork message, or [`Error::ForkWithoutDescriptor`] if the number is
/// negative. The kernel fails the read rather than send a fork event without a descriptor;
/// should a message say so all the same, it is an error, not the panic of
/// `OwnedFd::from_raw_fd(-1)`, which also keeps every handler's loop free of a panic path
/// (one would make the loop keep its iterator's position in memory for the cleanup).
///
/// # Safety
///
/// `msg.event` is `UFFD_EVENT_FORK`.
#[inline]
pub(crate) unsafe fn fork_descriptor(msg: &sys::uffd_msg) -> Result<RawFd> {
    debug_assert_eq!(msg.event, sys::UFFD_EVENT_FORK);
    // SAFETY: the event code says the union holds `fork` (the caller's contract), a plain
    // integer.
    let fd = unsafe { msg.arg.fork.ufd } as RawFd;
    if fd < 0 {
        return Err(Error::ForkWithoutDescriptor(fd));
    }
    Ok(fd)
}

/// A message decoded without taking ownership of anything: a fork's descriptor is a number.
pub(crate) enum Decoded {
    Event(Event),
    Fork(RawFd),
}

/// Decodes one message. `features` are the descriptor's: they decide whether the thread id
/// field means anything.
#[inline]
pub(crate) fn decode(msg: &sys::uffd_msg, features: FeatureFlags) -> Result<Decoded> {
    let event = match msg.event {
        sys::UFFD_EVENT_PAGEFAULT => {
            // SAFETY: the event code says the union holds `pagefault`; all fields are plain
            // integers, valid for any bit pattern.
            let pagefault = unsafe { msg.arg.pagefault };
            let (kind, rw) = fault_kind_and_access(pagefault.flags);
            // SAFETY: `feat` is a union of one `u32`; any bit pattern is valid.
            let ptid = unsafe { pagefault.feat.ptid };
            // Thread ids are below 2^22 (PID_MAX_LIMIT), so the cast is lossless.
            let thread_id = features
                .contains(FeatureFlags::THREAD_ID)
                .then_some(ptid as libc::pid_t);
            Event::Pagefault {
                kind,
                rw,
                addr: pagefault.address as usize as *mut c_void,
                thread_id,
            }
        }
        // SAFETY: the event code is a fork's.
        sys::UFFD_EVENT_FORK => return unsafe { fork_descriptor(msg) }.map(Decoded::Fork),
        sys::UFFD_EVENT_REMAP => {
            // SAFETY: the event code says the union holds `remap`, plain integers.
            let remap = unsafe { msg.arg.remap };
            Event::Remap {
                from: remap.from as usize as *mut c_void,
                to: remap.to as usize as *mut c_void,
                len: remap.len as usize,
            }
        }
        sys::UFFD_EVENT_REMOVE | sys::UFFD_EVENT_UNMAP => {
            // SAFETY: both event codes put a `remove` (start, end) in the union.
            let range = unsafe { msg.arg.remove };
            let (start, end) = (
                range.start as usize as *mut c_void,
                range.end as usize as *mut c_void,
            );
            if msg.event == sys::UFFD_EVENT_REMOVE {
                Event::Remove { start, end }
            } else {
                Event::Unmap { start, end }
            }
        }
        code => return Err(Error::UnrecognizedEvent(code)),
    };
    Ok(Decoded::Event(event))
}

impl Event {
    /// Decodes a message read from a descriptor with `features`, taking ownership of a fork
    /// event's descriptor.
    ///
    /// # Safety
    ///
    /// `msg` must come from the kernel (a fork event's `ufd` is then a new descriptor that
    /// only this message refers to), and be decoded at most once.
    #[inline]
    pub(crate) unsafe fn from_msg(msg: &sys::uffd_msg, features: FeatureFlags) -> Result<Event> {
        match decode(msg, features)? {
            Decoded::Event(event) => Ok(event),
            Decoded::Fork(fd) => {
                // SAFETY: the kernel installed this descriptor for the reader of this message,
                // which is us, once (the caller's contract).
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                Ok(Event::Fork {
                    uffd: Uffd::from_parts(fd, features),
                })
            }
        }
    }
}

/// Decodes arbitrary bytes as a `uffd_msg` without acting on them (a fork's descriptor is not
/// adopted). For the fuzz target and the randomized decoding test, behind the cargo feature
/// `fuzzing`; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn decode_untrusted(bytes: &[u8; 32], features: FeatureFlags) -> Result<()> {
    const _: () = assert!(std::mem::size_of::<sys::uffd_msg>() == 32);
    // SAFETY: `uffd_msg` is 32 bytes of plain integers (packed, alignment 1), valid for any
    // bit pattern; `read_unaligned` copies them.
    let msg: sys::uffd_msg = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode(&msg, features).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table against the rule it encodes, for every combination of the three flags and
    /// with bits the kernel may add later.
    #[test]
    fn fault_kind_and_access_follow_the_flags() {
        let (write, wp, minor) = (
            sys::UFFD_PAGEFAULT_FLAG_WRITE,
            sys::UFFD_PAGEFAULT_FLAG_WP,
            sys::UFFD_PAGEFAULT_FLAG_MINOR,
        );
        for flags in 0..8u64 {
            let kind = if flags & minor != 0 {
                FaultKind::Minor
            } else if flags & wp != 0 {
                FaultKind::WriteProtected
            } else {
                FaultKind::Missing
            };
            let rw = if flags & write != 0 {
                ReadWrite::Write
            } else {
                ReadWrite::Read
            };
            for extra in [0, 8, 1 << 40, !7] {
                assert_eq!(
                    fault_kind_and_access(flags | extra),
                    (kind, rw),
                    "flags {:#x}",
                    flags | extra
                );
            }
        }
    }
}
