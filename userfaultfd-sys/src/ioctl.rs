//! Ioctl request codes, computed for the target architecture.
//!
//! The kernel builds a request code with `_IOC(dir, type, nr, size)`. Most architectures
//! (x86, arm, arm64, riscv, s390, loongarch) use the generic encoding: 8 bits of number,
//! 8 bits of type, 14 bits of argument size and 2 bits of direction, with READ = 2 and
//! WRITE = 1. powerpc, mips and sparc give the size 13 bits and the direction 3 bits, with
//! NONE = 1, READ = 2 and WRITE = 4. The values therefore cannot come from a file generated on
//! one architecture; they are computed here from each argument struct's size, and a test
//! compares them with what the C compiler makes of the kernel header's own macros.
//!
//! Every constant has the type [`libc::Ioctl`], the request parameter type of `libc::ioctl` on
//! this target (`c_ulong` on glibc, `c_int` on musl), so it can be passed without a cast:
//!
//! ```
//! # use userfaultfd_sys::*;
//! let _: libc::Ioctl = UFFDIO_API;
//! assert_eq!(UFFDIO_API as u32, 0xC018_AA3F_u32); // on x86_64, arm64, riscv64
//! ```

use core::mem::size_of;

use crate::{
    pm_scan_arg, uffdio_api, uffdio_continue, uffdio_copy, uffdio_move, uffdio_poison,
    uffdio_range, uffdio_register, uffdio_writeprotect, uffdio_zeropage, _UFFDIO_API,
    _UFFDIO_CONTINUE, _UFFDIO_COPY, _UFFDIO_MOVE, _UFFDIO_POISON, _UFFDIO_REGISTER,
    _UFFDIO_UNREGISTER, _UFFDIO_WAKE, _UFFDIO_WRITEPROTECT, _UFFDIO_ZEROPAGE, PROCFS_IOCTL_MAGIC,
    UFFDIO,
};

/// An `_IOC` field layout: how wide the size field is and how the direction is encoded.
///
/// Public so that the encodings of other architectures can be computed (and tested against
/// the C compiler) on any host; [`IocEncoding::TARGET`] is the one this crate's request codes
/// use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IocEncoding {
    /// Width of the argument-size field (`_IOC_SIZEBITS`).
    pub size_bits: u32,
    /// `_IOC_NONE`.
    pub none: u32,
    /// `_IOC_READ`: the kernel writes the argument (user space reads it).
    pub read: u32,
    /// `_IOC_WRITE`: the kernel reads the argument.
    pub write: u32,
}

impl IocEncoding {
    /// `include/uapi/asm-generic/ioctl.h`: x86, arm, arm64, riscv, s390, loongarch, ...
    pub const GENERIC: IocEncoding = IocEncoding {
        size_bits: 14,
        none: 0,
        read: 2,
        write: 1,
    };

    /// `arch/{powerpc,mips,sparc}/include/uapi/asm/ioctl.h`: 13 size bits, 3 direction bits.
    pub const POWERPC_MIPS_SPARC: IocEncoding = IocEncoding {
        size_bits: 13,
        none: 1,
        read: 2,
        write: 4,
    };

    /// The encoding of the target this crate is compiled for.
    #[cfg(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips32r6",
        target_arch = "mips64",
        target_arch = "mips64r6",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    pub const TARGET: IocEncoding = IocEncoding::POWERPC_MIPS_SPARC;

    /// The encoding of the target this crate is compiled for.
    #[cfg(not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips32r6",
        target_arch = "mips64",
        target_arch = "mips64r6",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    pub const TARGET: IocEncoding = IocEncoding::GENERIC;

    /// `_IOC(dir, type, nr, size)` in this encoding: 8 bits of number, 8 bits of type, then
    /// the size, then the direction.
    ///
    /// Panics (at compile time where it is evaluated in a constant) if `size` does not fit the
    /// size field.
    pub const fn ioc(self, dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
        const NR_SHIFT: u32 = 0;
        const TYPE_SHIFT: u32 = 8;
        const SIZE_SHIFT: u32 = 16;
        assert!(
            size < (1 << self.size_bits),
            "ioctl argument too large for _IOC"
        );
        let dir_shift = SIZE_SHIFT + self.size_bits;
        (dir << dir_shift) | (ty << TYPE_SHIFT) | (nr << NR_SHIFT) | ((size as u32) << SIZE_SHIFT)
    }
}

/// The kernel's `_IOC(dir, type, nr, size)` for this target.
///
/// Panics at compile time (these are only evaluated in constants) if `size` does not fit the
/// architecture's size field.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    IocEncoding::TARGET.ioc(dir, ty, nr, size)
}

/// The kernel's `_IO(type, nr)`: no argument struct.
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IocEncoding::TARGET.none, ty, nr, 0)
}

