//! A page server: serve one or more registered regions from a [`PageSource`] with worker
//! threads — lazy restore of a snapshot, post-copy migration — in one call.
//!
//! ```no_run
//! use std::sync::Arc;
//! use userfaultfd::serve::{MappedFile, Region, Server};
//! use userfaultfd::UffdBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // SAFETY: the snapshot file is written once and never truncated or rewritten.
//! let snapshot = Arc::new(unsafe { MappedFile::new(&std::fs::File::open("memory.snap")?) }?);
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
//! The server's lock orders placements against the non-cooperative events: messages are
//! read (and the events among them applied: pages marked discarded, ranges unmapped or
//! moved) under the lock held *exclusively*; a placement reads the source without the lock,
//! then takes the lock *shared* for the ioctl and makes it only if, there, the address map has
//! not changed and none of its pages was marked discarded meanwhile (otherwise it starts
//! over). So a placement either completes before an event is read — and the kernel's zap that
//! follows the read removes what it placed — or sees the event's marks: a discarded page is
//! never refilled with the source's stale contents. The descriptor itself lives under the
//! lock: [`Server::stop`] takes it out, so that no thread of the server uses it afterwards.
//!
//! How the threads share the work depends on the source ([`PageSource::never_blocks`]):
//!
//! - **A source that never blocks** (in memory: [`MappedFile`], [`Memory`], [`Zeros`]): each
//!   worker polls the userfaultfd (non-blocking) with a stop eventfd (and, when serving
//!   another process, its pidfd), reads a batch of messages, and serves the faults it read
//!   itself: no hand-over between threads, the fastest. With several workers each reads one
//!   message at a time, so that the next fault goes to another worker.
//! - **A source that may block** (a disk, the network; the default for a source of your
//!   own): a reader thread (`uffd-serve-reader`) polls, reads the messages, applies the
//!   events, and hands the faults to the workers through a queue; the workers fetch and
//!   place, and when a pending event refuses a placement (`EAGAIN`) they wait for the reader
//!   to read it. The reader never waits inside `fetch`: events (and the `madvise`, `munmap`,
//!   `mremap` waiting for them) and new faults are read while fetches wait, and several
//!   workers wait on a slow source at once. The hand-over costs a wake-up per fault.
//!
//! After each placement of the source's bytes, the server tells the source what it placed
//! ([`PageSource::placed`]): a source that keeps fetched bytes only to serve them (a
//! network cache) can drop them, so that a restore does not hold the memory twice. When the
//! kernel cannot read bytes the source returned from a mapping (`UFFDIO_COPY` fails with
//! `EFAULT`: the mapped file was cut short, or its disk failed the read), the source is told
//! ([`PageSource::unreadable`]) and may answer them again from elsewhere (a disk cache falls
//! back to the network) instead of the error being fatal.
//!
//! A fault places the block of [`ServerBuilder::fault_around`] bytes around the faulting
//! page (aligned, clipped to the region and to pages neither placed nor discarded), the
//! faulting page first. The background fill (optional) places the rest of the regions block
//! by block at the lowest CPU priority; so that a fill preempted by other work can never keep
//! the reading of messages (faults included) waiting for the lock, it never takes the lock:
//! it fetches, and hands each placement to a thread at the workers' priority (a worker, or
//! the reader), which makes the ioctl while the fill waits. With
//! [`ServerBuilder::place_arrived`], the same thread places instead what the source reports
//! it holds ([`PageSource::arrivals`]: a network source's chunks as they arrive), so that
//! pages fetched for one fault, or read ahead, are in place before their own faults. Nothing
//! is allocated per fault after start-up; statistics are counted per thread and summed when
//! read.
//!
//! On huge pages, the server maps what a copy reads from (the source's chunk, the zero
//! mapping) before the copy: a hugetlbfs `COPY` whose source faults inside the kernel takes a
//! temporary huge page besides the destination's, and with one free huge page would fail.
//!
//! # Events
//!
//! Every fault the server reads gets an answer: its page placed, a wake (the thread retries
//! the access and meets the kernel's verdict), or the error policy's.
//!
//! | what happens | the server |
//! |---|---|
//! | page fault (`MISSING`) | places the block around it from the source (`COPY`; zero pages by `ZEROPAGE`, or a copy of zeros on hugetlbfs), or zeros for a page marked discarded |
//! | page fault (`MINOR`, [`Backend::Continue`]) | maps the block from the page cache (`CONTINUE`); a page absent from the page cache gets a zero page |
//! | page fault outside every served region (a range registered with the server's descriptor by someone else, a region grown by `mremap`) | a fatal error, [`ServeError::FaultOutsideRegions`] naming the address, answered by the [error policy](#policies-on-a-fatal-error) (under [`ErrorPolicy::FailClosed`] its page is poisoned too) |
//! | `EEXIST` (the page is already there) | wakes the faulting address; a fault-around block continues after the present page |
//! | `ENOENT` (the range is not inside one registered VMA: a block across a VMA boundary made after registration by `mprotect` or `mlock`, or into a range unmapped without `EVENT_UNMAP`) | retries with half the pages, down to one; a page that is not registered is left out, and if it is the faulting one, its thread is woken |
//! | `EAGAIN` with progress `n` (`PartiallyCopied`) | continues from `n` (the next page is present: `EEXIST`, skipped) |
//! | `EAGAIN` with no progress (an event is pending) | the pending messages are read (by this worker, or by the reader thread) and the events applied, then the same ioctl is retried at once (re-checking the page state); if the event was already read, the kernel refuses placements until the thread that caused it resumes: retries at once a few times, then yields, then sleeps 20 µs between tries — so that under a stream of `REMOVE`s a retry still lands between two of them |
//! | `REMOVE` (`MADV_DONTNEED`, `MADV_REMOVE`, `MADV_FREE`) | marks the pages discarded: a discarded page is placed again only when the process faults it (fault-around, the background fill and the replay skip it: a balloon's pages stay free), and then gets zeros, never the source. `Continue { private: false }`: the fault gets the file's page (the mapping is the file: the kernel itself shows the file's contents after `DONTNEED`; after `MADV_REMOVE` the hole faults as missing and gets a zero page) |
//! | `UNMAP` (`munmap`) | stops serving the range (fault-around and background fill skip it); a fault read before it is woken |
//! | `REMAP` (`mremap` that moves) | serves the pages at their new address, from the same source offsets |
//! | `FORK` | refused: [`ServerBuilder::start`] rejects a descriptor with `EVENT_FORK`. A forked child then does not inherit the registration and sees the parent's memory as it is at the fork (pages not yet placed are empty: zeros on anonymous memory); fork only after the regions are filled, or mark them `MADV_DONTFORK` |
//! | the faulting process exits (`ESRCH`, or its pidfd becomes readable, see [`ServerBuilder::peer_process`]) | every worker stops; [`Finished::outcome`] is `Ok(Exit::ProcessExited)` |
//! | [`Server::stop`] | see [Stopping](#stopping) |
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
//! # Stopping
//!
//! [`Server::stop`] returns within a bounded time: it wakes every thread (blocked in `poll`
//! or waiting for work) and waits for each to return, except a thread inside
//! [`PageSource::fetch`], which gets 100 ms and is then left behind. It then takes the
//! descriptor out under the exclusive lock (no placement is in progress, and none starts
//! afterwards) and returns it in [`Finished::uffd`].
//!
//! | a fault, when `stop` is called | what happens to it |
//! |---|---|
//! | being served, its fetches returning within the grace | served: its page first (its thread woken), then its block |
//! | being served by a thread stuck in a fetch past the grace | woken: its thread retries the access and, if its page was not placed yet, faults again, pending on [`Finished::uffd`]; the rest of its block is not placed |
//! | read and not yet being served (a worker's batch, the reader's queue) | served by a worker that reads and serves itself (never-blocking source); woken (pending again on [`Finished::uffd`]) in the reader's queue |
//! | not yet read | pending on [`Finished::uffd`] |
//!
//! A thread left in a fetch keeps its own reference to the source (and the server's state)
//! until the fetch returns; it then finds the descriptor gone, places nothing, and exits. It
//! never uses, nor keeps open, the descriptor returned to the caller, so dropping
//! [`Finished::uffd`] ends the registration at once.
//!
//! Threads blocked in a fault stay blocked until the owner acts on [`Finished::uffd`]: reads
//! and serves their faults, unregisters (the kernel's default: zeros on anonymous memory), or
//! drops it. Threads in `madvise`, `munmap` or `mremap` of a region wait too (for their
//! event to be read). Dropping the [`Server`] without [`stop`](Server::stop) stops it as
//! `stop` does and closes the descriptor: blocked threads then retry without userfaultfd and
//! get the kernel's default pages. Call `stop` and keep [`Finished::uffd`] when that must not
//! happen.
//!
//! # Policies on a fatal error
//!
//! A fatal error is a source read error, an invalid answer of the source, a worker panic, a
//! fault outside every region, or an unexpected `errno`. It is reported in
//! [`Finished::outcome`] (and [`Server::outcome`] while running), and the server stops.
//! Faulting threads never run on zero pages silently, and no fault the server read is lost:
//!
//! | [`ErrorPolicy`] | the server | every fault read and not served (the failing one, a worker's batch, the reader's queue, one stuck in a fetch) | later faults |
//! |---|---|---|---|
//! | [`ErrorPolicy::Stop`] (default) | records the error and stops every thread; keeps the descriptor open | woken: each thread faults again and waits, its fault pending on [`Finished::uffd`] until the owner acts on it (see [Stopping](#stopping)) | wait likewise |
//! | [`ErrorPolicy::FailClosed`] | records the error; poisons (`UFFDIO_POISON`, Linux 6.6+) every page of the regions not known to be placed, and the page of a fault outside them, waking them; then stops | `SIGBUS` (woken, each meets its poisoned page) | `SIGBUS` on any page not placed |
//!
//! Fail-closed poisoning covers the address map as it is when it ends: runs of unplaced pages
//! one ioctl each under the shared lock; a pending event (`EAGAIN`) is read and applied
//! under the exclusive lock and the ioctl retried, without a retry limit (the kernel refuses
//! only while an event is pending, and reading it ends that); an `UNMAP` or `REMAP` read
//! meanwhile restarts the scan over the new map. On kernels without `POISON` the threads stay
//! blocked as with `Stop`.
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
//! when the source is slow). User-space work per fault (callgrind, one page per fault):
//! about 1230 instructions with a source that never blocks, 1850 with the reader's
//! hand-over.

