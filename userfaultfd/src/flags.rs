//! The bit sets exchanged with the kernel: features, ioctls, registration and operation modes.
//!
//! Bits this crate does not know (from a kernel newer than it) are kept, never an error: every
//! set the kernel reports is built with `from_bits_retain`. What `all()`, `from_bits` and `!`
//! consider known is what userfaultfd 0.9 did: the named flags for [`FeatureFlags`] and
//! [`RegisterMode`] (so `FeatureFlags::all()` is every feature this crate names, and
//! `FeatureFlags::from_bits(1 << 40)` is `None`), every bit for [`IoctlFlags`] (0.9 declared
//! them all known, so that future ioctls survive `from_bits`).

use bitflags::bitflags;
use userfaultfd_sys as sys;

bitflags! {
    /// `UFFD_FEATURE_*`: optional behaviour negotiated with `UFFDIO_API`.
    ///
    /// Request them with [`UffdBuilder::require_features`](crate::UffdBuilder::require_features);
    /// ask what the running kernel offers with [`probe`](crate::probe). The kernel version that
    /// introduced each is given; distributions may backport.
    #[derive(Copy, Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct FeatureFlags: u64 {
        /// Write-protect faults are reported (`RegisterMode::WRITE_PROTECT` works). Linux 5.7 on
        /// x86_64 (anonymous memory); needs `CONFIG_HAVE_ARCH_USERFAULTFD_WP`.
        const PAGEFAULT_FLAG_WP = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        /// [`Event::Fork`](crate::Event::Fork) on `fork(2)`. Linux 4.11. Requires
        /// `CAP_SYS_PTRACE` (since about 5.10): without it creation fails with `EPERM`.
        ///
        /// Each `fork` then waits for its event to be read: see
        /// [`Event::Fork`](crate::Event::Fork) for the deadlock to avoid in a handler that
        /// runs in the forking process.
        const EVENT_FORK = sys::UFFD_FEATURE_EVENT_FORK;
        /// [`Event::Remap`](crate::Event::Remap) on a moving `mremap(2)`. Linux 4.11.
        const EVENT_REMAP = sys::UFFD_FEATURE_EVENT_REMAP;
        /// [`Event::Remove`](crate::Event::Remove) on `MADV_DONTNEED`/`MADV_FREE`/`MADV_REMOVE`.
        /// Linux 4.11.
        const EVENT_REMOVE = sys::UFFD_FEATURE_EVENT_REMOVE;
        /// hugetlbfs ranges can be registered for missing faults. Linux 4.11 (probe only).
        const MISSING_HUGETLBFS = sys::UFFD_FEATURE_MISSING_HUGETLBFS;
        /// shmem ranges can be registered for missing faults. Linux 4.11 (probe only).
        const MISSING_SHMEM = sys::UFFD_FEATURE_MISSING_SHMEM;
        /// [`Event::Unmap`](crate::Event::Unmap) on `munmap(2)`. Linux 4.11.
        const EVENT_UNMAP = sys::UFFD_FEATURE_EVENT_UNMAP;
        /// Faults raise `SIGBUS` in the faulting thread instead of producing an event.
        /// Linux 4.14.
        const SIGBUS = sys::UFFD_FEATURE_SIGBUS;
        /// Page-fault events carry the faulting thread's id. Linux 4.14.
        const THREAD_ID = sys::UFFD_FEATURE_THREAD_ID;
        /// hugetlbfs ranges can be registered for minor faults. Linux 5.13.
        const MINOR_HUGETLBFS = sys::UFFD_FEATURE_MINOR_HUGETLBFS;
        /// shmem ranges can be registered for minor faults. Linux 5.14.
        const MINOR_SHMEM = sys::UFFD_FEATURE_MINOR_SHMEM;
        /// Fault addresses are exact, not rounded down to the page. Linux 5.18.
        const EXACT_ADDRESS = sys::UFFD_FEATURE_EXACT_ADDRESS;
        /// Write-protect mode works on hugetlbfs and shmem. Linux 5.19.
        const WP_HUGETLBFS_SHMEM = sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        /// Write protection also applies to unpopulated anonymous pages. Linux 6.4.
        const WP_UNPOPULATED = sys::UFFD_FEATURE_WP_UNPOPULATED;
        /// [`Uffd::poison`](crate::Uffd::poison) (`UFFDIO_POISON`). Linux 6.6.
        const POISON = sys::UFFD_FEATURE_POISON;
        /// Write-protect faults are resolved by the kernel without an event (dirty tracking
        /// with `PAGEMAP_SCAN`). Implies `WP_UNPOPULATED`. Linux 6.7.
        const WP_ASYNC = sys::UFFD_FEATURE_WP_ASYNC;
        /// [`Uffd::r#move`](crate::Uffd::r#move) (`UFFDIO_MOVE`). Linux 6.8.
        const MOVE = sys::UFFD_FEATURE_MOVE;
    }
}

