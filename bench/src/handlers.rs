//! The three implementations under test, behind one trait so that every scenario runs the same
//! code around them. Each method is a thin call into the implementation; generics (not trait
//! objects) keep the comparison free of dispatch overhead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::c_void;
use userfaultfd_sys as sys;

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Raw,
    Ours,
    V09,
}

impl Impl {
    pub const ALL: [Impl; 3] = [Impl::Raw, Impl::Ours, Impl::V09];

    pub fn parse(s: &str) -> Option<Impl> {
        match s {
            "raw" => Some(Impl::Raw),
            "ours" => Some(Impl::Ours),
            "v09" => Some(Impl::V09),
            _ => None,
        }
    }
}

/// What failed in a handler's loop, for [`die`].
#[repr(u8)]
#[derive(Clone, Copy, Debug)]
pub enum Failed {
    Read,
    NotAFault,
    Copy,
    Zeropage,
}

/// Ends the benchmark when a handler's loop fails, as the C handler's `die()` does: by
/// ending the process (status 1), not by unwinding. A call to an `extern "C"` function cannot
/// unwind (a panic inside one aborts), so the loops that call it have no cleanup path. (A
/// loop that may unwind while it holds an event keeps the event for the cleanup that drops
/// it: with `unwrap()` on each result and a fallback arm that prints the event, `read_event`
/// costs this crate 28 instructions per fault instead of 25; see BENCHMARKS.md.)
#[cold]
#[inline(never)]
pub extern "C" fn die(what: Failed) -> ! {
    eprintln!("the handler failed: {what:?}");
    std::process::exit(1)
}

/// [`die`] with an error's `errno` (0: none).
#[cold]
#[inline(never)]
pub extern "C" fn die_errno(what: Failed, errno: i32) -> ! {
    eprintln!(
        "the handler failed: {what:?}: {}",
        std::io::Error::from_raw_os_error(errno)
    );
    std::process::exit(1)
}

/// [`die`] for an error of a crate under test (this one or 0.9). The error is neither
/// printed nor dropped: the process ends, and either would be a call into the crate that the
/// compiler cannot see into, which may unwind and so gives a batch loop a cleanup path
/// (reading this crate's error in the loop took `read_events` from 43 instructions per fault
/// to 55 to 71, and `read_event` from 25 to 39). The C handler's `die()` prints `errno`; the
/// operation named here is what a failed benchmark run needs to be run again outside
/// valgrind.
#[inline(always)]
fn fail<E>(error: E, what: Failed) -> ! {
    std::mem::forget(error);
    die(what)
}

/// What a scenario needs from an implementation. Its methods are `#[inline(always)]`, as the C
/// handler's are inlined: what is measured is the loop a compiler makes of a handler, the same
/// in every build, not whether it chose to inline a method of the benchmark.
pub trait Server: Send + Sync + Sized + 'static {
    /// Reusable storage for batched reads.
    type Batch: Send;
    /// Whether the implementation has `UFFDIO_MOVE`.
    const HAS_MOVE: bool;
    /// A blocking descriptor; `user_mode_only` false to handle kernel faults
    /// (MADV_POPULATE_READ), which needs /dev/userfaultfd or privilege.
    fn create(user_mode_only: bool) -> Self;
    fn register(&self, addr: *mut c_void, len: usize);
    /// Blocks for one event; returns the fault address.
    fn next_fault(&self) -> usize;
    fn batch(&self, capacity: usize) -> Self::Batch;
    /// Blocks for at least one event, reads up to the batch's capacity, calls `f` with each
    /// fault address; returns how many.
    fn faults(&self, batch: &mut Self::Batch, f: impl FnMut(usize)) -> usize;
    fn copy(&self, src: *const c_void, dst: usize, len: usize);
    fn zeropage(&self, dst: usize, len: usize);
    /// `UFFDIO_MOVE` (only called when `HAS_MOVE`).
    fn move_pages(&self, src: *const c_void, dst: usize, len: usize);
}

/// The raw loop: `read(2)` and `ioctl(2)` with no abstraction.
pub struct Raw(OwnedFd);

fn check(ret: libc::c_int, what: &str) {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
}

impl Server for Raw {
    type Batch = Vec<sys::uffd_msg>;
    const HAS_MOVE: bool = true;