mod arrivals;
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
use std::ops::Range;

pub use arrivals::Arrivals;
pub use region::{Backend, Region};
pub use server::{
    Exit, Finished, Server, ServerBuilder, MAX_BUSY_POLL, MAX_FAULT_AROUND, MAX_WORKERS,
};
pub use source::{Chunk, MappedFile, Memory, PageSource, ReadFile, Zeros};
pub use stats::{Stats, LATENCY_BUCKETS};
pub use working_set::{SnapshotId, WorkingSet, WorkingSetError};

use crate::FeatureFlags;

/// The non-cooperative events the server needs: `REMOVE` (so that discarded pages read as
/// zeros; required, unless [`ServerBuilder::no_discards`] states that nothing discards),
/// `UNMAP` and `REMAP` (recommended). Add the memory type's
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
    ///
    /// Needs `UFFDIO_POISON` (Linux 6.6+, [`FeatureFlags::POISON`](crate::FeatureFlags::POISON)
    /// reported by [`probe`](crate::probe)). Without it, the first poison fails and the server
    /// poisons nothing: it behaves as [`Stop`](Self::Stop) — faulting threads stay blocked
    /// until the owner acts on [`Finished::uffd`] — and [`Finished::outcome`] reports the
    /// original error. A VMM that must fail closed on older kernels checks
    /// `probe()?.features().contains(FeatureFlags::POISON)` before it relies on this, and
    /// otherwise ends the process (or unregisters and kills the guest) itself on an error.
    FailClosed,
}

