//! What the workers share: the settings, the state, the lock, and why a worker stops.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use libc::c_void;

use super::arrivals::ArrivalQueue;
use super::inbox::Fault;
use super::pages::PageState;
use super::place::{Fill, Flow};
use super::region::{AddressMap, Mapping, Region};
use super::server::Exit;
use super::source::PageSource;
use super::stats::Counters;
use super::working_set::Recorder;
use super::{ErrorPolicy, RegionRange, ServeError};
use crate::{Errno, Error, Uffd};

impl Shared {
    /// The id of the reader thread (dispatch mode), in `counters` and `activity`.
    pub fn reader_id(&self) -> usize {
        self.counters.len() - 1
    }
}

/// Settings the workers read.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub busy_poll: Duration,
    pub policy: ErrorPolicy,
    pub batch: usize,
}

/// What the server's lock guards: the address map, and the descriptor.
///
/// Every use of the descriptor goes through the lock (shared for placements and wakes,
/// exclusive for reading messages), and [`Server::stop`](super::Server::stop) takes it out
/// under the exclusive lock: a thread left behind in a slow `PageSource::fetch` finds it gone
/// and can neither place a page nor touch the descriptor the caller got back.
pub(crate) struct Locked {
    pub map: AddressMap,
    uffd: Option<Uffd>,
}

impl Locked {
    pub fn new(map: AddressMap, uffd: Uffd) -> Locked {
        Locked {
            map,
            uffd: Some(uffd),
        }
    }

    /// The descriptor, or [`Stop::Exit`] once the server has given it back.
    #[inline]
    pub fn uffd(&self) -> Result<&Uffd, Stop> {
        match &self.uffd {
            Some(uffd) => Ok(uffd),
            None => Err(Stop::Exit(Exit::Stopped)),
        }
    }

    /// Takes the descriptor out (stop).
    pub fn take_uffd(&mut self) -> Option<Uffd> {
        self.uffd.take()
    }
}

