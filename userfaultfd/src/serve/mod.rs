//! A page server: serve one or more registered regions from a [`PageSource`] with worker
//! threads — lazy restore of a snapshot, post-copy migration — in one call.
//!
//! ```no_run
//! use std::sync::Arc;
//! use userfaultfd::serve::{MappedFile, Region, Server};
//! use userfaultfd::UffdBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshot = Arc::new(MappedFile::new(&std::fs::File::open("memory.snap")?)?);
//! let len = 1 << 30;
//! // SAFETY: a fresh private anonymous mapping; no Rust object lives in it.
//! let addr = unsafe {
//!     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
//!                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
//! };
//! let uffd = UffdBuilder::new()
//!     .close_on_exec(true)
//!     .require_features(userfaultfd::serve::EVENTS)
//!     .create()?;
//! // SAFETY: the region holds no Rust object: its pages get the snapshot's contents.
//! let server = unsafe { Server::builder().region(Region::new(addr, len)).start(uffd, snapshot)? };
//! // ... run the workload: its page faults are served ...
//! let finished = server.stop();
//! println!("{:?}", finished.stats);
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Workers poll the userfaultfd (non-blocking) together with a stop eventfd (and, when
//! serving another process, its pidfd). A worker that finds it readable takes the server's
//! lock *exclusively*, reads a batch of messages and applies the non-cooperative events among
//! them (marks pages discarded, unmaps, moves) before releasing it; it then serves the page
//! faults it read, in parallel with the other workers. A placement reads the source without
//! the lock, then takes the lock *shared* for the ioctl and makes it only if, there, the
//! address map has not changed and none of its pages was marked discarded meanwhile
//! (otherwise it starts over). So a placement either completes before an event is read — and
//! the kernel's zap that follows the read removes what it placed — or sees the event's marks:
//! a discarded page is never refilled with the source's stale contents, and a slow source
//! never delays the reading of events (nor the `madvise`/`munmap` waiting for them).
//!
//! A worker serves the faults it reads itself; with several workers each reads one message
//! at a time, so that the next fault goes to another worker and a slow (remote) source is
//! waited on by several workers at once.
//!
//! A fault places the block of [`ServerBuilder::fault_around`] bytes around the faulting
//! page (aligned, clipped to the region and to pages not yet placed), the faulting page
//! first. The background fill (optional) places the rest of the regions block by block at the
//! lowest CPU priority. Nothing is allocated per fault after start-up; statistics are counted
//! per worker and summed when read.
//!
//! # Events
//!
//! | what happens | the server |
//! |---|---|
//! | page fault (`MISSING`) | places the block around it from the source (`COPY`; zero pages by `ZEROPAGE`, or a copy of zeros on hugetlbfs), or zeros for a page marked discarded |
//! | page fault (`MINOR`, [`Backend::Continue`]) | maps the block from the page cache (`CONTINUE`); a page absent from the page cache gets a zero page |
//! | `EEXIST` (the page is already there) | wakes the faulting address; a fault-around block continues after the present page |
//! | `EAGAIN` with progress `n` (`PartiallyCopied`) | continues from `n` (the next page is present: `EEXIST`, skipped) |
//! | `EAGAIN` with no progress (an event is pending) | reads the pending messages (applying the events), then retries the same ioctl at once (re-checking the page state); if the event was already read, the kernel refuses placements until the thread that caused it resumes: retries at once a few times, then yields, then sleeps 20 µs between tries — so that under a stream of `REMOVE`s a retry still lands between two of them |
//! | `REMOVE` (`MADV_DONTNEED`, `MADV_REMOVE`, `MADV_FREE`) | marks the pages discarded: a later fault gets zeros, never the source. `Continue { private: false }`: only unmarks them (the mapping is the file: the kernel itself shows the file's contents after `DONTNEED`; after `MADV_REMOVE` the hole faults as missing and gets a zero page) |
//! | `UNMAP` (`munmap`) | stops serving the range (fault-around and background fill skip it) |
//! | `REMAP` (`mremap` that moves) | serves the pages at their new address, from the same source offsets |
//! | `FORK` | refused: [`ServerBuilder::start`] rejects a descriptor with `EVENT_FORK`. A forked child then does not inherit the registration and sees the parent's memory as it is at the fork (pages not yet placed are empty: zeros on anonymous memory); fork only after the regions are filled, or mark them `MADV_DONTFORK` |
//! | the faulting process exits (`ESRCH`, or its pidfd becomes readable, see [`ServerBuilder::peer_process`]) | every worker stops; [`Finished::outcome`] is `Ok(Exit::ProcessExited)` |
//! | [`Server::stop`] | wakes every worker (eventfd) and joins them (a worker busy with a fault finishes that fault first): no thread left blocked in the server. Faults arriving afterwards wait on [`Finished::uffd`] |
//!
//! A fault read before a `REMOVE` and served concurrently with it is an access racing with
//! its own discard: the server places the source's page either before the event is read (the
//! discard's zap then removes it: later accesses read zeros) or after the marks (the fault
//! gets zeros). Either order is one the process could have seen without userfaultfd.
//!
//! # Working sets: record and replay
//!
//! Clones of one snapshot touch largely the same pages. With [`ServerBuilder::record`], the
//! server notes each page a demand fault asks for, once, in the order of first touch (an
//! atomic bitmap and an order array allocated at start: no lock and no allocation per fault).
//! The result is a [`WorkingSet`] of source pages, tied to the snapshot's [`SnapshotId`];
//! [`WorkingSet::save`] writes it as a compact, versioned, checksummed file. The next restore
//! loads it ([`WorkingSet::load`]) and passes it to [`ServerBuilder::replay`]: a thread then
//! places those pages in that order while the workers serve faults, so most of them are in
//! place before they are touched. A record of another snapshot is refused when the server
//! starts; [`working_set::merge`] unites the records of several runs.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use userfaultfd::serve::{MappedFile, Region, Server, WorkingSet};
//! # fn f(uffd: userfaultfd::Uffd, snapshot: Arc<MappedFile>, region: Region)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let mut builder = Server::builder();
//! builder.region(region).record(true);
//! match WorkingSet::load("memory.ws") {
//!     Ok(ws) => {
//!         builder.replay(ws);
//!     }
//!     // The first restore: one page per fault, so that every page touched is recorded.
//!     Err(_) => {
//!         builder.fault_around(0);
//!     }
//! }
//! // SAFETY: the region holds no Rust object.
//! let server = unsafe { builder.start(uffd, snapshot)? };
//! // ... the workload runs ...
//! let finished = server.stop();
//! if let Some(ws) = finished.working_set {
//!     ws.save("memory.ws.new")?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Discards without pause
//!
//! While a discard's `REMOVE` event is pending, and until the discarding thread resumes after
//! it is read, the kernel refuses every placement (`EAGAIN`). The server reads the event and
//! retries at once, to land between two discards. A thread that discards without pause (each
//! `madvise` right after the last) can still starve the faults for as long as it goes on: on
//! Linux 6.12+ the retries find the gap, on 6.1 they were seen not to. Balloons discard in
//! bursts, so this matters only to a process that discards in a tight loop while others
//! fault; the server serves the faults as soon as it pauses.
//!
//! # Policies on a fatal error
//!
//! A fatal error is a source read error, an invalid answer of the source, a worker panic, or
//! an unexpected `errno`. It is reported in [`Finished::outcome`] (and [`Server::outcome`]
//! while running). Faulting threads never run on zero pages silently:
//!
//! | [`ErrorPolicy`] | the server | threads blocked in a fault, and later faults |
//! |---|---|---|
//! | [`ErrorPolicy::Stop`] (default) | records the error and stops every worker; keeps the descriptor open | stay blocked until the owner acts on [`Finished::uffd`]: fix and serve the pages, unregister (the kernel's default: zeros on anonymous memory), or end the process. Threads in `madvise`, `munmap` or `mremap` of a region wait too (for their event to be read) |
//! | [`ErrorPolicy::FailClosed`] | records the error, poisons every page not yet placed (`UFFDIO_POISON`, Linux 6.6+) and wakes the regions, then stops | get `SIGBUS` on any page not placed, now and later; on kernels without `POISON` they stay blocked as with `Stop` |
//!
//! Dropping the [`Server`] without [`stop`](Server::stop) stops it and closes the descriptor:
//! then blocked threads retry without userfaultfd and get the kernel's default pages. Call
//! `stop` and keep [`Finished::uffd`] when that must not happen.
//!
//! A process that is served from another one (the descriptor sent over a Unix socket) is
//! best served with [`ServerBuilder::peer_process`]: without it, its exit is noticed only by
//! the next placement (`ESRCH`).
//!
//! # Performance
//!
//! On a 2-CPU machine, restoring 1 GiB from a snapshot on tmpfs (`cargo bench --bench
//! serve`, BENCHMARKS.md of the repository): the defaults on anonymous memory are 5.7-18x
//! faster than placing one page per fault and 1.2-1.9x faster than reading the file first;
//! the [`Backend::Continue`] backend on a `MAP_PRIVATE` mapping of the file takes 0.7-1.8x
//! the time of the kernel's own lazy file mapping. Neither busy-polling
//! ([`ServerBuilder::busy_poll`]) nor a second worker helped there (a second worker pays off
//! when the source is slow).

mod background;
mod inbox;
mod pages;
mod place;
mod region;
mod replay;
mod server;
mod shared;
mod source;
mod stats;
mod worker;
pub mod working_set;

use std::fmt;
use std::io;

pub use region::{Backend, Region};
pub use server::{Exit, Finished, Server, ServerBuilder};
pub use source::{Chunk, MappedFile, Memory, PageSource, ReadFile, Zeros};
pub use stats::{Stats, LATENCY_BUCKETS};
pub use working_set::{SnapshotId, WorkingSet, WorkingSetError};

use crate::FeatureFlags;

/// The non-cooperative events the server needs: `REMOVE` (so that discarded pages read as
/// zeros; required), `UNMAP` and `REMAP` (recommended). Add the memory type's
/// (`MISSING_SHMEM`, `MISSING_HUGETLBFS`, `MINOR_SHMEM`, `MINOR_HUGETLBFS`).
pub const EVENTS: FeatureFlags = FeatureFlags::EVENT_REMOVE
    .union(FeatureFlags::EVENT_UNMAP)
    .union(FeatureFlags::EVENT_REMAP);

/// What to do on a fatal error (see the module docs' table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Report and stop: faulting threads stay blocked until the owner acts.
    #[default]
    Stop,
    /// Fail closed: poison every page not yet placed, so that touching one raises `SIGBUS`.
    FailClosed,
}