/// Where a userfaultfd operation of the server failed: which region, and the addresses the
/// call covered (`Display`: `region 2, 0x7f2a00000000..0x7f2a00040000`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRange {
    /// The region, in the order they were added to the builder.
    pub index: usize,
    /// The addresses of the call (where the region is mapped now, after any `mremap`).
    pub range: Range<usize>,
}

impl fmt::Display for RegionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "region {}, {:#x}..{:#x}",
            self.index, self.range.start, self.range.end
        )
    }
}

/// Why the server could not be built, or stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// A builder setting is invalid.
    InvalidConfig(String),
    /// Region `index` is invalid (unaligned, outside the source, overlapping another, its
    /// memory refuses the backend, ...).
    InvalidRegion {
        /// The region, in the order they were added.
        index: usize,
        /// Its address range, as given.
        range: Range<usize>,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation on the userfaultfd failed.
    Uffd {
        /// What the server was doing.
        operation: &'static str,
        /// The region concerned and the address range of the call, when the operation was on
        /// a region (registering it, placing pages in it, waking a fault in it).
        at: Option<RegionRange>,
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
            ServeError::InvalidRegion {
                index,
                range,
                reason,
            } => write!(
                f,
                "page server: region {index} ({:#x}..{:#x}) is invalid: {reason}",
                range.start, range.end
            ),
            ServeError::Uffd {
                operation,
                at: Some(at),
                source,
            } => write!(f, "page server: {operation} at {at}: {source}"),
            ServeError::Uffd {
                operation,
                at: None,
                source,
            } => write!(f, "page server: {operation}: {source}"),
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