impl Deref for Locked {
    type Target = AddressMap;
    fn deref(&self) -> &AddressMap {
        &self.map
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut AddressMap {
        &mut self.map
    }
}

/// What a server thread is doing, for a bounded stop.
pub(crate) const RUNNING: u8 = 0;
/// Inside `PageSource::fetch`: [`Server::stop`](super::Server::stop) does not wait for it.
pub(crate) const IN_FETCH: u8 = 1;
/// Returned (or never started).
pub(crate) const EXITED: u8 = 2;

/// One server thread's state, alone on its cache line (written by its thread only).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Activity {
    pub state: AtomicU8,
    /// The faulting address the thread is serving (`usize::MAX`: none).
    pub fault: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            state: AtomicU8::new(EXITED),
            fault: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Activity {
    #[inline]
    pub fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

/// Faults read by the reader thread, for the fetch workers (sources that may block).
pub(crate) struct Dispatch {
    pub queue: Mutex<VecDeque<Fault>>,
    pub ready: Condvar,
}

/// A placement of the background fill, made on its behalf by a thread at the workers'
/// priority (see [`FillDesk`]).
#[derive(Clone, Copy)]
pub(crate) struct FillJob {
    pub mapping: Mapping,
    pub from: usize,
    pub to: usize,
    pub fill: Fill,
    /// The fill's `Shared::epoch` when it decided.
    pub epoch: u64,
    /// The fill thread's id (its counters).
    pub id: usize,
}

// SAFETY: `fill` may point into the fill thread's scratch buffer or the source's memory; the
// fill thread waits (without touching them) until the job is done or withdrawn untaken.
unsafe impl Send for FillJob {}

/// Where a job is.
pub(crate) enum Slot {
    Empty,
    Waiting(FillJob),
    Taken,
    Done(Result<Flow, Stop>),
}

/// The background fill runs at the lowest CPU priority: were it to hold the server's lock, a
/// preempted fill would keep the reading of messages (faults included) waiting behind it. So
/// it never takes the lock: it decides and fetches, and hands each placement to a thread at
/// the workers' priority (a worker that reads messages, or the reader), which makes the
/// ioctl under the lock while the fill waits.
pub(crate) struct FillDesk {
    /// Readable while a job waits (polled by the threads that read messages).
    pub fd: OwnedFd,
    pub slot: Mutex<Slot>,
    pub done: Condvar,
}

impl FillDesk {
    /// Submits `job` and waits for its result. On a stop, a job not yet taken is withdrawn
    /// ([`Stop::Exit`]); a job taken is waited for (an ioctl: bounded).
    pub fn submit(&self, job: FillJob, stopping: &AtomicBool) -> Result<Flow, Stop> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Slot::Waiting(job);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        loop {
            match std::mem::replace(&mut *slot, Slot::Empty) {
                Slot::Done(result) => return result,
                Slot::Waiting(_) if stopping.load(Ordering::Acquire) => {
                    return Err(Stop::Exit(Exit::Stopped));
                }
                other => *slot = other,
            }
            slot = self
                .done
                .wait_timeout(slot, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Takes the waiting job, if any (its eventfd reset first: the fill submits the next job
    /// only once this one is done).
    pub fn take(&self) -> Option<FillJob> {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count` from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Waiting(job) => Some(job),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Hands back the result of a job taken.
    pub fn finish(&self, result: Result<Flow, Stop>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Done(result);
        self.done.notify_all();
    }
}

/// What every worker shares.
pub(crate) struct Shared {
    /// The descriptor's number, for `poll` only (by the threads `stop` joins before it gives
    /// the descriptor back); every other use goes through [`Locked::uffd`].
    pub uffd_fd: RawFd,
    pub source: Arc<dyn PageSource>,
    /// The base page size.
    pub base_page: usize,
    pub regions: Vec<Region>,
    pub pages: Vec<PageState>,
    /// The lock: shared by placements, exclusive for reading messages and applying events.
    pub map: RwLock<Locked>,
    /// Per thread (indexed as `counters`): what it is doing.
    pub activity: Box<[Activity]>,
    /// `Some` when the source may block: a reader thread reads the messages and hands the
    /// faults to the workers, which fetch and place.
    pub dispatch: Option<Dispatch>,
    /// `Some` with the background fill: where it hands over its placements.
    pub desk: Option<FillDesk>,
    /// Counts the changes of the address map (`UNMAP`, `REMAP`; under the exclusive lock): a
    /// placement looked up before a change is not made.
    pub epoch: AtomicU64,
    /// Readable once the server stops (an eventfd that is written and never read).
    pub stop_fd: OwnedFd,
    /// The served process's pidfd, readable once it exits.
    pub peer: Option<OwnedFd>,
    pub stopping: AtomicBool,
    /// One per worker, then one for the background fill, then one for the reader.
    pub counters: Box<[Counters]>,
    pub outcome: Mutex<Option<Result<Exit, ServeError>>>,
    pub config: Config,
    /// A read-only anonymous mapping of zeros, at least a fault-around block long: the
    /// source of zero pages on hugetlbfs, which has no `ZEROPAGE`.
    pub zeros: ZeroMap,
    /// Records the demand faults, when asked to.
    pub recorder: Option<Recorder>,
    /// The pages to replay, in order: (region, page of the region).
    pub replay: Vec<(usize, usize)>,
    /// Per region, each page's position in `replay` plus one (0: not in the record); empty
    /// without replay.
    pub replay_rank: Vec<Box<[u32]>>,
    /// When the server started.
    pub started: Instant,
    /// Nanoseconds from the start to the end of the replay (`u64::MAX` until then).
    pub replay_done_ns: AtomicU64,
    /// Why the replay ended early.
    pub replay_error: Mutex<Option<ServeError>>,
    /// `Some` with `place_arrived` (and no background fill): the ranges of the source it
    /// reported arrived, which the background thread places.
    pub arrivals: Option<Arc<ArrivalQueue>>,
}

/// A read-only private anonymous mapping: all zeros, costing no memory.
pub(crate) struct ZeroMap {
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: a read-only mapping that lives as long as the value and is only read (by the
// kernel, as the source of copies).
unsafe impl Send for ZeroMap {}
// SAFETY: as above.
unsafe impl Sync for ZeroMap {}

impl Drop for ZeroMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused once the workers are gone.
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
    }
}

/// Why a worker stops.
pub(crate) enum Stop {
    /// The server was stopped, or the process exited.
    Exit(Exit),
    Failed(ServeError),
}

pub(crate) fn uffd_error(operation: &'static str, source: Error) -> Stop {
    uffd_error_in(operation, None, source)
}

/// [`uffd_error`] of an operation on `len` bytes at `addr` of region `index`.
pub(crate) fn uffd_error_at(
    operation: &'static str,
    index: usize,
    addr: *mut c_void,
    len: usize,
    source: Error,
) -> Stop {
    let range = addr as usize..(addr as usize).saturating_add(len);
    uffd_error_in(operation, Some(RegionRange { index, range }), source)
}

fn uffd_error_in(operation: &'static str, at: Option<RegionRange>, source: Error) -> Stop {
    if source.errno() == Some(Errno::ESRCH) || matches!(source, Error::ReadEof) {
        return Stop::Exit(Exit::ProcessExited);
    }
    Stop::Failed(ServeError::Uffd {
        operation,
        at,
        source,
    })
}

pub(crate) fn lock_read(map: &RwLock<Locked>) -> RwLockReadGuard<'_, Locked> {
    map.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn lock_write(map: &RwLock<Locked>) -> RwLockWriteGuard<'_, Locked> {
    map.write().unwrap_or_else(|e| e.into_inner())
}