/// Why the server could not be built, or stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// A builder setting is invalid.
    InvalidConfig(String),
    /// Region `index` is invalid (unaligned, outside the source, overlapping another, ...).
    InvalidRegion {
        /// The region, in the order they were added.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation on the userfaultfd failed.
    Uffd {
        /// What the server was doing.
        operation: &'static str,
        /// The crate's error (names the ioctl and the `errno`).
        source: crate::Error,
    },
    /// The page source failed to read.
    Source {
        /// The source offset asked for.
        offset: u64,
        /// Its error.
        source: io::Error,
    },
    /// The page source answered with a chunk that is empty, longer than asked, or not a whole
    /// number of pages.
    InvalidChunk {
        /// The source offset asked for.
        offset: u64,
        /// The length asked for.
        asked: usize,
        /// The length answered.
        got: usize,
    },
    /// A fault at an address outside every served region: a range registered with the
    /// server's descriptor by someone else, or a region grown by `mremap` (its new part is
    /// registered, but the server has nothing to place there).
    FaultOutsideRegions {
        /// The faulting address (as the kernel reported it).
        addr: u64,
    },
    /// A worker panicked (the payload's message).
    WorkerPanicked(String),
    /// The working set to replay was refused (recorded on another snapshot, or with another
    /// page size).
    WorkingSet(WorkingSetError),
    /// A system call the server needs (eventfd, poll, pidfd_open, fcntl, thread spawn) failed.
    Io {
        /// What the server was doing.
        operation: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::InvalidConfig(why) => write!(f, "page server: invalid setting: {why}"),
            ServeError::InvalidRegion { index, reason } => {
                write!(f, "page server: region {index} is invalid: {reason}")
            }
            ServeError::Uffd { operation, source } => {
                write!(f, "page server: {operation}: {source}")
            }
            ServeError::Source { offset, source } => write!(
                f,
                "page server: reading the page source at offset {offset:#x} failed: {source}"
            ),
            ServeError::InvalidChunk { offset, asked, got } => write!(
                f,
                "page server: the page source answered {got} bytes for {asked} at offset \
                 {offset:#x} (must be a non-empty whole number of pages, at most what was asked)"
            ),
            ServeError::FaultOutsideRegions { addr } => write!(
                f,
                "page server: a fault at {addr:#x} is outside every served region (a range \
                 registered with the server's userfaultfd by someone else, or a region grown \
                 by mremap): nothing to place there"
            ),
            ServeError::WorkerPanicked(msg) => write!(f, "page server: a worker panicked: {msg}"),
            ServeError::WorkingSet(e) => write!(f, "page server: replay: {e}"),
            ServeError::Io { operation, source } => {
                write!(f, "page server: {operation} failed: {source}")
            }
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Uffd { source, .. } => Some(source),
            ServeError::WorkingSet(source) => Some(source),
            ServeError::Source { source, .. } | ServeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