    fn create(user_mode_only: bool) -> Raw {
        // SAFETY: opens a device; the descriptor is owned below.
        let dev =
            unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        check(dev, "open /dev/userfaultfd");
        let mut flags = libc::O_CLOEXEC;
        if user_mode_only {
            flags |= sys::UFFD_USER_MODE_ONLY as libc::c_int;
        }
        // SAFETY: USERFAULTFD_IOC_NEW takes flags by value and returns a descriptor.
        let fd = unsafe { libc::ioctl(dev, sys::USERFAULTFD_IOC_NEW, flags) };
        check(fd, "USERFAULTFD_IOC_NEW");
        // SAFETY: `dev` is ours; not needed any more.
        unsafe { libc::close(dev) };
        let mut api = sys::uffdio_api {
            api: sys::UFFD_API,
            ..Default::default()
        };
        // SAFETY: UFFDIO_API on a new descriptor with a valid uffdio_api.
        check(
            unsafe { libc::ioctl(fd, sys::UFFDIO_API, &mut api) },
            "UFFDIO_API",
        );
        // SAFETY: a new descriptor only we hold.
        Raw(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn register(&self, addr: *mut c_void, len: usize) {
        let mut reg = sys::uffdio_register {
            range: sys::uffdio_range {
                start: addr as u64,
                len: len as u64,
            },
            mode: sys::UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: a valid uffdio_register.
        check(
            unsafe { libc::ioctl(self.0.as_raw_fd(), sys::UFFDIO_REGISTER, &mut reg) },
            "REGISTER",
        );
    }

    #[inline(always)]
    fn next_fault(&self) -> usize {
        // Not zeroed, as in C: the kernel writes the whole message.
        let mut msg = std::mem::MaybeUninit::<sys::uffd_msg>::uninit();
        loop {
            // SAFETY: reads one message into `msg`.
            let n = unsafe { libc::read(self.0.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
            if n == 32 {
                break;
            }
            let errno = std::io::Error::last_os_error();
            if n >= 0 || errno.raw_os_error() != Some(libc::EINTR) {
                die_errno(Failed::Read, errno.raw_os_error().unwrap_or(0));
            }
        }
        // SAFETY: the kernel wrote the whole message.
        let msg = unsafe { msg.assume_init() };
        if msg.event != sys::UFFD_EVENT_PAGEFAULT {
            die(Failed::NotAFault);
        }
        // SAFETY: a pagefault message.
        unsafe { msg.arg.pagefault.address as usize }
    }

    fn batch(&self, capacity: usize) -> Vec<sys::uffd_msg> {
        vec![sys::uffd_msg::default(); capacity]
    }

    #[inline(always)]
    fn faults(&self, batch: &mut Vec<sys::uffd_msg>, mut f: impl FnMut(usize)) -> usize {
        let n = loop {
            // SAFETY: reads whole messages into the buffer.
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    batch.as_mut_ptr().cast(),
                    batch.len() * 32,
                )
            };
            if n > 0 && n % 32 == 0 {
                break n;
            }
            // As in C: retried on EINTR.
            let errno = std::io::Error::last_os_error();
            if n >= 0 || errno.raw_os_error() != Some(libc::EINTR) {
                die_errno(Failed::Read, errno.raw_os_error().unwrap_or(0));
            }
        };
        let count = n as usize / 32;
        for msg in &batch[..count] {
            if msg.event != sys::UFFD_EVENT_PAGEFAULT {
                die(Failed::NotAFault);
            }
            // SAFETY: a pagefault message.
            f(unsafe { msg.arg.pagefault.address } as usize);
        }
        count
    }

    #[inline(always)]
    fn copy(&self, src: *const c_void, dst: usize, len: usize) {
        let mut copy = sys::uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: a valid uffdio_copy into a benchmark mapping.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), sys::UFFDIO_COPY, &mut copy) } < 0 {
            die_errno(
                Failed::Copy,
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            );
        }
    }

    #[inline(always)]
    fn zeropage(&self, dst: usize, len: usize) {
        let mut z = sys::uffdio_zeropage {
            range: sys::uffdio_range {
                start: dst as u64,
                len: len as u64,
            },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: a valid uffdio_zeropage into a benchmark mapping.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), sys::UFFDIO_ZEROPAGE, &mut z) } < 0 {
            die_errno(
                Failed::Zeropage,
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            );
        }
    }

    fn move_pages(&self, src: *const c_void, dst: usize, len: usize) {
        let mut mv = sys::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: 0,
            move_: 0,
        };
        // SAFETY: a valid uffdio_move between benchmark mappings.
        check(
            unsafe { libc::ioctl(self.0.as_raw_fd(), sys::UFFDIO_MOVE, &mut mv) },
            "MOVE",
        );
    }
}

/// This repository's crate.
pub struct Ours(userfaultfd::Uffd);

impl Server for Ours {
    type Batch = userfaultfd::EventBuffer;
    const HAS_MOVE: bool = true;