/// The kernel's `_IOR(type, nr, T)`: the kernel writes `T`.
pub const fn ior<T>(ty: u32, nr: u32) -> u32 {
    ioc(IocEncoding::TARGET.read, ty, nr, size_of::<T>())
}

/// The kernel's `_IOWR(type, nr, T)`: the kernel reads and writes `T`.
pub const fn iowr<T>(ty: u32, nr: u32) -> u32 {
    let e = IocEncoding::TARGET;
    ioc(e.read | e.write, ty, nr, size_of::<T>())
}

/// A request code in the type `libc::ioctl` takes on this target. Codes with the top bit set
/// wrap to negative values where that type is `c_int` (musl), which is the bit pattern the
/// kernel expects.
const fn request(code: u32) -> libc::Ioctl {
    code as libc::Ioctl
}

const UFFDIO_TYPE: u32 = UFFDIO as u32;

/// `UFFDIO_API`: the handshake that enables features; argument [`uffdio_api`]. Linux 4.3.
pub const UFFDIO_API: libc::Ioctl = request(iowr::<uffdio_api>(UFFDIO_TYPE, _UFFDIO_API as u32));
/// `UFFDIO_REGISTER`: register a range; argument [`uffdio_register`]. Linux 4.3.
pub const UFFDIO_REGISTER: libc::Ioctl = request(iowr::<uffdio_register>(
    UFFDIO_TYPE,
    _UFFDIO_REGISTER as u32,
));
/// `UFFDIO_UNREGISTER`: unregister a range; argument [`uffdio_range`]. Linux 4.3.
///
/// The kernel declares it `_IOR` although it only reads the range; the code keeps that.
pub const UFFDIO_UNREGISTER: libc::Ioctl =
    request(ior::<uffdio_range>(UFFDIO_TYPE, _UFFDIO_UNREGISTER as u32));
/// `UFFDIO_WAKE`: wake threads waiting on a range; argument [`uffdio_range`]. Linux 4.3.
///
/// Declared `_IOR` by the kernel, like [`UFFDIO_UNREGISTER`].
pub const UFFDIO_WAKE: libc::Ioctl = request(ior::<uffdio_range>(UFFDIO_TYPE, _UFFDIO_WAKE as u32));
/// `UFFDIO_COPY`: atomically copy pages into a range; argument [`uffdio_copy`]. Linux 4.3.
pub const UFFDIO_COPY: libc::Ioctl = request(iowr::<uffdio_copy>(UFFDIO_TYPE, _UFFDIO_COPY as u32));
/// `UFFDIO_ZEROPAGE`: map zero pages into a range; argument [`uffdio_zeropage`]. Linux 4.3.
pub const UFFDIO_ZEROPAGE: libc::Ioctl = request(iowr::<uffdio_zeropage>(
    UFFDIO_TYPE,
    _UFFDIO_ZEROPAGE as u32,
));
/// `UFFDIO_WRITEPROTECT`: set or clear write protection; argument [`uffdio_writeprotect`].
/// Linux 5.7.
pub const UFFDIO_WRITEPROTECT: libc::Ioctl = request(iowr::<uffdio_writeprotect>(
    UFFDIO_TYPE,
    _UFFDIO_WRITEPROTECT as u32,
));
/// `UFFDIO_CONTINUE`: map page-cache pages after a minor fault; argument [`uffdio_continue`].
/// Linux 5.13.
pub const UFFDIO_CONTINUE: libc::Ioctl = request(iowr::<uffdio_continue>(
    UFFDIO_TYPE,
    _UFFDIO_CONTINUE as u32,
));
/// `UFFDIO_POISON`: mark a range poisoned (access raises SIGBUS); argument [`uffdio_poison`].
/// Linux 6.6.
pub const UFFDIO_POISON: libc::Ioctl =
    request(iowr::<uffdio_poison>(UFFDIO_TYPE, _UFFDIO_POISON as u32));
/// `UFFDIO_MOVE`: move anonymous pages into a range; argument [`uffdio_move`]. Linux 6.8.
pub const UFFDIO_MOVE: libc::Ioctl = request(iowr::<uffdio_move>(UFFDIO_TYPE, _UFFDIO_MOVE as u32));
/// `USERFAULTFD_IOC_NEW`: on an open `/dev/userfaultfd`, create a userfaultfd. The argument is
/// the `userfaultfd(2)` flags, passed by value, and the new descriptor is the return value.
/// Linux 6.1.
pub const USERFAULTFD_IOC_NEW: libc::Ioctl = request(io(crate::USERFAULTFD_IOC, 0x00));
/// `PAGEMAP_SCAN`: on an open `/proc/<pid>/pagemap`, report (and optionally write-protect) pages
/// by category; argument [`pm_scan_arg`]. Linux 6.7.
pub const PAGEMAP_SCAN: libc::Ioctl = request(iowr::<pm_scan_arg>(PROCFS_IOCTL_MAGIC as u32, 16));
