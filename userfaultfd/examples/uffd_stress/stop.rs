//! Ending a bounce's fault-handler threads.
//!
//! A poll-mode handler polls a pipe next to the userfaultfd: one byte written to its pipe
//! ends it. A read-mode handler is blocked in `read(2)` on the userfaultfd, which only an
//! event ends (the kernel's program cancels it with `pthread_cancel`, which Rust threads do
//! not support; a signal would not do either, since `read_event` retries `EINTR`). So every
//! read-mode handler is handed one last fault: on a sentinel page registered with the same
//! descriptor, which the main thread touches once per handler. A handler that reads a fault
//! on the sentinel resolves it and returns; the main thread then drops the page again for
//! the next one. Being outside both areas, the sentinel is never counted.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::c_void;
use userfaultfd::Uffd;

pub struct Stoppers {
    /// Per CPU, the read and write ends of a non-blocking pipe.
    pipes: Vec<(OwnedFd, OwnedFd)>,
    sentinel: *mut u8,
    sentinel_len: usize,
}

// SAFETY: `sentinel` is the address of a mapping owned by this value, accessed only by the
// kernel (faults, zeropage) and by volatile reads; the descriptors are plain owned fds.
unsafe impl Sync for Stoppers {}

impl Stoppers {
    /// Pipes for `nr_cpus` poll-mode handlers, and the sentinel page, registered with `uffd`
    /// for missing faults.
    pub fn new(uffd: &Uffd, nr_cpus: usize) -> io::Result<Stoppers> {
        let mut pipes = Vec::with_capacity(nr_cpus);
        for _ in 0..nr_cpus {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both are new descriptors that only we own.
            pipes.push(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) });
        }
        // SAFETY: sysconf has no memory effects.
        let sentinel_len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new private anonymous mapping at an address of the kernel's choosing.
        let sentinel = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                sentinel_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if sentinel == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stoppers = Stoppers {
            pipes,
            sentinel: sentinel.cast(),
            sentinel_len,
        };
        uffd.register(sentinel, sentinel_len)
            .map_err(|e| io::Error::other(format!("registering the sentinel page: {e}")))?;
        Ok(stoppers)
    }

    /// The read end of `cpu`'s pipe, for its poll-mode handler.
    pub fn pipe(&self, cpu: usize) -> libc::c_int {
        self.pipes[cpu].0.as_raw_fd()
    }

    /// Ends `cpu`'s poll-mode handler.
    pub fn stop_poller(&self, cpu: usize) -> io::Result<()> {
        let byte = 0u8;
        // SAFETY: writes one byte from a local to our pipe.
        match unsafe {
            libc::write(
                self.pipes[cpu].1.as_raw_fd(),
                (&byte as *const u8).cast(),
                1,
            )
        } {
            1 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Whether a fault is the sentinel's, i.e. the handler that read it is to return.
    #[inline]
    pub fn is_sentinel(&self, addr: *mut c_void) -> bool {
        addr.cast() == self.sentinel
    }

    /// In the handler that read the sentinel's fault: maps the zero page there and wakes the
    /// main thread.
    pub fn release_sentinel(&self, uffd: &Uffd) -> userfaultfd::Result<()> {
        // SAFETY: the sentinel is our own mapping, holding no Rust object.
        unsafe { uffd.zeropage(self.sentinel.cast(), self.sentinel_len, true) }.map(|_| ())
    }

    /// In the main thread: makes one read-mode handler return (the touch blocks until one has
    /// read and resolved the sentinel's fault), then drops the page for the next time.
    pub fn stop_reader(&self) -> io::Result<()> {
        // SAFETY: a read of our own mapping; it blocks until a handler resolves the fault.
        unsafe { self.sentinel.read_volatile() };
        // SAFETY: our mapping; nothing relies on its contents (it reads as zero either way).
        if unsafe { libc::madvise(self.sentinel.cast(), self.sentinel_len, libc::MADV_DONTNEED) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Stoppers {
    fn drop(&mut self) {
        // SAFETY: the sentinel mapping is ours and no longer used.
        unsafe { libc::munmap(self.sentinel.cast(), self.sentinel_len) };
    }
}
