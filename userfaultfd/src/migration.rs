//! Migrating from crates.io `userfaultfd` 0.9 (and `userfaultfd-sys` 0.6).
//!
//! This module holds no code: it is the migration guide.
//!
//! # The rule this crate holds to
//!
//! Code that compiled against 0.9 and still compiles against this crate behaves as it did,
//! except where 0.9 was wrong; where 0.9 was wrong, the new behaviour is what correct 0.9
//! handlers already expect, or old code fails to compile and this guide says what to write
//! instead. The repository's `compat` crate is 0.9-style code (a snapshot-restore handler in
//! Firecracker's shape, a tracer's error handling, 0.9's own tests) built with exactly the two
//! edits below and tested on every memory type.
//!
//! # The two edits
//!
//! ```toml
//! # before: userfaultfd = { version = "0.9", features = ["linux5_13"] }
//! userfaultfd = { version = "0.10", features = ["linux5_13"] }  # the features do nothing now
//! ```
//!
//! ```rust,ignore
//! // before: use nix::errno::Errno;
//! use userfaultfd::Errno;
//! ```
//!
//! [`Errno`](crate::Errno) is shaped like nix's: a fieldless `#[repr(i32)]` enum of every
//! Linux `errno`, so `Errno::EEXIST` in patterns, `use Errno::*`, `e as i32`, `e.desc()`
//! (a `&'static str`), `Errno::from_i32(n)` and `Errno::last()` work as they did. It also
//! names the kernel-internal numbers 512–531 (`ENOTSUPP` = 524 ...), which nix turned into
//! `UnknownErrno`: an error carrying one of those now keeps its number.
//!
//! # What fails to compile, and what to write instead
//!
//! | 0.9 code | write instead | why |
//! |---|---|---|
//! | `Event::Pagefault { thread_id, .. }` with `thread_id: nix::unistd::Pid` (feature `linux4_14`) | `thread_id: Option<libc::pid_t>`: `thread_id.map(Pid::from_raw)` | 0.9 gave an undefined value when `FeatureFlags::THREAD_ID` was not enabled; now it is `Some` only when it is |
//! | `Event::Pagefault { kind, rw, addr }` without `..` (0.9 without `linux4_14` had no `thread_id`) | add `..` | the field always exists now |
//! | an exhaustive `match` on [`Error`](crate::Error) | add a `_ =>` arm | `Error` has variants 0.9 had not, and is `#[non_exhaustive]` |
//! | `match kind { FaultKind::Missing => .. }` written without the `linux5_7`/`linux5_13` features | add `FaultKind::WriteProtected` and `FaultKind::Minor` arms | every fault kind always exists now |
//! | `?` on a `nix::Error` in a function returning `userfaultfd::Result` (0.9 had `From<nix::Error> for Error`) | `.map_err(\|e\| Error::SystemError(Errno::from_i32(e as i32)))` | this crate does not depend on nix |
//! | `unsafe { uffd.poison(..) }` | (compiles, with an `unused_unsafe` warning) drop the `unsafe` | safe by the [safety model](crate#safety-model) |
//! | `userfaultfd_sys::UFFDIO_COPY` used as `u32` (userfaultfd-sys 0.6) | use it as is in `libc::ioctl(fd, UFFDIO_COPY, ..)`; where a `u32` is needed, `UFFDIO_COPY as u32` | the request codes are `libc::Ioctl` (`c_ulong` on glibc, `c_int` on musl), what `libc::ioctl` takes, with the target architecture's encoding |
//! | `userfaultfd_sys::__kernel_fsid_t`, `userfaultfd_sys::__kernel_fd_set` (types of `linux/posix_types.h` that 0.6's bindings carried along) | `libc::fsid_t`, `libc::fd_set` | the bindings hold the userfaultfd header's items only |
//!
//! userfaultfd-sys 0.7 keeps 0.6's item names (bindgen's names for the kernel's), with every item
//! of the newest kernel compiled in whatever the features (`linux4_14`, `linux5_7`,
//! `linux5_13` still exist, and imply each other as in 0.6).
//!
//! # What behaves differently, because 0.9 was wrong
//!
//! | operation | 0.9 | now | a correct 0.9 handler |
//! |---|---|---|---|
//! | `copy` meets `EAGAIN` (a page further on is populated, or a non-cooperative event is pending) | `PartiallyCopied(copy)`, where `copy` could be `-EAGAIN` cast to `usize` (bug #91) | `PartiallyCopied(n)` with `0 <= n <= len` | defers the fault on `PartiallyCopied(n) if n == 0 \|\| n == (-EAGAIN) as usize`: still does |
//! | `into_raw_fd` | the descriptor was closed again when the `Uffd` dropped | given away: never closed by this crate | works; no more closing a reused descriptor number |
//! | `read_event`/`read_events` interrupted by a signal | `SystemError(EINTR)` | retried | works |
//! | dropping a half-iterated `read_events` iterator | unread fork descriptors leaked | closed | works |
//! | `create()` when `/dev/userfaultfd` exists but refuses this process (`EACCES`) | `OpenDevUserfaultfd(err)` | falls back to the `userfaultfd(2)` system call | works where the system call is allowed |
//! | `create()` when no way works | `SystemError(errno)` of the system call | [`CreateFailed`](crate::Error::CreateFailed) saying why each way failed; `err.errno()` is the same `errno` | a handler that matched `SystemError(EPERM)` here must match `CreateFailed { syscall: Errno::EPERM, .. }` or test `err.errno()` |
//! | `create()` with a required feature the kernel lacks | `SystemError(EINVAL)` | [`UnsupportedFeatures`](crate::Error::UnsupportedFeatures)`(missing)`; `err.errno()` is `EINVAL` | as above: match the new variant or test `err.errno()` |
//! | `Event::Pagefault::thread_id` without `THREAD_ID` | an undefined `Pid` | `None` | (fails to compile, above) |
//! | `Errno::from_i32(n)` for a kernel-internal `n` (512–531, e.g. `ENOTSUPP` = 524) | `UnknownErrno` (`as i32` = 0: the number lost) | the named value (`as i32` = `n`, `desc()` the kernel's text) | one matching `UnknownErrno` for these numbers takes its `_` arm; logs show the number |
//!
//! The three creation cases and the kernel-internal `errno`s are the only ones where a
//! `match` that compiled for 0.9 can take a different arm; they are kept because 0.9's
//! answer did not say what was wrong (the device case did not work at all, and
//! `UnknownErrno` lost the number).
//!
//! # One raw descriptor, two `Uffd`s: `from_raw_fd` takes ownership
//!
//! 0.9's `Uffd` held a bare `RawFd` and closed it on drop, ignoring errors. Code that wraps
//! one descriptor number twice — `Uffd::from_raw_fd(fd)` for the handler, and again for a
//! second thread or struct (real 0.9 clients do) — closed it twice: the second `close`
//! failed with `EBADF` (ignored), or, if another thread had opened a file meanwhile and got
//! the same number, closed that file. Here a `Uffd` is an [`OwnedFd`](std::os::fd::OwnedFd),
//! as [`FromRawFd`](std::os::fd::FromRawFd)'s contract (ownership of an open descriptor
//! nothing else owns) has always said:
//!
//! - a **debug build aborts** on the second drop: `fatal runtime error: IO Safety violation:
//!   owned file descriptor already closed` (the standard library's check; `SIGABRT`);
//! - a release build ignores the `EBADF`, as 0.9 did (and can still close a reused number).
//!
//! The fix: wrap the number once, and give every further owner its own descriptor or a
//! reference:
//!
//! ```rust,ignore
//! // before (0.9): two owners of one number
//! let handler = unsafe { Uffd::from_raw_fd(fd) };
//! let poller = unsafe { Uffd::from_raw_fd(fd) };
//! // after: one owner; a dup for the other (or an Arc<Uffd>, or `&Uffd`, or `as_fd()`)
//! let handler = unsafe { Uffd::from_raw_fd(fd) };
//! let poller = handler.try_clone()?; // closed on its own
//! ```
//!
//! Where the second owner must not close the descriptor at all, keep the raw number, or a
//! `BorrowedFd` from [`AsFd::as_fd`](std::os::fd::AsFd::as_fd). The `compat` crate's tests
//! run the 0.9 code in a child process and see the abort, and the fix closing each
//! descriptor once.
//!
//! # What is the same on purpose
//!
//! - Each 0.9 operation fails with the variant it failed with in 0.9: `SystemError(errno)`
//!   for `read`, `UFFDIO_API`, `register`, `register_with_mode`, `unregister`, `wake`,
//!   `write_protect`, `remove_write_protection` and `r#continue`; `CopyFailed` /
//!   `PartiallyCopied` for `copy`; `ZeropageFailed` for `zeropage`, `ZeropageFailed(EAGAIN)`
//!   included. `r#continue` returns `Ok(bytes)` when the kernel stopped early after mapping
//!   some, as in 0.9. New functions report partial progress uniformly
//!   (`copy_with_mode`, [`zeropage_with_mode`](crate::Uffd::zeropage_with_mode),
//!   `continue_with_mode`, `poison`, `move`: `PartiallyCopied(n)`, `n >= 0`).
//! - `FeatureFlags::all()` and `RegisterMode::all()` are the named flags (now including the
//!   features of kernels up to 6.8: requiring `FeatureFlags::all()` needs Linux 6.8 and
//!   `CAP_SYS_PTRACE`), and `from_bits` refuses unknown bits, as in 0.9; `IoctlFlags` keeps
//!   0.9's "every bit is known". Unknown bits the kernel reports are kept.
//! - `Event` and `FaultKind` are not `#[non_exhaustive]`, so 0.9's exhaustive matches compile.
//!   The kernel adds an event or fault kind about once in five years; such an addition will be
//!   a new minor version of this 0.x crate.
//! - `unsafe` is where 0.9 had it (`copy`, `zeropage`, `from_raw_fd`).
//!
//! # New, with no 0.9 counterpart
//!
//! [`probe`](crate::probe), [`Uffd::features`](crate::Uffd::features), `copy_with_mode`,
//! `zeropage_with_mode`, `continue_with_mode`, `poison`, `r#move`, `try_clone`,
//! `TryFrom<OwnedFd>` (checks that the descriptor is a userfaultfd, and gives back what is
//! not) and `Into<OwnedFd>`, `Event: Send + Sync`, dirty-page tracking
//! ([`DirtyTracker`](crate::DirtyTracker), Linux 6.7+), and the cargo feature `tokio`.
