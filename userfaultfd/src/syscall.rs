//! The two system calls of the fault path, `read(2)` and `ioctl(2)`, issued directly rather
//! than through the C library's wrappers.
//!
//! Why: the fault path is one `read` and one `ioctl` per fault, and the C library's wrappers
//! cost more than the rest of the handler. glibc's `read` is a thread-cancellation point: in
//! a process with more than one thread, every call enables asynchronous cancellation before
//! the system call and disables it after (about 50 user-space instructions of the 100 that
//! a whole fault cost through it, measured with callgrind by `ci/callgrind`), and a call
//! into any C function clobbers every caller-saved register, so the handler loop around it
//! spills and reloads its state on each call. Issued inline, each system call is a handful of
//! instructions that clobber two registers.
//!
//! What changes for the caller: nothing observable but two things no correct program relies
//! on. `read_event`/`read_events` are no longer cancellation points for `pthread_cancel(3)`
//! (cancelling a thread that runs Rust code is undefined behaviour wherever a frame has a
//! destructor, and Rust's standard library has no thread cancellation); and a failed call
//! reports its `errno` in the returned error without also storing it in the thread's `errno`
//! (the crate reads the value from the system call's return, never from `errno`).
//!
//! On x86-64 (64-bit pointers: not the x32 ABI, whose system-call numbers differ) the calls
//! are `syscall` instructions; elsewhere they go through the C library's `read` and `ioctl`,
//! with the same interface.

use std::os::fd::RawFd;

/// `read(fd, buf, len)`: the bytes read, or `-errno`.
///
/// # Safety
///
/// `buf` must be writable for `len` bytes.
#[inline(always)]
pub(crate) unsafe fn read(fd: RawFd, buf: *mut u8, len: usize) -> isize {
    #[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
    {
        // SAFETY: the caller's contract.
        unsafe { x86_64::syscall3(libc::SYS_read, fd as usize, buf as usize, len) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_pointer_width = "64")))]
    {
        // SAFETY: the caller's contract.
        unsafe { libc_read(fd, buf, len) }
    }
}

/// `ioctl(fd, request, arg)`: the ioctl's non-negative result, or `-errno`.
///
/// # Safety
///
/// `request` must be an ioctl whose argument is a `T` at `arg`, valid for the kernel to read
/// and write, with no effect the caller has not accounted for.
#[inline(always)]
pub(crate) unsafe fn ioctl<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> isize {
    #[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
    {
        // SAFETY: the caller's contract; the request is passed whole, as glibc passes it.
        unsafe { x86_64::syscall3(libc::SYS_ioctl, fd as usize, request as usize, arg as usize) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_pointer_width = "64")))]
    {
        // SAFETY: the caller's contract.
        unsafe { libc_ioctl(fd, request, arg) }
    }
}

#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
mod x86_64 {
    /// A system call of three arguments: its result, or `-errno`.
    ///
    /// # Safety
    ///
    /// The system call `nr` with these arguments must be sound to make: any memory it reads
    /// or writes is valid for that, and it has no effect the caller has not accounted for.
    #[inline(always)]
    pub(super) unsafe fn syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        let ret: isize;
        // SAFETY: the x86-64 Linux system-call convention: number in rax, arguments in rdi,
        // rsi, rdx; the result in rax; the instruction clobbers rcx and r11 and nothing else
        // (the kernel restores the flags from r11, and user stack is not touched). The asm is
        // not marked `nomem`/`readonly`, so the compiler assumes memory may be read and
        // written, as the kernel does at the pointers passed; the caller guarantees those.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        ret
    }
}

/// `read` through the C library, with the same interface (architectures other than x86-64;
/// on x86-64, the reference the tests compare against).
///
/// # Safety
///
/// As [`read`].
#[cfg_attr(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    allow(dead_code)
)]
unsafe fn libc_read(fd: RawFd, buf: *mut u8, len: usize) -> isize {
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes.
    let ret = unsafe { libc::read(fd, buf.cast(), len) };
    if ret < 0 {
        -(last_errno() as isize)
    } else {
        ret
    }
}

/// `ioctl` through the C library, with the same interface (as [`libc_read`]).
///
/// # Safety
///
/// As [`ioctl`].
#[cfg_attr(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    allow(dead_code)
)]
unsafe fn libc_ioctl<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> isize {
    // SAFETY: the caller's contract.
    let ret = unsafe { libc::ioctl(fd, request, arg) };
    if ret < 0 {
        -(last_errno() as isize)
    } else {
        ret as isize
    }
}

#[cfg_attr(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    allow(dead_code)
)]
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe: (read end, write end), the read end non-blocking.
    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    }

    fn write(fd: RawFd, bytes: &[u8]) {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    /// The direct calls return what the C library's return (or `-errno`), byte for byte.
    #[test]
    fn direct_calls_match_the_c_library() {
        let (r, w) = pipe();
        for (direct, name) in [(true, "direct"), (false, "libc")] {
            let read_ = |buf: &mut [u8]| {
                // SAFETY: `buf` is writable for its length.
                unsafe {
                    if direct {
                        read(r, buf.as_mut_ptr(), buf.len())
                    } else {
                        libc_read(r, buf.as_mut_ptr(), buf.len())
                    }
                }
            };
            let ioctl_ = |fd: RawFd, request: libc::Ioctl, arg: &mut libc::c_int| {
                // SAFETY: FIONREAD writes one c_int; an unknown request touches nothing.
                unsafe {
                    if direct {
                        ioctl(fd, request, arg)
                    } else {
                        libc_ioctl(fd, request, arg)
                    }
                }
            };
            let mut buf = [0u8; 8];
            assert_eq!(
                read_(&mut buf),
                -(libc::EAGAIN as isize),
                "{name}: empty pipe"
            );
            write(w, b"hello");
            let mut pending = 0;
            assert_eq!(ioctl_(r, libc::FIONREAD, &mut pending), 0, "{name}");
            assert_eq!(pending, 5, "{name}: FIONREAD");
            assert_eq!(read_(&mut buf), 5, "{name}");
            assert_eq!(&buf[..5], b"hello", "{name}");
            assert_eq!(
                ioctl_(-1, libc::FIONREAD, &mut pending),
                -(libc::EBADF as isize)
            );
            // An ioctl a pipe does not know.
            let unknown = 0x4004_aa7f as libc::Ioctl;
            assert_eq!(
                ioctl_(r, unknown, &mut pending),
                -(libc::ENOTTY as isize),
                "{name}"
            );
            // SAFETY: reading into a valid buffer from a descriptor that is not open.
            let bad = unsafe {
                if direct {
                    read(-1, buf.as_mut_ptr(), 1)
                } else {
                    libc_read(-1, buf.as_mut_ptr(), 1)
                }
            };
            assert_eq!(bad, -(libc::EBADF as isize), "{name}");
        }
        // SAFETY: our pipe's descriptors, closed once.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
}
