//! One module per ioctl, each adding its methods to [`Uffd`](crate::Uffd):
//!
//! | ioctl | module | methods |
//! |---|---|---|
//! | `UFFDIO_API` | [`api`] | used by [`UffdBuilder::create`](crate::UffdBuilder::create), [`probe`](crate::probe) |
//! | `UFFDIO_REGISTER`, `UFFDIO_UNREGISTER` | `register` | `register`, `register_with_mode`, `unregister` |
//! | `UFFDIO_COPY` | `copy` | `copy`, `copy_with_mode` |
//! | `UFFDIO_ZEROPAGE` | `zeropage` | `zeropage`, `zeropage_with_mode` |
//! | `UFFDIO_WAKE` | `wake` | `wake` |
//! | `UFFDIO_WRITEPROTECT` | `write_protect` | `write_protect`, `remove_write_protection` |
//! | `UFFDIO_CONTINUE` | `continue` | `r#continue`, `continue_with_mode` |
//! | `UFFDIO_POISON` | `poison` | `poison` |
//! | `UFFDIO_MOVE` | `move` | `r#move` |
//!
//! This module holds what they share: the raw call and the result-field protocol.

pub(crate) mod api;
mod r#continue;
mod copy;
mod r#move;
mod poison;
mod register;
mod wake;
mod write_protect;
mod zeropage;

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{Errno, Error, Result};

/// Performs `ioctl(fd, request, arg)` (directly: see `crate::syscall`).
///
/// # Safety
///
/// `request` must be an ioctl whose argument is a `T` (the kernel reads and may write
/// `size_of::<T>()` bytes at `arg`), and the ioctl must not have effects the caller has not
/// accounted for (for example, placing pages in memory other code assumes it owns).
#[inline]
pub(crate) unsafe fn ioctl<T>(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    arg: &mut T,
) -> std::result::Result<libc::c_int, Errno> {
    // SAFETY: `arg` is a valid, exclusive `T` for the duration of the call, and the caller
    // guarantees `request` takes a `T`.
    let ret = unsafe { crate::syscall::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if ret < 0 {
        Err(Errno::from_raw(-ret as i32))
    } else {
        Ok(ret as libc::c_int)
    }
}

/// Interprets the outcome of the ioctls that place pages (`COPY`, `ZEROPAGE`, `CONTINUE`,
/// `POISON`, `MOVE`) from the return value and the result field (`copy`, `zeropage`, `mapped`,
/// `updated`, `move`), which the caller preset to 0:
///
/// - success: the whole range was done; the field says so (it is `len`);
/// - `EAGAIN`: the kernel stopped after the field's bytes, which may be none: a page further on
///   was populated, or a non-cooperative event is pending ([`Error::PartiallyCopied`]`(n)`,
///   `n >= 0`). A field ≤ 0 (−EAGAIN, or 0 because kernels before 6.15 leave it unwritten when
///   an event is pending) means nothing was done: `PartiallyCopied(0)`. This is the shape
///   correct userfaultfd 0.9 handlers already expect (0.9 cast −EAGAIN to `usize`); a
///   different variant would compile and send them down their fatal-error path;
/// - any other errno: nothing was done, `failed(errno)`.
///
/// The field is never trusted to be non-negative, nor at most `len`.
#[inline]
pub(crate) fn bytes_done(
    outcome: std::result::Result<libc::c_int, Errno>,
    field: i64,
    len: usize,
    failed: fn(Errno) -> Error,
) -> Result<usize> {
    match outcome {
        Ok(_) => Ok(usize::try_from(field)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(len)),
        Err(Errno::EAGAIN) => Err(Error::PartiallyCopied(
            usize::try_from(field).unwrap_or(0).min(len),
        )),
        Err(errno) => Err(failed(errno)),
    }
}

/// The `u64` the kernel expects for an address.
#[inline]
pub(crate) fn addr<T>(ptr: *const T) -> u64 {
    ptr as usize as u64
}

/// The `u64` the kernel expects for a length.
#[inline]
pub(crate) fn len(len: usize) -> u64 {
    len as u64
}

/// The `uffdio_range` for `[start, start + len)`. The kernel validates it (alignment, zero
/// length, overflow, the address-space limit) and answers `EINVAL`; checking here too would
/// only duplicate that with a chance of disagreeing.
#[inline]
pub(crate) fn range(start: *mut libc::c_void, len: usize) -> userfaultfd_sys::uffdio_range {
    userfaultfd_sys::uffdio_range {
        start: addr(start),
        len: self::len(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_field_protocol() {
        let failed = Error::CopyFailed;
        assert_eq!(bytes_done(Ok(0), 8192, 8192, failed).unwrap(), 8192);
        assert!(matches!(
            bytes_done(Err(Errno::EAGAIN), 4096, 8192, failed),
            Err(Error::PartiallyCopied(4096))
        ));
        // -EAGAIN in the field, or the field left at 0 by an older kernel: no progress, still
        // PartiallyCopied (what 0.9 handlers match on), never a huge count.
        assert!(matches!(
            bytes_done(Err(Errno::EAGAIN), -(libc::EAGAIN as i64), 8192, failed),
            Err(Error::PartiallyCopied(0))
        ));
        assert!(matches!(
            bytes_done(Err(Errno::EAGAIN), 0, 8192, failed),
            Err(Error::PartiallyCopied(0))
        ));
        // A field beyond the length is not believed.
        assert!(matches!(
            bytes_done(Err(Errno::EAGAIN), 1 << 40, 8192, failed),
            Err(Error::PartiallyCopied(8192))
        ));
        assert!(matches!(
            bytes_done(Err(Errno::EEXIST), -(libc::EEXIST as i64), 4096, failed),
            Err(Error::CopyFailed(Errno::EEXIST))
        ));
    }
}
