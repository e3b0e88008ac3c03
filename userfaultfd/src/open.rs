//! Obtaining a userfaultfd descriptor: `/dev/userfaultfd` first, then the `userfaultfd(2)`
//! system call.
//!
//! Both give the same kind of descriptor (an anonymous inode `[userfaultfd]` tied to the
//! creating process's address space) and take the same flags; the device (Linux 6.1+: `open`
//! it `O_RDWR`, then `ioctl(USERFAULTFD_IOC_NEW, flags)` returns the new descriptor) differs
//! from the system call (Linux 4.3+) only in its permission check. The device checks nothing
//! but the file mode of `/dev/userfaultfd` (root-only by default), and its descriptors may
//! handle kernel-mode faults whatever `vm.unprivileged_userfaultfd` says. The system call is
//! allowed when the flags include `UFFD_USER_MODE_ONLY` (Linux 5.11+), when the caller has
//! `CAP_SYS_PTRACE` in the initial user namespace, or when `vm.unprivileged_userfaultfd` is 1;
//! otherwise it fails with `EPERM`. A process that one refuses may be allowed by the other, so
//! a refusal of the device (missing, or `EACCES`/`EPERM`) falls through to the system call.

use std::ffi::CStr;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::{Errno, Error, Result};
use userfaultfd_sys as sys;

const DEVICE: &CStr = c"/dev/userfaultfd";

/// Creates a descriptor with `flags` (`O_CLOEXEC`, `O_NONBLOCK`, `UFFD_USER_MODE_ONLY`).
pub(crate) fn new_userfaultfd(flags: libc::c_int) -> Result<OwnedFd> {
    let device = match from_device(flags) {
        Ok(fd) => return Ok(fd),
        Err(DeviceFailure::Refused(errno)) => errno,
        Err(DeviceFailure::Other(err)) => return Err(err),
    };
    from_syscall(flags).map_err(|syscall| Error::CreateFailed {
        device,
        syscall,
        unprivileged_userfaultfd: unprivileged_userfaultfd_sysctl(),
    })
}

enum DeviceFailure {
    /// The device is missing or refused this process, or its ioctl failed: try the system call.
    Refused(Errno),
    /// The device exists but could not be opened for another reason.
    Other(Error),
}

fn from_device(flags: libc::c_int) -> std::result::Result<OwnedFd, DeviceFailure> {
    // SAFETY: `DEVICE` is a NUL-terminated path; open has no memory effects beyond reading it.
    let dev = unsafe { libc::open(DEVICE.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        let errno = Errno::last();
        return Err(match errno {
            Errno::ENOENT | Errno::EACCES | Errno::EPERM => DeviceFailure::Refused(errno),
            _ => DeviceFailure::Other(Error::OpenDevUserfaultfd(errno.into())),
        });
    }
    // SAFETY: `dev` was just opened and is owned by nothing else.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new descriptor.
    let fd = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&dev),
            sys::USERFAULTFD_IOC_NEW,
            flags,
        )
    };
    if fd < 0 {
        return Err(DeviceFailure::Refused(Errno::last()));
    }
    // SAFETY: the ioctl returned a new descriptor that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn from_syscall(flags: libc::c_int) -> std::result::Result<OwnedFd, Errno> {
    let user_mode_only = sys::UFFD_USER_MODE_ONLY as libc::c_int;
    match syscall(flags) {
        // Kernels before 5.11 do not know UFFD_USER_MODE_ONLY and reject it with EINVAL; they
        // also have no way to restrict handling to user mode, so retry without it.
        Err(Errno::EINVAL) if flags & user_mode_only != 0 => syscall(flags & !user_mode_only),
        result => result,
    }
}

fn syscall(flags: libc::c_int) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: userfaultfd(2) takes its flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the system call returned a new descriptor (it fits a c_int) that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `/proc/sys/vm/unprivileged_userfaultfd`, for the error message.
pub(crate) fn unprivileged_userfaultfd_sysctl() -> Option<u8> {
    fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}
