//! Raw bindings to the Linux userfaultfd interface (`linux/userfaultfd.h`) and to the
//! `PAGEMAP_SCAN` ioctl of `/proc/<pid>/pagemap` (`linux/fs.h`).
//!
//! For a safe interface, use the `userfaultfd` crate. This crate is for code that talks to the
//! kernel directly: every item has the kernel's name, type and value, and every ioctl request
//! code can be handed straight to `libc::ioctl`.
//!
//! # What is here
//!
//! - The kernel structs: [`uffdio_api`], [`uffdio_range`], [`uffdio_register`],
//!   [`uffdio_copy`], [`uffdio_zeropage`], [`uffdio_writeprotect`], [`uffdio_continue`],
//!   [`uffdio_poison`], [`uffdio_move`], [`uffd_msg`], [`pm_scan_arg`], [`page_region`].
//! - The constants: `UFFD_API`, `UFFD_FEATURE_*`, `UFFD_EVENT_*`, `UFFD_PAGEFAULT_FLAG_*`,
//!   `UFFDIO_REGISTER_MODE_*` and the other `UFFDIO_*_MODE_*` flags, `_UFFDIO_*` (the ioctl
//!   numbers, whose bit `1 << _UFFDIO_X` the kernel reports in `ioctls` masks), `UFFDIO`,
//!   `USERFAULTFD_IOC`, `UFFD_USER_MODE_ONLY`, `PAGE_IS_*`, `PM_SCAN_*`.
//! - The ioctl request codes ([`ioctl`] module, re-exported here): [`UFFDIO_API`],
//!   [`UFFDIO_REGISTER`], [`UFFDIO_UNREGISTER`], [`UFFDIO_WAKE`], [`UFFDIO_COPY`],
//!   [`UFFDIO_ZEROPAGE`], [`UFFDIO_WRITEPROTECT`], [`UFFDIO_CONTINUE`], [`UFFDIO_POISON`],
//!   [`UFFDIO_MOVE`], [`USERFAULTFD_IOC_NEW`], [`PAGEMAP_SCAN`].
//!
//! Integer constants have the types the kernel uses them with: feature bits, mode flags, fault
//! flags, `PAGE_IS_*` categories and `PM_SCAN_*` flags are `u64` (the fields they go in are
//! `__u64`); `UFFD_EVENT_*` are `u8` like [`uffd_msg::event`](uffd_msg); `UFFD_USER_MODE_ONLY`
//! and `USERFAULTFD_IOC` are `u32`, as in userfaultfd-sys 0.6.
//!
//! # Kernel version
//!
//! The bindings always describe the **newest** kernel interface this crate knows: Linux 6.18,
//! whose userfaultfd API is that of 6.8 (`UFFDIO_MOVE`) plus `PAGE_IS_GUARD` (6.15) for
//! `PAGEMAP_SCAN`. When the build host's headers are older (Debian bookworm ships 6.1), the
//! missing items come from `include/newest.h` with the newest layout and values, so a crate
//! built on an old distribution can use a new kernel. Whether the *running* kernel supports an
//! item is a run-time question: ask `UFFDIO_API` (the `userfaultfd` crate's `probe()` does).
//!
//! The aggregate masks [`UFFD_API_FEATURES`], [`UFFD_API_IOCTLS`], [`UFFD_API_RANGE_IOCTLS`] and
//! [`UFFD_API_RANGE_IOCTLS_BASIC`] likewise have the newest kernel's value, whatever header the
//! build host has.
//!
//! # How the bindings are made
//!
//! With the cargo feature `bindgen` (on by default), the build script runs bindgen over the
//! kernel headers of the build host, or of the tree named by the `LINUX_HEADERS` environment
//! variable (a tree with `include/` and `include/uapi/`). Without it, or where bindgen cannot
//! deliver, the build uses bindings the project generated itself and keeps in
//! `src/generated.rs`. Those were generated from the **Linux 6.12 uapi headers** (Debian's
//! `linux-headers-6.12.*-common`) plus `include/newest.h`; `ci/regen-bindings` refreshes them,
//! and CI regenerates them and fails on any difference. Either way the output is put in a
//! canonical order, so every source gives byte-identical bindings.
//!
//! With the feature, the checked-in bindings are used, and a `cargo:warning` gives the reason
//! (bindgen's whole error where there is one), when libclang cannot be loaded (a machine without
//! it), when bindgen fails, when its output lacks an item of `src/generated.rs` (bindgen leaves
//! out a macro it cannot evaluate instead of failing), or when `USERFAULTFD_SYS_USE_FALLBACK=1`
//! or `DOCS_RS` is set. Bindgen's scratch files go to the build's `OUT_DIR`: the source folder
//! may be read-only (vendored sources, distribution packages, Nix), and concurrent builds of it
//! do not interfere.
//!
//! The structs are generated without layout tests (the checked-in file must serve every target);
//! this crate's own tests check sizes and offsets, which are the same on every architecture.
//!
//! # Structs that grow
//!
//! The kernel extends these structs only at the end, and each ioctl's request code carries the
//! size of the struct it was compiled against. Build them with `Default::default()` (all
//! zeroes) and then set the fields you use, rather than with a struct literal, so that your code
//! keeps compiling when a later version of this crate adds a field. The output-only fields at
//! the end of a struct ([`uffdio_copy::copy`](uffdio_copy), [`uffdio_zeropage`]`.zeropage`,
//! [`uffdio_continue`]`.mapped`, [`uffdio_poison`]`.updated`, [`uffdio_move`]`.move_`) are
//! written by the kernel and never read by it. [`pm_scan_arg::size`](pm_scan_arg) must be set
//! to `size_of::<pm_scan_arg>()`; the kernel uses it to tell versions apart.
//!
//! # Example: the `UFFDIO_API` handshake with `libc::ioctl`
//!
//! ```
//! use userfaultfd_sys::*;
//!
//! // UFFD_USER_MODE_ONLY lets an unprivileged process create the descriptor (Linux 5.11+).
//! let flags = libc::O_CLOEXEC | UFFD_USER_MODE_ONLY as libc::c_int;
//! // SAFETY: userfaultfd(2) takes one integer argument and returns a new descriptor or -1.
//! let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as libc::c_int;
//! if fd < 0 {
//!     // A kernel without userfaultfd (ENOSYS), a seccomp filter, or Linux before 5.11, which
//!     // does not know UFFD_USER_MODE_ONLY (EINVAL).
//!     eprintln!("userfaultfd: {}", std::io::Error::last_os_error());
//!     return;
//! }
//!
//! let mut api = uffdio_api { api: UFFD_API, ..Default::default() };
//! // SAFETY: fd is a userfaultfd and `api` is a valid uffdio_api the kernel may write.
//! let ret = unsafe { libc::ioctl(fd, UFFDIO_API, &mut api) };
//! assert_eq!(ret, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());
//!
//! // The kernel reports every feature it supports, and the ioctls now allowed on `fd`.
//! assert_ne!(api.ioctls & (1 << _UFFDIO_REGISTER), 0);
//! println!("features: {:#x}", api.features);
//! // SAFETY: fd is open and owned here.
//! unsafe { libc::close(fd) };
//! ```
//!
//! # Cargo features
//!
//! - `bindgen` (default): generate the bindings at build time, as described above. Without it
//!   (`default-features = false`), the checked-in bindings: the same items, no libclang, and a
//!   build of a few seconds instead of some twenty build dependencies.
//! - `linux4_14`, `linux5_7` and `linux5_13` exist so that manifests written for
//!   userfaultfd-sys 0.6 keep building. They do nothing: every item is always compiled in.

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod ioctl;

/// The generated bindings: the kernel's own names, which are not Rust style and carry no docs of
/// their own (see the kernel header for each).
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;
pub use ioctl::{
    PAGEMAP_SCAN, UFFDIO_API, UFFDIO_CONTINUE, UFFDIO_COPY, UFFDIO_MOVE, UFFDIO_POISON,
    UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_WRITEPROTECT, UFFDIO_ZEROPAGE,
    USERFAULTFD_IOC_NEW,
};

/// `UFFD_API_IOCTLS`: the ioctls a descriptor allows after a successful `UFFDIO_API`
/// (REGISTER, UNREGISTER, API).
///
/// Written out here because its value, `0x8000_0000_0000_0003`, does not fit the `i64` that
/// bindgen evaluates macros into, so bindgen drops it. A test compares it with the header.
pub const UFFD_API_IOCTLS: u64 = 1 << _UFFDIO_REGISTER | 1 << _UFFDIO_UNREGISTER | 1 << _UFFDIO_API;

#[cfg(test)]
mod layout_tests;