    fn create(user_mode_only: bool) -> Ours {
        Ours(
            userfaultfd::UffdBuilder::new()
                .close_on_exec(true)
                .user_mode_only(user_mode_only)
                .create()
                .unwrap(),
        )
    }

    fn register(&self, addr: *mut c_void, len: usize) {
        self.0.register(addr, len).unwrap();
    }

    #[inline(always)]
    fn next_fault(&self) -> usize {
        match self.0.read_event() {
            Ok(Some(userfaultfd::Event::Pagefault { addr, .. })) => addr as usize,
            Ok(_) => die(Failed::NotAFault),
            Err(e) => fail(e, Failed::Read),
        }
    }

    fn batch(&self, capacity: usize) -> userfaultfd::EventBuffer {
        userfaultfd::EventBuffer::new(capacity)
    }

    #[inline(always)]
    fn faults(&self, batch: &mut userfaultfd::EventBuffer, mut f: impl FnMut(usize)) -> usize {
        let events = match self.0.read_events(batch) {
            Ok(events) => events,
            Err(e) => fail(e, Failed::Read),
        };
        let n = events.len();
        for event in events {
            let addr = match event {
                Ok(userfaultfd::Event::Pagefault { addr, .. }) => addr,
                Ok(_) => die(Failed::NotAFault),
                Err(e) => fail(e, Failed::Read),
            };
            f(addr as usize);
        }
        n
    }

    #[inline(always)]
    fn copy(&self, src: *const c_void, dst: usize, len: usize) {
        // SAFETY: the destination is a benchmark mapping holding no Rust object.
        if let Err(e) = unsafe { self.0.copy(src, dst as *mut c_void, len, true) } {
            fail(e, Failed::Copy);
        }
    }

    #[inline(always)]
    fn zeropage(&self, dst: usize, len: usize) {
        // SAFETY: as for copy.
        if let Err(e) = unsafe { self.0.zeropage(dst as *mut c_void, len, true) } {
            fail(e, Failed::Zeropage);
        }
    }

    fn move_pages(&self, src: *const c_void, dst: usize, len: usize) {
        // SAFETY: both are benchmark mappings holding no Rust object.
        unsafe {
            self.0
                .r#move(src, dst as *mut c_void, len, userfaultfd::MoveMode::empty())
        }
        .unwrap();
    }
}

/// crates.io userfaultfd 0.9.
pub struct V09(userfaultfd09::Uffd);

impl Server for V09 {
    type Batch = userfaultfd09::EventBuffer;
    const HAS_MOVE: bool = false;

    fn create(user_mode_only: bool) -> V09 {
        V09(userfaultfd09::UffdBuilder::new()
            .close_on_exec(true)
            .user_mode_only(user_mode_only)
            .create()
            .unwrap())
    }

    fn register(&self, addr: *mut c_void, len: usize) {
        self.0.register(addr, len).unwrap();
    }

    #[inline(always)]
    fn next_fault(&self) -> usize {
        match self.0.read_event() {
            Ok(Some(userfaultfd09::Event::Pagefault { addr, .. })) => addr as usize,
            Ok(_) => die(Failed::NotAFault),
            Err(e) => fail(e, Failed::Read),
        }
    }

    fn batch(&self, capacity: usize) -> userfaultfd09::EventBuffer {
        userfaultfd09::EventBuffer::new(capacity)
    }

    #[inline(always)]
    fn faults(&self, batch: &mut userfaultfd09::EventBuffer, mut f: impl FnMut(usize)) -> usize {
        let mut n = 0;
        let events = match self.0.read_events(batch) {
            Ok(events) => events,
            Err(e) => fail(e, Failed::Read),
        };
        for event in events {
            let addr = match event {
                Ok(userfaultfd09::Event::Pagefault { addr, .. }) => addr,
                Ok(_) => die(Failed::NotAFault),
                Err(e) => fail(e, Failed::Read),
            };
            f(addr as usize);
            n += 1;
        }
        n
    }

    #[inline(always)]
    fn copy(&self, src: *const c_void, dst: usize, len: usize) {
        // SAFETY: the destination is a benchmark mapping holding no Rust object.
        if let Err(e) = unsafe { self.0.copy(src, dst as *mut c_void, len, true) } {
            fail(e, Failed::Copy);
        }
    }

    #[inline(always)]
    fn zeropage(&self, dst: usize, len: usize) {
        // SAFETY: as for copy.
        if let Err(e) = unsafe { self.0.zeropage(dst as *mut c_void, len, true) } {
            fail(e, Failed::Zeropage);
        }
    }

    fn move_pages(&self, _: *const c_void, _: usize, _: usize) {
        unreachable!("0.9 has no UFFDIO_MOVE")
    }
}
