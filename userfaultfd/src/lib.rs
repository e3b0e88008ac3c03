//! Handle page faults in user space with Linux
//! [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html).
//!
//! A userfaultfd lets one thread serve the page faults of others: register a range of memory,
//! and a thread that touches a missing page of it blocks while a handler reads an [`Event`]
//! from the descriptor and resolves the fault by placing the page's contents. This is how
//! virtual machine monitors restore snapshots lazily, how post-copy live migration and CRIU's
//! lazy pages work, and — with write protection — how garbage collectors and databases track
//! the pages written since a point in time.
//!
//! # Which API for which job
//!
//! | job | use |
//! |---|---|
//! | serve a mapping from a snapshot or a stream (lazy restore, post-copy): worker threads, fault-around, `REMOVE`/`UNMAP`/`REMAP` handled, clean stop, statistics | [`serve::Server`] with a [`serve::PageSource`] |
//! | track which pages of a range were written since the last look (Linux 6.7+) | [`DirtyTracker`] |
//! | serve faults yourself: read events, place pages | [`UffdBuilder`] → [`Uffd`]: [`register`](Uffd::register), [`read_event`](Uffd::read_event) / [`read_events`](Uffd::read_events), [`copy`](Uffd::copy), [`zeropage`](Uffd::zeropage), [`r#continue`](Uffd::continue), [`wake`](Uffd::wake), [`write_protect`](Uffd::write_protect), [`poison`](Uffd::poison), [`r#move`](Uffd::move) |
//! | serve faults from a tokio runtime | `AsyncUffd` (cargo feature `tokio`) |
//! | serve a snapshot straight from object storage (`http://`, `https://`, `s3://`) | the crate [`userfaultfd-objstore`](https://docs.rs/userfaultfd-objstore): a [`serve::PageSource`] for the page server |
//! | restore a Firecracker snapshot lazily (its `Uffd` memory backend) | the binary `uffd-handler` (the repository's [`uffd-handler/`](https://github.com/userfaultfd-rs/userfaultfd-rs/tree/main/uffd-handler)), built on the page server |
//! | ask what the running kernel supports | [`probe`] |
//! | move from crates.io `userfaultfd` 0.9 | [`migration`]: change the dependency line and the `Errno` import |
//!
//! ```no_run
//! use userfaultfd::{Event, UffdBuilder};
//!
//! # fn main() -> userfaultfd::Result<()> {
//! // SAFETY: sysconf has no memory effects.
//! let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
//! let uffd = UffdBuilder::new().close_on_exec(true).create()?;
//! // SAFETY: a fresh private anonymous mapping; no Rust object lives in it.
//! let addr = unsafe {
//!     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
//!                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
//! };
//! uffd.register(addr, len)?;
//! // ... another thread touches `addr` and blocks ...
//! if let Some(Event::Pagefault { addr: fault, .. }) = uffd.read_event()? {
//!     let page = vec![0x5au8; len];
//!     // SAFETY: `fault` is inside the registered mapping, which holds no Rust object.
//!     unsafe { uffd.copy(page.as_ptr().cast(), fault, len, true)? };
//! }
//! # Ok(()) }
//! ```
//!
//! Runnable examples are in the repository's
//! [`userfaultfd/examples`](https://github.com/userfaultfd-rs/userfaultfd-rs/tree/main/userfaultfd/examples):
//! `lazy_restore` (the page server), `record_replay` (the page server's working sets), `probe`
//! (what this kernel supports), `manpage` (the userfaultfd(2) demo), `dirty_tracking`,
//! `async_server` (feature `tokio`), `uffd_stress` (the kernel's uffd-stress on this crate).
//!
//! # Safety model
//!
//! One rule decides which functions are `unsafe`:
//!
//! > A safe function may change **whether and when** an access to memory completes — make it
//! > block until a handler serves it, fail, or raise `SIGBUS` — but never **what it reads**.
//! > A function that places, replaces or moves the contents of memory is `unsafe`: the caller
//! > promises that no Rust object relies on the old contents of the destination.
//!
//! Applied:
//!
//! | safe | why |
//! |---|---|
//! | [`register`](Uffd::register), [`register_with_mode`](Uffd::register_with_mode), [`unregister`](Uffd::unregister) | accesses to the range block until served, or raise `SIGBUS` (`FeatureFlags::SIGBUS`); registering your own `Vec` makes its accesses wait for you, which is a hang, not undefined behaviour |
//! | [`write_protect`](Uffd::write_protect), [`remove_write_protection`](Uffd::remove_write_protection), [`wake`](Uffd::wake) | writes block or resume; contents are unchanged |
//! | [`r#continue`](Uffd::continue), [`continue_with_mode`](Uffd::continue_with_mode) | maps what the page cache already holds: the bytes any other mapping of the file reads |
//! | [`poison`](Uffd::poison) | missing pages only: accesses raise `SIGBUS` instead of blocking |
//! | [`DirtyTracker`] | write protection resolved in the kernel; contents unchanged |
//!
//! | `unsafe` | why |
//! |---|---|
//! | [`copy`](Uffd::copy), [`copy_with_mode`](Uffd::copy_with_mode), [`zeropage`](Uffd::zeropage), [`zeropage_with_mode`](Uffd::zeropage_with_mode) | places new contents (a missing page of a private file mapping would otherwise read the file) |
//! | [`r#move`](Uffd::move) | moves contents, and leaves the source range empty |
//! | `FromRawFd::from_raw_fd` | takes ownership of a descriptor |
//!
//! `unsafe` on `copy` and `zeropage` is as in userfaultfd 0.9; so is safe `continue`,
//! `register` and `write_protect`. The one change is [`poison`](Uffd::poison), new in this
//! crate, which is safe by the rule.
//!
//! Addresses are raw pointers (`*mut c_void`), as in 0.9, because they usually belong to
//! memory Rust does not own (a guest's memory, another process's address space): the crate
//! passes them to the kernel and never dereferences them.
//!
//! # Kernel support is decided at run time
//!
//! Every operation is always compiled in (the cargo features `linux4_14`, `linux5_7` and
//! `linux5_13` of userfaultfd 0.9 still exist and do nothing). What the running kernel offers
//! is asked with [`probe`]; what a descriptor enabled with [`Uffd::features`]. An operation the
//! kernel lacks fails with an [`Error`] that names the `errno` and what it means; each
//! [`FeatureFlags`] constant says which kernel added it.
//!
//! # Cargo features
//!
//! - `tokio`: `AsyncUffd`, an event reader for tokio runtimes (over tokio's `AsyncFd`). Off by
//!   default: without it, tokio is not in the dependency tree.
//! - `bindgen` (default): userfaultfd-sys generates its bindings with bindgen (libclang) at
//!   build time. `default-features = false` uses its checked-in bindings instead: the same
//!   items, no libclang, a much shorter build.
//! - `linux4_14`, `linux5_7`, `linux5_13`: kept from userfaultfd 0.9, and do nothing.
//! - `fuzzing`: not part of the API and not covered by semver; exposes the event decoder to
//!   this crate's fuzz target.
//!
//! # Privileges
//!
//! Creating a userfaultfd needs one of: read-write access to `/dev/userfaultfd` (Linux 6.1+,
//! root-only by default), `vm.unprivileged_userfaultfd = 1`, `CAP_SYS_PTRACE`, or — the
//! default of [`UffdBuilder`] — user-mode-only handling (Linux 5.11+), which needs no
//! privilege but cannot serve faults the kernel itself takes (a `read(2)` into the range gets
//! `EFAULT`). [`FeatureFlags::EVENT_FORK`] needs `CAP_SYS_PTRACE`.
//!
//! # References
//!
//! [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html),
//! [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html),
//! and the kernel's
//! [admin guide](https://docs.kernel.org/admin-guide/mm/userfaultfd.html).

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tokio")]
mod async_uffd;
mod blocking;
mod builder;
pub mod dirty;
mod errno;
mod error;
mod event;
mod flags;
mod ioctl;
pub mod migration;
mod open;
mod probe;
mod read;
mod rejected;
pub mod serve;
mod syscall;
mod uffd;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_uffd::AsyncUffd;
pub use builder::UffdBuilder;
pub use dirty::DirtyTracker;
pub use errno::Errno;
pub use error::{Error, Result};
#[cfg(feature = "fuzzing")]
pub use event::decode_untrusted;
pub use event::{Event, FaultKind, ReadWrite};
pub use flags::{
    ContinueMode, CopyMode, FeatureFlags, IoctlFlags, MoveMode, RegisterMode, ZeropageMode,
};
pub use probe::{probe, Capabilities};
pub use read::{EventBuffer, Events};
pub use rejected::Rejected;
pub use uffd::Uffd;

/// The raw bindings this crate is built on, for what the safe API does not cover.
pub use userfaultfd_sys as sys;
