//! What the workers share: the settings, the state, the lock, and why a worker stops.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use libc::c_void;

use super::pages::PageState;
use super::region::{AddressMap, Region};
use super::server::Exit;
use super::source::PageSource;
use super::stats::Counters;
use super::working_set::Recorder;
use super::{ErrorPolicy, RegionRange, ServeError};
use crate::{Errno, Error, Uffd};

/// Settings the workers read.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub busy_poll: Duration,
    pub policy: ErrorPolicy,
    pub batch: usize,
}

/// What every worker shares.
pub(crate) struct Shared {
    pub uffd: Uffd,
    pub source: Arc<dyn PageSource>,
    pub regions: Vec<Region>,
    pub pages: Vec<PageState>,
    /// The lock: shared by placements, exclusive for reading messages and applying events.
    pub map: RwLock<AddressMap>,
    /// Counts the changes of the address map (`UNMAP`, `REMAP`; under the exclusive lock): a
    /// placement looked up before a change is not made.
    pub epoch: AtomicU64,
    /// Readable once the server stops (an eventfd that is written and never read).
    pub stop_fd: OwnedFd,
    /// The served process's pidfd, readable once it exits.
    pub peer: Option<OwnedFd>,
    pub stopping: AtomicBool,
    /// One per worker, then one for the background fill.
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

pub(crate) fn lock_read(map: &RwLock<AddressMap>) -> RwLockReadGuard<'_, AddressMap> {
    map.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn lock_write(map: &RwLock<AddressMap>) -> RwLockWriteGuard<'_, AddressMap> {
    map.write().unwrap_or_else(|e| e.into_inner())
}