bitflags! {
    /// The ioctls a descriptor or a registered range allows: bit `1 << _UFFDIO_X`, as the
    /// kernel reports them in `uffdio_api.ioctls` and `uffdio_register.ioctls`.
    ///
    /// The mask a registration returns is the kernel's word on what the range supports, with
    /// one known exception: Linux reports `MOVE` for shmem ranges, where `UFFDIO_MOVE` fails
    /// with `EINVAL` (it moves anonymous pages only).
    #[derive(Copy, Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct IoctlFlags: u64 {
        /// `UFFDIO_REGISTER`.
        const REGISTER = 1 << sys::_UFFDIO_REGISTER;
        /// `UFFDIO_UNREGISTER`.
        const UNREGISTER = 1 << sys::_UFFDIO_UNREGISTER;
        /// `UFFDIO_WAKE`.
        const WAKE = 1 << sys::_UFFDIO_WAKE;
        /// `UFFDIO_COPY`.
        const COPY = 1 << sys::_UFFDIO_COPY;
        /// `UFFDIO_ZEROPAGE` (not on hugetlbfs).
        const ZEROPAGE = 1 << sys::_UFFDIO_ZEROPAGE;
        /// `UFFDIO_MOVE` (anonymous memory; Linux 6.8).
        const MOVE = 1 << sys::_UFFDIO_MOVE;
        /// `UFFDIO_WRITEPROTECT` (ranges registered with `RegisterMode::WRITE_PROTECT`).
        const WRITE_PROTECT = 1 << sys::_UFFDIO_WRITEPROTECT;
        /// `UFFDIO_CONTINUE` (ranges registered with `RegisterMode::MINOR`).
        const CONTINUE = 1 << sys::_UFFDIO_CONTINUE;
        /// `UFFDIO_POISON` (Linux 6.6).
        const POISON = 1 << sys::_UFFDIO_POISON;
        /// `UFFDIO_API`.
        const API = 1 << sys::_UFFDIO_API;

        // Every bit is known, as in userfaultfd 0.9: ioctls of newer kernels are kept by
        // `from_bits` and `all()`.
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_REGISTER_MODE_*`: which faults a registered range reports.
    #[derive(Copy, Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct RegisterMode: u64 {
        /// Faults on pages that are not present. Anonymous memory, shmem, hugetlbfs.
        const MISSING = sys::UFFDIO_REGISTER_MODE_MISSING;
        /// Writes to write-protected pages (needs `FeatureFlags::PAGEFAULT_FLAG_WP`; shmem and
        /// hugetlbfs need `WP_HUGETLBFS_SHMEM`).
        const WRITE_PROTECT = sys::UFFDIO_REGISTER_MODE_WP;
        /// Faults on pages present in the page cache but not mapped: shmem and hugetlbfs only
        /// (`MINOR_SHMEM`, `MINOR_HUGETLBFS`); resolved with `UFFDIO_CONTINUE`.
        const MINOR = sys::UFFDIO_REGISTER_MODE_MINOR;
    }
}

bitflags! {
    /// Mode of [`Uffd::copy_with_mode`](crate::Uffd::copy_with_mode) (`UFFDIO_COPY_MODE_*`).
    #[derive(Copy, Clone, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct CopyMode: u64 {
        /// Do not wake the threads waiting on the range; wake them later with
        /// [`Uffd::wake`](crate::Uffd::wake).
        const DONTWAKE = sys::UFFDIO_COPY_MODE_DONTWAKE;
        /// Map the copied pages write-protected (range registered with
        /// `RegisterMode::WRITE_PROTECT`; Linux 5.7).
        const WRITE_PROTECT = sys::UFFDIO_COPY_MODE_WP;
    }
}

bitflags! {
    /// Mode of [`Uffd::zeropage_with_mode`](crate::Uffd::zeropage_with_mode)
    /// (`UFFDIO_ZEROPAGE_MODE_*`).
    #[derive(Copy, Clone, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct ZeropageMode: u64 {
        /// Do not wake the threads waiting on the range.
        const DONTWAKE = sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    }
}

bitflags! {
    /// Mode of [`Uffd::continue_with_mode`](crate::Uffd::continue_with_mode)
    /// (`UFFDIO_CONTINUE_MODE_*`).
    #[derive(Copy, Clone, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct ContinueMode: u64 {
        /// Do not wake the threads waiting on the range.
        const DONTWAKE = sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
        /// Map the pages write-protected (range registered with
        /// `RegisterMode::WRITE_PROTECT`; Linux 6.4).
        const WRITE_PROTECT = sys::UFFDIO_CONTINUE_MODE_WP;
    }
}

bitflags! {
    /// Mode of [`Uffd::r#move`](crate::Uffd::r#move) (`UFFDIO_MOVE_MODE_*`).
    #[derive(Copy, Clone, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
    pub struct MoveMode: u64 {
        /// Do not wake the threads waiting on the destination range.
        const DONTWAKE = sys::UFFDIO_MOVE_MODE_DONTWAKE;
        /// Holes (unpopulated pages) in the source are allowed and count as moved, instead of
        /// failing with `ENOENT`.
        const ALLOW_SRC_HOLES = sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
    }
}
