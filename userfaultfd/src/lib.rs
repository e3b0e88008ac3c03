//! Handle page faults in user space with Linux
//! [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html).
//!
//! A userfaultfd lets one thread serve the page faults of others: register a range of memory,
//! and a thread that touches a missing page of it blocks while a handler reads an [`Event`]
//! from the descriptor and resolves the fault by placing the page's contents
//! ([`Uffd::copy`], [`Uffd::zeropage`], [`Uffd::r#continue`](Uffd::continue),
//! [`Uffd::r#move`](Uffd::move)). This is how virtual machine monitors restore snapshots
//! lazily, how post-copy live migration and CRIU's lazy pages work, and — with write
//! protection — how garbage collectors and databases track the pages written since a point
//! in time ([`dirty::DirtyTracker`]).
//!
//! ```no_run
//! use userfaultfd::{Event, UffdBuilder};
//!
//! # fn main() -> userfaultfd::Result<()> {
//! let uffd = UffdBuilder::new().close_on_exec(true).create()?;
//! let len = 4096;
//! // SAFETY: a fresh private anonymous mapping; no Rust object lives in it.
//! let addr = unsafe {
//!     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
//!                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
//! };
//! uffd.register(addr, len)?;
//! // ... another thread touches `addr` and blocks ...
//! if let Some(Event::Pagefault { addr: fault, .. }) = uffd.read_event()? {
//!     let page = [0x5au8; 4096];
//!     // SAFETY: `fault` is inside the registered mapping, which holds no Rust object.
//!     unsafe { uffd.copy(page.as_ptr().cast(), fault, len, true)? };
//! }
//! # Ok(()) }
//! ```
//!
//! # Kernel support is decided at run time
//!
//! Every operation is always compiled in (the cargo features `linux4_14`, `linux5_7` and
//! `linux5_13` of userfaultfd 0.9 still exist and do nothing). What the running kernel offers
//! is asked with [`probe`]; what a descriptor enabled with [`Uffd::features`]. An operation the
//! kernel lacks fails with an [`Error`] that names the operation, the `errno`, and what it
//! means.
//!
//! # Where each ioctl is wrapped
//!
//! One module per ioctl under `src/ioctl/` (see the table in that module's source), creation
//! in `builder.rs` and `open.rs`, event reading in `read.rs` and decoding in `event.rs`,
//! run-time probing in `probe.rs`, dirty-page tracking in `dirty/` (the public type in
//! `mod.rs`, the `PAGEMAP_SCAN` call and its resume-from-`walk_end` loop in `scan.rs`), and
//! the async reader in `async_uffd.rs` (feature `tokio`).
//!
//! # Cargo features
//!
//! - `tokio`: `AsyncUffd`, an event reader for tokio runtimes (over tokio's `AsyncFd`). Off by
//!   default: without it, tokio is not in the dependency tree.
//! - `linux4_14`, `linux5_7`, `linux5_13`: kept from userfaultfd 0.9, and do nothing.
//!
//! # Privileges
//!
//! Creating a userfaultfd needs one of: read-write access to `/dev/userfaultfd` (Linux 6.1+,
//! root-only by default), `vm.unprivileged_userfaultfd = 1`, `CAP_SYS_PTRACE`, or — the
//! default of [`UffdBuilder`] — user-mode-only handling (Linux 5.11+), which needs no
//! privilege. [`FeatureFlags::EVENT_FORK`] needs `CAP_SYS_PTRACE`.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tokio")]
mod async_uffd;
mod builder;
pub mod dirty;
mod errno;
mod error;
mod event;
mod flags;
mod ioctl;
mod open;
mod probe;
mod read;
pub mod serve;
mod uffd;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_uffd::AsyncUffd;
pub use builder::UffdBuilder;
pub use dirty::DirtyTracker;
pub use errno::Errno;
pub use error::{Error, Result};
pub use event::decode_untrusted;
pub use event::{Event, FaultKind, ReadWrite};
pub use flags::{ContinueMode, CopyMode, FeatureFlags, IoctlFlags, MoveMode, RegisterMode};
pub use probe::{probe, Capabilities};
pub use read::{EventBuffer, Events};
pub use uffd::Uffd;

/// The raw bindings this crate is built on, for what the safe API does not cover.
pub use userfaultfd_sys as sys;
