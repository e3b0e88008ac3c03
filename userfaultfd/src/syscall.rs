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
//! On x86-64 the calls are `syscall` instructions; on other architectures they go through the
//! C library's `read` and `ioctl`, with the same interface.

use std::os::fd::RawFd;

/// `read(fd, buf, len)`: the bytes read, or `-errno`.
///
/// # Safety
///
/// `buf` must be writable for `len` bytes.
#[inline(always)]
pub(crate) unsafe fn read(fd: RawFd, buf: *mut u8, len: usize) -> isize {
    #[cfg(target_arch = "x86_64")]
    {
        let ret: isize;
        // SAFETY: the x86-64 Linux system-call convention: number in rax, arguments in rdi,
        // rsi, rdx; the result in rax; the instruction clobbers rcx and r11 and nothing else
        // (the kernel restores the flags from r11). The kernel writes at most `len` bytes at
        // `buf`, which the caller guarantees writable; the asm is not marked `nomem`, so the
        // compiler assumes memory may change.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_read as isize => ret,
                in("rdi") fd as isize,
                in("rsi") buf,
                in("rdx") len,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        ret
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: the caller guarantees `buf` is writable for `len` bytes.
        let ret = unsafe { libc::read(fd, buf.cast(), len) };
        if ret < 0 {
            -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as isize)
        } else {
            ret
        }
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
    #[cfg(target_arch = "x86_64")]
    {
        let ret: isize;
        // SAFETY: as for `read`: number in rax, arguments in rdi, rsi, rdx, result in rax,
        // rcx and r11 clobbered; the request is passed whole, as glibc passes it. The kernel
        // reads and writes the `T` at `arg`, which the caller guarantees; the asm may touch
        // memory as far as the compiler knows.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_ioctl as isize => ret,
                in("rdi") fd as isize,
                in("rsi") request as usize,
                in("rdx") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        ret
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: the caller's contract.
        let ret = unsafe { libc::ioctl(fd, request, arg) };
        if ret < 0 {
            -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as isize)
        } else {
            ret as isize
        }
    }
}
