//! [`ServerBuilder`] and the [`Server`] handle: start, statistics, stop.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::arrivals::{ArrivalQueue, Arrivals};
use super::background::{background, place_arrived};
use super::inbox::poison_unplaced;
use super::pages::PageState;
use super::region::{check_disjoint, AddressMap, Backend, Region};
use super::replay;
use super::shared::{lock_write, Activity, Config, Dispatch, FillDesk, Locked, Shared, Slot};
use super::shared::{Stop, ZeroMap};
use super::shared::{EXITED, IN_FETCH, RUNNING};
use super::stats::{Counters, Stats};
use super::worker::Worker;
use super::working_set::{Recorder, SnapshotId, WorkingSet};
use super::{ErrorPolicy, PageSource, RegionRange, ServeError};
use crate::{FeatureFlags, IoctlFlags, RegisterMode, Rejected, Uffd};

/// The most workers a server may have.
pub const MAX_WORKERS: usize = 1024;

/// The largest [`ServerBuilder::fault_around`]: 64 MiB.
pub const MAX_FAULT_AROUND: usize = 64 << 20;

/// The longest [`ServerBuilder::busy_poll`]: one second.
pub const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// The pages to replay, in order: (region, page of the region).
type ReplayList = Vec<(usize, usize)>;

/// Why the server stopped, when it was not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// [`Server::stop`] was called (or the server was dropped).
    Stopped,
    /// The served process exited (`ESRCH`, end of file, or its pidfd became readable).
    ProcessExited,
}

/// Configures and starts a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    regions: Vec<Region>,
    workers: usize,
    fault_around: Option<usize>,
    background: bool,
    place_arrived: bool,
    busy_poll: Duration,
    policy: ErrorPolicy,
    peer: Option<libc::pid_t>,
    record: bool,
    replay: Option<Arc<WorkingSet>>,
    snapshot: Option<SnapshotId>,
    no_discards: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            regions: Vec::new(),
            workers: 1,
            fault_around: None,
            background: false,
            place_arrived: false,
            busy_poll: Duration::ZERO,
            policy: ErrorPolicy::Stop,
            peer: None,
            record: false,
            replay: None,
            snapshot: None,
            no_discards: false,
        }
    }
}

impl ServerBuilder {
    /// Adds a region to serve.
    pub fn region(&mut self, region: Region) -> &mut Self {
        self.regions.push(region);
        self
    }

    /// The number of worker threads (default 1). On a 2-CPU machine a second worker did not
    /// make restoring from a fast source any faster; several workers pay off with a slow
    /// (remote) source, whose fetches for different faults then overlap. At most
    /// [`MAX_WORKERS`] ([`start`](Self::start) refuses more).
    pub fn workers(&mut self, workers: usize) -> &mut Self {
        self.workers = workers;
        self
    }

    /// How many bytes to place per fault: the aligned block around the faulting page,
    /// clipped to the region and to pages not yet placed (at least one page; 0 means one
    /// page). Default: 256 KiB for [`Backend::Copy`] (a copy costs memory bandwidth: larger
    /// blocks copy pages that may never be touched), 2 MiB for [`Backend::Continue`] (mapping
    /// a page-cache page costs next to nothing; what costs is the fault). At most
    /// [`MAX_FAULT_AROUND`] ([`start`](Self::start) refuses more); a block is never larger than
    /// its region. Each worker holds a buffer of the largest block (virtual memory: a source
    /// that answers from its own memory never touches it).
    pub fn fault_around(&mut self, bytes: usize) -> &mut Self {
        self.fault_around = Some(bytes);
        self
    }

    /// The block size of a region: the setting, or the backend's default.
    fn block_for(&self, r: &Region) -> usize {
        let default = match r.backend {
            Backend::Copy => 256 << 10,
            Backend::Continue { .. } => 2 << 20,
        };
        // Never more than the region: a larger block places nothing more, and each worker
        // holds a buffer of the largest block.
        self.fault_around
            .unwrap_or(default)
            .min(r.len)
            .max(r.page_size)
    }

    /// Whether a background thread places the rest of the regions after start, block by
    /// block, at the lowest CPU priority (default off).
    pub fn background_fill(&mut self, on: bool) -> &mut Self {
        self.background = on;
        self
    }

    /// Whether a background thread places, as they arrive, the bytes the source reports it
    /// holds ([`PageSource::arrivals`]), before the process faults on them (default off).
    ///
    /// For a source that fetches (a snapshot in object storage): what it fetched for a
    /// fault's chunk, read ahead or prefetched is placed whole, so the next faults in it do
    /// not happen, and the source can drop those bytes ([`PageSource::placed`]). Fetched
    /// bytes sit either in the source's memory or, placed, in the process's, so placing them
    /// moves memory rather than adding it; what changes is whose memory it counts as: the
    /// served process's (its cgroup), from arrival rather than first touch. A source with a
    /// local cache may also report what the cache holds (`userfaultfd-objstore` reports each
    /// chunk it finds intact): then the whole cached snapshot is placed, as by a background
    /// fill from the cache, not only what is touched. Pages placed already and pages the
    /// process discarded (`REMOVE`: a balloon's) are skipped, as by the fill; bytes are asked
    /// for with [`PageSource::fetch_held`], which never waits and does not count as an
    /// access, and pages the source no longer holds, or whose placement fails, are left to
    /// the faults (a failure here is not fatal: the page may never be touched). Runs on the
    /// background thread, at the lowest CPU priority, handing each placement to a thread at
    /// the workers' priority as the fill does; after the [`replay`](Self::replay), if any.
    ///
    /// A source that does not report arrivals (the default of [`PageSource::arrivals`])
    /// gets nothing placed ahead (the background thread still runs, waking every 20 ms).
    /// With [`background_fill`](Self::background_fill) on, the fill places everything in
    /// region order and the source is not asked for its arrivals. As for faults, a source
    /// that drops what was placed serves each of its bytes into one region only.
    pub fn place_arrived(&mut self, on: bool) -> &mut Self {
        self.place_arrived = on;
        self
    }

    /// How long a worker polls without sleeping before it blocks in `poll` (default 0:
    /// always block). At most [`MAX_BUSY_POLL`] ([`start`](Self::start) refuses more).
    pub fn busy_poll(&mut self, spin: Duration) -> &mut Self {
        self.busy_poll = spin;
        self
    }

    /// What to do on a fatal error (default [`ErrorPolicy::Stop`]).
    pub fn error_policy(&mut self, policy: ErrorPolicy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Serving another process (the descriptor received from it): stop when it exits, even
    /// if it never faults again (its pidfd is polled with the userfaultfd). `pid` must be
    /// positive ([`start`](Self::start) refuses others).
    pub fn peer_process(&mut self, pid: libc::pid_t) -> &mut Self {
        self.peer = Some(pid);
        self
    }

    /// Records the pages faulted on demand (not those placed around a fault, by the
    /// background fill or by replay), in first-touch order, as a [`WorkingSet`] of the
    /// snapshot: take it with [`Server::working_set`] or [`Finished::working_set`], save it
    /// with [`WorkingSet::save`], and replay it on the next start (default off). The regions
    /// must have one page size. Costs one relaxed load per fault, and three atomic operations
    /// on a page's first touch; memory: a bit and (as far as pages are touched) 8 bytes per
    /// page of the source.
    ///
    /// Pages placed around a fault and touched later fault no more, so they are not
    /// recorded: a recording run that should capture the whole working set sets
    /// [`fault_around(0)`](Self::fault_around) (one page per fault). A run that replays
    /// records only its own demand faults, the pages the replayed record missed:
    /// [`merge`](super::working_set::merge) the two records to keep them all.
    pub fn record(&mut self, on: bool) -> &mut Self {
        self.record = on;
        self
    }

    /// Replays `working_set` at start: a background thread places its pages in its order, in
    /// runs of consecutive source pages of at most 2 MiB per ioctl (so a fault waits at most
    /// one such ioctl for the lock), at the workers' CPU priority, while the workers keep
    /// serving faults. A fault on a recorded page not yet replayed (the workload overtook the
    /// replay) places, instead of the block around it, the pages the record lists next (up to
    /// [`fault_around`](Self::fault_around) bytes, one ioctl each): the record knows what the
    /// workload touches next, the block around it mostly holds pages nobody wants. A page
    /// already placed (by a fault) is skipped, as is a page the
    /// process discarded (`REMOVE`: it stays empty). A failed replay (a source error, an
    /// unexpected `errno`) ends the replay only ([`Finished::replay_error`]): the workers go on
    /// serving faults. Stopping the server ends the replay after the current run. With
    /// [`background_fill`](Self::background_fill), the fill follows the replay.
    ///
    /// Memory while serving: 16 bytes per recorded page (the list in region terms) and 4 per
    /// page of the regions (each page's position in the record).
    ///
    /// [`start`](Self::start) refuses a record of another snapshot
    /// ([`ServeError::WorkingSet`]): see [`snapshot_id`](Self::snapshot_id).
    pub fn replay(&mut self, working_set: WorkingSet) -> &mut Self {
        self.replay = Some(Arc::new(working_set));
        self
    }

    /// The identity of the source, stamped on the record and checked against the replayed
    /// working set. Default: [`SnapshotId::sample`] of the source, computed at start when
    /// recording or replaying.
    pub fn snapshot_id(&mut self, id: SnapshotId) -> &mut Self {
        self.snapshot = Some(id);
        self
    }

    /// The served process never discards pages of the regions (no `MADV_DONTNEED`,
    /// `MADV_REMOVE` or `MADV_FREE` on them): accept a descriptor without
    /// `FeatureFlags::EVENT_REMOVE` (default off: refused). A descriptor made by someone else
    /// without `REMOVE` cannot gain it; Firecracker before 1.12 creates one so when the VM has
    /// no balloon device, the only thing that discards guest memory. If a page is discarded
    /// all the same, its next fault is served from the source again (its old contents), not
    /// zeros: only set this when nothing discards.
    pub fn no_discards(&mut self, on: bool) -> &mut Self {
        self.no_discards = on;
        self
    }

    /// The page size of every region, and the snapshot's identity, when recording or
    /// replaying; the replayed record checked against them and turned into (region, page)
    /// pairs.
    fn working_set_setup(
        &self,
        source: &dyn PageSource,
    ) -> Result<(Option<Recorder>, ReplayList), ServeError> {
        if !self.record && self.replay.is_none() {
            return Ok((None, Vec::new()));
        }
        let ps = self.regions[0].page_size;
        if self.regions.iter().any(|r| r.page_size != ps) {
            return Err(ServeError::InvalidConfig(
                "recording or replaying a working set needs regions of one page size".into(),
            ));
        }
        let id = match self.snapshot {
            Some(id) => id,
            None => SnapshotId::sample(source).map_err(|source| ServeError::Io {
                operation: "sampling the snapshot's identity for the working set",
                source,
            })?,
        };
        if self.record {
            super::working_set::check_snapshot_len(id.len).map_err(|why| {
                ServeError::InvalidConfig(format!("recording a working set: {why}"))
            })?;
        }
        let recorder = if self.record {
            // Only the source pages the regions serve can be touched: the recorder covers
            // those, not the whole snapshot (whose length is whatever the identity says).
            let first = self.regions.iter().map(|r| r.offset / ps as u64).min();
            let end = self
                .regions
                .iter()
                .map(|r| (r.offset + r.len as u64) / ps as u64)
                .max();
            let capacity: u64 = self.regions.iter().map(|r| r.pages() as u64).sum();
            let pages = first.unwrap_or(0)..end.unwrap_or(0);
            let recorder =
                Recorder::new(id, ps as u64, pages.clone(), capacity).map_err(|need| {
                    ServeError::InvalidConfig(format!(
                    "recording a working set of source pages {}..{} ({} pages of {ps:#x} bytes) \
                     needs {need} bytes of memory: the allocation failed",
                    pages.start,
                    pages.end,
                    pages.end - pages.start
                ))
                })?;
            Some(recorder)
        } else {
            None
        };
        let mut replay = Vec::new();
        if let Some(ws) = &self.replay {
            ws.check_applies_to(id, ps as u64)
                .map_err(ServeError::WorkingSet)?;
            replay.reserve(ws.len());
            for &sp in ws.order() {
                // The region serving this source page, if any (pages outside every region
                // are not replayed).
                let found = self.regions.iter().enumerate().find_map(|(i, r)| {
                    let first = r.offset / ps as u64;
                    (first..first + r.pages() as u64)
                        .contains(&sp)
                        .then(|| (i, (sp - first) as usize))
                });
                replay.extend(found);
            }
        }
        Ok((recorder, replay))
    }

    /// Checks the settings and regions, registers the regions with `uffd` (missing faults
    /// for [`Backend::Copy`], minor and missing faults for [`Backend::Continue`]), makes the
    /// descriptor non-blocking, and starts the workers.
    ///
    /// Everything that can be checked or allocated is, before anything is registered: a bad
    /// setting, region or replay record costs an error, never an abort or an allocation of
    /// what a bad value claims.
    ///
    /// # A failed start
    ///
    /// gives the descriptor back ([`Rejected::into_parts`]) as it was given: its blocking
    /// mode restored, and no region left registered by the failed start. A region that was
    /// already registered with `uffd` before the call (as Firecracker registers guest memory
    /// before handing the descriptor over) stays registered: `start` tells the two apart by
    /// the region's first page, with a `UFFDIO_COPY` from an unreadable address, which places
    /// nothing (the kernel answers `ENOENT` where the page is not in a range registered with a
    /// userfaultfd, and fails reading the source elsewhere). Registering again replaces the
    /// mode: such a region keeps the backend's mode (`MISSING`, or `MISSING | MINOR` for
    /// [`Backend::Continue`]) — the caller's own, when the caller registered what the backend
    /// needs. `?` turns the [`Rejected`] into the [`ServeError`], dropping (closing) the
    /// descriptor.
    ///
    /// # Safety
    ///
    /// The regions' contents are given to the source: no Rust object may live in them, and
    /// nothing else may place pages in them through `uffd`.
    ///
    /// # Errors
    ///
    /// With the descriptor given back: [`ServeError::InvalidConfig`] (no region, zero or more
    /// than [`MAX_WORKERS`] workers, a [`fault_around`](Self::fault_around) over
    /// [`MAX_FAULT_AROUND`], a [`busy_poll`](Self::busy_poll) over [`MAX_BUSY_POLL`], a
    /// [`peer_process`](Self::peer_process) that is not a process id, a descriptor without
    /// `EVENT_REMOVE` unless [`no_discards`](Self::no_discards), or with `EVENT_FORK`, a working set that does not fit in memory),
    /// [`ServeError::InvalidRegion`] (unaligned, empty, a page size over 1 GiB, outside the
    /// source, overlapping another, its page state does not fit in memory, its memory does
    /// not allow the backend's ioctls), [`ServeError::Uffd`] (registration failed: the region's
    /// index and range, and the `errno`), [`ServeError::WorkingSet`], [`ServeError::Io`].
    pub unsafe fn start(
        &self,
        uffd: Uffd,
        source: Arc<dyn PageSource>,
    ) -> Result<Server, Rejected<Uffd, ServeError>> {
        let ready = match self.prepare(&uffd, &source) {
            Ok(ready) => ready,
            Err(e) => return Err(Rejected::new(uffd, e)),
        };
        let mut undo = Undo {
            uffd: &uffd,
            registered: Vec::new(),
            was_non_blocking: None,
        };
        if let Err(e) = self.register_all(&mut undo) {
            undo.run();
            return Err(Rejected::new(uffd, e));
        }
        if let Err(e) = set_non_blocking(&mut undo) {
            undo.run();
            return Err(Rejected::new(uffd, e));
        }
        let Undo {
            registered,
            was_non_blocking,
            ..
        } = undo;
        match self.launch(uffd, source, ready) {
            Ok(server) => Ok(server),
            Err((uffd, e)) => {
                Undo {
                    uffd: &uffd,
                    registered,
                    was_non_blocking,
                }
                .run();
                Err(Rejected::new(uffd, e))
            }
        }
    }

    /// Everything before registration: the checks, the working set, the allocations, the
    /// descriptors.
    fn prepare(&self, uffd: &Uffd, source: &Arc<dyn PageSource>) -> Result<Ready, ServeError> {
        self.check(uffd, &**source)?;
        let (recorder, replay) = self.working_set_setup(&**source)?;
        let mut pages = Vec::with_capacity(self.regions.len());
        for (index, r) in self.regions.iter().enumerate() {
            let state = PageState::try_new(r.pages()).ok_or_else(|| ServeError::InvalidRegion {
                index,
                range: r.range(),
                reason: format!(
                    "its {} pages need {} bytes of page state: the allocation failed",
                    r.pages(),
                    r.pages().div_ceil(64) as u128 * 16
                ),
            })?;
            pages.push(state);
        }
        let replay_rank = replay_ranks(&self.regions, &replay)?;
        let regions: Vec<Region> = self
            .regions
            .iter()
            .map(|r| Region {
                block: self.block_for(r),
                ..r.clone()
            })
            .collect();
        let zeros_len = regions.iter().map(|r| r.block).max().unwrap_or(0);
        let zeros = ZeroMap {
            ptr: map_zeros(zeros_len)?,
            len: zeros_len,
        };
        Ok(Ready {
            regions,
            pages,
            recorder,
            replay,
            replay_rank,
            zeros,
            stop_fd: eventfd()?,
            fill_fd: (self.background || self.place_arrived)
                .then(eventfd)
                .transpose()?,
            peer: self.peer.map(pidfd_open).transpose()?,
        })
    }

    /// Registers every region, noting in `undo` what a failure must take back.
    fn register_all(&self, undo: &mut Undo<'_>) -> Result<(), ServeError> {
        let unreadable = Unreadable::new(&self.regions)?;
        for (index, r) in self.regions.iter().enumerate() {
            let before = registered_already(undo.uffd, r, &unreadable);
            let uffd = undo.uffd;
            register(uffd, index, r, || {
                undo.registered.push((r.addr, r.len, before))
            })?;
        }
        Ok(())
    }

    /// The server from what [`prepare`](Self::prepare) made, its threads started; on a
    /// failure, the threads started are stopped and the descriptor is given back.
    fn launch(
        &self,
        uffd: Uffd,
        source: Arc<dyn PageSource>,
        ready: Ready,
    ) -> Result<Server, (Uffd, ServeError)> {
        let inline = source.never_blocks();
        // Threads: the workers, the background thread, the reader (dispatch mode).
        let threads = self.workers + 2;
        let shared = Arc::new(Shared {
            pages: ready.pages,
            uffd_fd: uffd.as_raw_fd(),
            map: RwLock::new(Locked::new(AddressMap::new(&self.regions), uffd)),
            activity: (0..threads).map(|_| Activity::default()).collect(),
            desk: ready.fill_fd.map(|fd| FillDesk {
                fd,
                slot: Mutex::new(Slot::Empty),
                done: Condvar::new(),
            }),
            dispatch: (!inline).then(|| Dispatch {
                queue: Mutex::new(VecDeque::with_capacity(1024)),
                ready: Condvar::new(),
            }),
            epoch: AtomicU64::new(0),
            base_page: super::source::page_size(),
            regions: ready.regions,
            source,
            stop_fd: ready.stop_fd,
            peer: ready.peer,
            stopping: AtomicBool::new(false),
            counters: (0..threads).map(|_| Counters::default()).collect(),
            outcome: Mutex::new(None),
            config: Config {
                busy_poll: self.busy_poll,
                policy: self.policy,
                // A worker serves the faults it reads: with several workers, reading one
                // message at a time lets the others take the next faults. Alone, a worker
                // (or the reader, which serves none) reads whole batches.
                batch: if self.workers == 1 || !inline { 64 } else { 1 },
            },
            zeros: ready.zeros,
            recorder: ready.recorder,
            replay_rank: ready.replay_rank,
            replay: ready.replay,
            started: Instant::now(),
            replay_done_ns: AtomicU64::new(u64::MAX),
            replay_error: Mutex::new(None),
            arrivals: (self.place_arrived && !self.background)
                .then(|| Arc::new(ArrivalQueue::default())),
        });
        if let Some(queue) = &shared.arrivals {
            // Before any thread runs: what the source holds already is queued first.
            shared.source.arrivals(Arrivals::new(Arc::clone(queue)));
        }
        let mut server = Server {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            halted: false,
        };
        drop(shared);
        match server.spawn_threads(self.workers, self.background) {
            Ok(()) => Ok(server),
            // The threads started see the stop and end; the descriptor comes back with them.
            Err(e) => Err((server.stop().uffd, e)),
        }
    }

    fn check(&self, uffd: &Uffd, source: &dyn PageSource) -> Result<(), ServeError> {
        let bad = |why: &str| Err(ServeError::InvalidConfig(why.to_string()));
        if self.workers == 0 {
            return bad("zero workers: at least one thread must serve the faults");
        }
        if self.workers > MAX_WORKERS {
            return Err(ServeError::InvalidConfig(format!(
                "{} workers: at most {MAX_WORKERS} (each is a thread with a buffer of a block)",
                self.workers
            )));
        }
        if let Some(bytes) = self.fault_around.filter(|&b| b > MAX_FAULT_AROUND) {
            return Err(ServeError::InvalidConfig(format!(
                "fault_around of {bytes:#x} bytes: at most {MAX_FAULT_AROUND:#x} (64 MiB; each \
                 worker holds a buffer of a block, and a fault waits for its whole block)"
            )));
        }
        if self.busy_poll > MAX_BUSY_POLL {
            return Err(ServeError::InvalidConfig(format!(
                "busy_poll of {:?}: at most {MAX_BUSY_POLL:?} (a worker spins that long before \
                 it sleeps)",
                self.busy_poll
            )));
        }
        if let Some(pid) = self.peer.filter(|&pid| pid <= 0) {
            return Err(ServeError::InvalidConfig(format!(
                "peer_process({pid}): not a process id (it must be positive)"
            )));
        }
        if self.regions.is_empty() {
            return bad("no region to serve");
        }
        let features = uffd.features();
        if !features.contains(FeatureFlags::EVENT_REMOVE) && !self.no_discards {
            return bad(
                "the userfaultfd lacks FeatureFlags::EVENT_REMOVE: without it, pages the process \
                 discards would be refilled with the source's stale contents (create it with \
                 require_features(userfaultfd::serve::EVENTS)), or set no_discards(true) if \
                 the process never discards pages of the regions",
            );
        }
        if features.contains(FeatureFlags::EVENT_FORK) {
            return bad(
                "the userfaultfd has FeatureFlags::EVENT_FORK: the server does not serve forked \
                 children (see the module docs); create it without EVENT_FORK",
            );
        }
        for (index, r) in self.regions.iter().enumerate() {
            r.validate(index, source.len())?;
        }
        check_disjoint(&self.regions)
    }
}

/// What [`ServerBuilder::prepare`] made, for the server.
struct Ready {
    regions: Vec<Region>,
    pages: Vec<PageState>,
    recorder: Option<Recorder>,
    replay: ReplayList,
    replay_rank: Vec<Box<[u32]>>,
    zeros: ZeroMap,
    stop_fd: OwnedFd,
    /// The background fill's wake-up eventfd, when there is a fill.
    fill_fd: Option<OwnedFd>,
    peer: Option<OwnedFd>,
}

/// What a failed start takes back, so that the caller gets the descriptor as it gave it.
struct Undo<'a> {
    uffd: &'a Uffd,
    /// The ranges registered, each with whether it was registered before the start.
    registered: Vec<(usize, usize, bool)>,
    /// The blocking mode before the start, once changed.
    was_non_blocking: Option<bool>,
}

impl Undo<'_> {
    fn run(self) {
        if let Some(was) = self.was_non_blocking {
            let _ = self.uffd.set_non_blocking(was);
        }
        for &(addr, len, before) in &self.registered {
            if !before {
                let _ = self.uffd.unregister(addr as *mut libc::c_void, len);
            }
        }
    }
}

/// Registers region `index` with the backend's mode; `registered` is called once the kernel
/// has registered it, before the ioctls it allows are checked.
fn register(
    uffd: &Uffd,
    index: usize,
    r: &Region,
    registered: impl FnOnce(),
) -> Result<(), ServeError> {
    let (mode, mut needed) = match r.backend {
        Backend::Copy => (RegisterMode::MISSING, IoctlFlags::COPY),
        Backend::Continue { .. } => (
            RegisterMode::MISSING | RegisterMode::MINOR,
            IoctlFlags::CONTINUE | IoctlFlags::COPY,
        ),
    };
    if r.page_size == super::source::page_size() {
        needed |= IoctlFlags::ZEROPAGE;
    }
    let allowed = uffd
        .register_with_mode(r.addr as *mut libc::c_void, r.len, mode)
        .map_err(|source| ServeError::Uffd {
            operation: "registering the region (UFFDIO_REGISTER)",
            at: Some(RegionRange {
                index,
                range: r.range(),
            }),
            source,
        })?;
    registered();
    if !allowed.contains(needed) {
        return Err(ServeError::InvalidRegion {
            index,
            range: r.range(),
            reason: format!(
                "its memory allows only {allowed:?}, the backend needs {needed:?} (is the page \
                 size right? Continue needs shmem or hugetlbfs)"
            ),
        });
    }
    Ok(())
}

/// One base page of `PROT_NONE` outside every region: a source address the kernel cannot
/// read. Outside the regions, because a region may span an unmapped hole that the kernel
/// could pick for the page; registered with the region, it would make our own `munmap` wait
/// for its `UNMAP` event, read by nobody.
struct Unreadable(*mut libc::c_void);

impl Unreadable {
    fn new(regions: &[Region]) -> Result<Unreadable, ServeError> {
        let ps = super::source::page_size();
        let mut inside = Vec::new();
        let found = loop {
            // SAFETY: a new mapping at an address of the kernel's choosing.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ps,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                break Err(io_error(
                    "mapping an unreadable page (to probe registrations)",
                ));
            }
            let page = Unreadable(p);
            if !regions.iter().any(|r| r.range().contains(&(p as usize))) {
                break Ok(page);
            }
            // Kept mapped (not registered yet, so unmapped freely when dropped) so that the
            // next try gets another address.
            inside.push(page);
            if inside.len() == 64 {
                break Err(ServeError::InvalidConfig(
                    "the regions cover the unmapped space where the kernel places new \
                     mappings (64 tries): start needs one page outside them"
                        .into(),
                ));
            }
        };
        drop(inside);
        found
    }
}

impl Drop for Unreadable {
    fn drop(&mut self) {
        // SAFETY: our own mapping of one page, never registered (a try that fell inside a
        // region is dropped before registration), unused from now on.
        unsafe { libc::munmap(self.0, super::source::page_size()) };
    }
}

/// Whether the first page of `r` is in a range already registered with `uffd` (by the
/// caller, before the start), so that a failed start must leave it registered.
///
/// A `UFFDIO_COPY` of that page from an unreadable address places nothing: the kernel looks
/// up the destination first, and answers `ENOENT` when it is not in a range registered with a
/// userfaultfd; in one, it fails reading the source (`EFAULT`), or earlier for a page already
/// present (`EEXIST`), a misaligned huge page (`EINVAL`) or an empty huge page pool
/// (`ENOMEM`). A range registered with *another* userfaultfd fails the registration that
/// follows (`EBUSY`), so "registered" means "with `uffd`" where it matters. `EAGAIN` (an event
/// pending) or `ESRCH` cannot tell: counted as registered, so that a failed start never
/// unregisters what the caller may have registered.
fn registered_already(uffd: &Uffd, r: &Region, unreadable: &Unreadable) -> bool {
    // SAFETY: the source's first base page is unreadable, and the kernel copies a page (a
    // huge page too) from its first byte on, so it places nothing at the destination (see
    // above); waking is off.
    let probe = unsafe {
        uffd.copy(
            unreadable.0.cast_const(),
            r.addr as *mut libc::c_void,
            r.page_size,
            false,
        )
    };
    !matches!(probe, Err(crate::Error::CopyFailed(crate::Errno::ENOENT)))
}

fn set_non_blocking(undo: &mut Undo<'_>) -> Result<(), ServeError> {
    let io = |source| ServeError::Io {
        operation: "making the userfaultfd non-blocking",
        source,
    };
    let was = undo.uffd.is_non_blocking().map_err(io)?;
    undo.uffd.set_non_blocking(true).map_err(io)?;
    undo.was_non_blocking = Some(was);
    Ok(())
}

fn io_error(operation: &'static str) -> ServeError {
    ServeError::Io {
        operation,
        source: std::io::Error::last_os_error(),
    }
}

fn eventfd() -> Result<OwnedFd, ServeError> {
    // SAFETY: eventfd has no memory effects.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io_error("eventfd"));
    }
    // SAFETY: a new descriptor only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, ServeError> {
    // SAFETY: pidfd_open has no memory effects.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io_error("pidfd_open of the peer process"));
    }
    // SAFETY: a new descriptor only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A read-only private anonymous mapping: all zeros, costing no memory.
fn map_zeros(len: usize) -> Result<*const u8, ServeError> {
    // SAFETY: a new mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io_error("mapping the zero buffer"));
    }
    Ok(p as *const u8)
}

/// Each region page's position in the replay list plus one (0: not listed); no entry without
/// replay. Positions past `u32::MAX - 1` are left out (they fault as unrecorded pages).
fn replay_ranks(regions: &[Region], list: &ReplayList) -> Result<Vec<Box<[u32]>>, ServeError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut ranks: Vec<Box<[u32]>> = Vec::with_capacity(regions.len());
    for (index, r) in regions.iter().enumerate() {
        let mut rank = Vec::new();
        rank.try_reserve_exact(r.pages())
            .map_err(|_| ServeError::InvalidRegion {
                index,
                range: r.range(),
                reason: format!(
                    "replaying needs 4 bytes per page, {} bytes for its {} pages: the \
                     allocation failed",
                    r.pages() as u128 * 4,
                    r.pages()
                ),
            })?;
        rank.resize(r.pages(), 0u32);
        ranks.push(rank.into_boxed_slice());
    }
    for (k, &(region, page)) in list.iter().enumerate().take(u32::MAX as usize - 1) {
        ranks[region][page] = k as u32 + 1;
    }
    Ok(ranks)
}

fn stats_of(shared: &Shared) -> Stats {
    let mut s = Stats::sum(&shared.counters);
    let ns = shared.replay_done_ns.load(Ordering::Acquire);
    s.replay_time = (ns != u64::MAX).then(|| Duration::from_nanos(ns));
    s
}

/// How long [`Server::stop`] waits for a thread inside `PageSource::fetch` before it leaves
/// the thread behind.
pub(crate) const FETCH_GRACE: Duration = Duration::from_millis(100);

/// A running page server. Stop it with [`stop`](Server::stop).
pub struct Server {
    shared: Arc<Shared>,
    /// The threads, with their ids (index in `Shared::activity`).
    threads: Vec<(usize, JoinHandle<()>)>,
    /// Whether [`halt`](Server::halt) ran.
    halted: bool,
}

/// What a stopped server leaves: its statistics, why it stopped, and the descriptor.
#[derive(Debug)]
pub struct Finished {
    /// The final statistics.
    pub stats: Stats,
    /// Why it stopped: `Ok` for a stop or the process's exit, `Err` for a fatal error.
    pub outcome: Result<Exit, ServeError>,
    /// The userfaultfd, still open with the regions registered: threads blocked in a fault
    /// stay blocked until it is dropped (then they get the kernel's default pages) or their
    /// ranges are unregistered. Faults the server read and did not answer are pending on it
    /// again (their threads were woken and faulted again), so whoever reads it next sees
    /// every blocked fault. No thread of the server uses it or keeps a copy of it open. It is
    /// non-blocking (`O_NONBLOCK`, set by [`ServerBuilder::start`]): `read_event` returns
    /// `Ok(None)` when no message is pending, so poll it, or call
    /// [`Uffd::set_non_blocking`]`(false)` before reading it blocking. While it is open, nobody reads its events: an `munmap`,
    /// `mremap` or `madvise(MADV_DONTNEED)` of a region waits for its event to be read, so
    /// drop it (or unregister) before those.
    pub uffd: Uffd,
    /// The recorded working set (see [`ServerBuilder::record`]); `None` when not recording.
    pub working_set: Option<WorkingSet>,
    /// Why the replay ended early, if it failed (a source error, an unexpected `errno`): the
    /// server went on serving faults.
    pub replay_error: Option<ServeError>,
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Starts the threads: `workers` workers (reading and serving, or with a reader thread
    /// when the source may block), and the replay and background fill if asked for. On an
    /// error the threads started are stopped by `Drop`.
    fn spawn_threads(&mut self, workers: usize, fill: bool) -> Result<(), ServeError> {
        let shared = Arc::clone(&self.shared);
        let dispatch = shared.dispatch.is_some();
        for id in 0..workers {
            let mut worker = Worker::new(Arc::clone(&shared), id, true);
            self.spawn(format!("uffd-serve-{id}"), id, move |_| {
                if dispatch {
                    worker.run_fetcher()
                } else {
                    worker.run()
                }
            })?;
        }
        if dispatch {
            let id = shared.reader_id();
            let mut reader = Worker::new(Arc::clone(&shared), id, false);
            self.spawn("uffd-serve-reader".into(), id, move |_| reader.run_reader())?;
        }
        let arrived = shared.arrivals.is_some();
        if fill || arrived || !shared.replay.is_empty() {
            let id = workers;
            self.spawn("uffd-serve-bg".into(), id, move |shared| {
                // The replay runs at the workers' priority: its pages are wanted soon, and at
                // the lowest priority any other load on the machine starves it (measured: the
                // workload then overtook it and faulted). Faults keep priority through the
                // lock: a replay ioctl holds it for at most 2 MiB.
                match replay::replay(shared, id) {
                    // A failed replay ends the replay only: the workers keep serving faults
                    // (a fault on the page that failed meets the error again, and that one
                    // is fatal).
                    Err(Stop::Failed(e)) => {
                        *shared
                            .replay_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                    other => other?,
                }
                if fill {
                    background(shared, id)?; // (which lowers its priority)
                } else if arrived {
                    place_arrived(shared, id)?; // (likewise)
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Spawns thread `id` (its index in the counters and activities).
    fn spawn(
        &mut self,
        name: String,
        id: usize,
        body: impl FnOnce(&Shared) -> Result<(), Stop> + Send + 'static,
    ) -> Result<(), ServeError> {
        let shared = Arc::clone(&self.shared);
        // Running from now, so that a stop racing the thread's start waits for it.
        shared.activity[id].set(RUNNING);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&shared)));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(Stop::Exit(exit))) => finish(&shared, Ok(exit)),
                Ok(Err(Stop::Failed(e))) => fail(&shared, id, e),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "(no message)".into());
                    fail(&shared, id, ServeError::WorkerPanicked(msg));
                }
            }
            shared.activity[id].set(EXITED);
        });
        match spawned {
            Ok(handle) => {
                self.threads.push((id, handle));
                Ok(())
            }
            Err(source) => {
                self.shared.activity[id].set(EXITED);
                Err(ServeError::Io {
                    operation: "spawning a worker thread",
                    source,
                })
            }
        }
    }

    /// The statistics so far.
    pub fn stats(&self) -> Stats {
        stats_of(&self.shared)
    }

    /// Why the replay ended early, if it failed (the server goes on serving faults).
    pub fn replay_error(&self) -> Option<String> {
        let e = self
            .shared
            .replay_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        e.as_ref().map(ToString::to_string)
    }

    /// The working set recorded so far (see [`ServerBuilder::record`]); `None` when not
    /// recording.
    pub fn working_set(&self) -> Option<WorkingSet> {
        self.shared.recorder.as_ref().map(Recorder::working_set)
    }

    /// Whether the server has stopped by itself (fatal error, or the process exited).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Why the server stopped by itself, if it has: the error's message, or the exit.
    pub fn outcome(&self) -> Option<Result<Exit, String>> {
        let outcome = self
            .shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        outcome
            .as_ref()
            .map(|o| o.as_ref().map(|e| *e).map_err(|e| e.to_string()))
    }

    /// Waits until the server stops by itself (fatal error, or the process exited), at most
    /// `timeout` (`Duration::MAX`: until it does); returns whether it has.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        // `None`: a timeout past what `Instant` can hold (`Duration::MAX`) waits for ever.
        let deadline = std::time::Instant::now().checked_add(timeout);
        while !self.is_stopped() {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Stops the server and returns the statistics, why it stopped, and the descriptor.
    ///
    /// Returns within a bounded time: it wakes every thread (those blocked in `poll` or
    /// waiting for work), waits until each has either returned or is inside
    /// `PageSource::fetch`, gives those in a fetch 100 ms to return, joins those that
    /// returned, and takes the descriptor out under the server's exclusive lock (so no
    /// placement is in progress once it returns). What happens to every outstanding fault is
    /// in the module docs ("Stopping"). A thread still in a fetch then (a source that may
    /// block, see [`PageSource::never_blocks`]) is left behind: its fault is woken (it faults
    /// again, pending on [`Finished::uffd`]); when the fetch returns, the thread finds the
    /// descriptor gone, places nothing, and exits, dropping its reference to the source. It
    /// never uses, nor keeps open, the descriptor returned here.
    pub fn stop(mut self) -> Finished {
        let uffd = self
            .halt()
            .expect("the descriptor is taken out once, by the first halt");
        let shared = &self.shared;
        let stats = stats_of(shared);
        let working_set = shared.recorder.as_ref().map(Recorder::working_set);
        let replay_error = shared
            .replay_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let outcome = shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Ok(Exit::Stopped));
        Finished {
            stats,
            outcome,
            working_set,
            replay_error,
            uffd,
        }
    }

    /// Stops the threads (see [`stop`](Self::stop)) and takes the descriptor out: `None` if
    /// already done.
    fn halt(&mut self) -> Option<Uffd> {
        if self.halted {
            return None;
        }
        self.halted = true;
        let shared = &*self.shared;
        signal_stop(shared);
        // Every thread returns, or is in a fetch (or leaves one to find the server stopping):
        // what a thread does between two checks of `stopping` is bounded (an ioctl, a short
        // back-off, a lock held only for an ioctl).
        let mut spins = 0u32;
        while !shared
            .activity
            .iter()
            .all(|a| matches!(a.state.load(Ordering::SeqCst), EXITED | IN_FETCH))
        {
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // A fetch in progress gets a short grace (most end in microseconds: the fault it
        // serves is then finished); one that outlasts it is left behind.
        let deadline = Instant::now() + FETCH_GRACE;
        while Instant::now() < deadline
            && shared
                .activity
                .iter()
                .any(|a| a.state.load(Ordering::SeqCst) != EXITED)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        for (id, handle) in self.threads.drain(..) {
            if shared.activity[id].state.load(Ordering::SeqCst) == EXITED {
                let _ = handle.join();
            }
            // Otherwise left in its fetch, detached: it holds its own reference to the shared
            // state, and finds the descriptor gone.
        }
        let left: Vec<usize> = shared
            .activity
            .iter()
            .map(|a| a.fault.load(Ordering::Acquire))
            .filter(|&addr| addr != usize::MAX)
            .collect();
        let queued: Vec<usize> = shared.dispatch.as_ref().map_or_else(Vec::new, |d| {
            let mut queue = d.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.drain(..).map(|f| f.addr).collect()
        });
        // No placement is in progress while this is held; none starts after the take.
        let mut guard = lock_write(&shared.map);
        let uffd = guard.take_uffd()?;
        drop(guard);
        let ps = super::source::page_size();
        for addr in left.into_iter().chain(queued) {
            let _ = uffd.wake((addr & !(ps - 1)) as *mut libc::c_void, ps);
        }
        Some(uffd)
    }
}

impl Drop for Server {
    /// Stops the server as [`Server::stop`] does, then closes the descriptor: threads blocked
    /// in a fault retry without userfaultfd (see the module docs).
    fn drop(&mut self) {
        drop(self.halt());
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("uffd", &self.shared.uffd_fd)
            .field("regions", &self.shared.regions)
            .field("workers", &self.threads.len())
            .finish()
    }
}

fn signal_stop(shared: &Shared) {
    // SeqCst: against a thread's entering a fetch (see `Placer::fetch`).
    shared.stopping.store(true, Ordering::SeqCst);
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one` to our eventfd; it stays readable (never read), so
    // every poll on it returns at once.
    unsafe { libc::write(shared.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if let Some(dispatch) = &shared.dispatch {
        // Under the queue's lock: a fetch worker checks `stopping` under it before waiting.
        let _queue = dispatch.queue.lock().unwrap_or_else(|e| e.into_inner());
        dispatch.ready.notify_all();
    }
    if let Some(arrivals) = &shared.arrivals {
        // The source's reports from now on are dropped (and its handle says so).
        arrivals.close();
    }
    if let Some(desk) = &shared.desk {
        // The fill, waiting for a placement not yet taken, withdraws it.
        let _slot = desk.slot.lock().unwrap_or_else(|e| e.into_inner());
        desk.done.notify_all();
    }
}

fn finish(shared: &Shared, outcome: Result<Exit, ServeError>) {
    {
        let mut o = shared.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.is_none() {
            *o = Some(outcome);
        }
    }
    signal_stop(shared);
}

/// A fatal error in thread `id`: follows the policy, records it, stops the server.
fn fail(shared: &Shared, id: usize, error: ServeError) {
    let first = shared
        .outcome
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none();
    if first && shared.config.policy == ErrorPolicy::FailClosed {
        let outside = match error {
            ServeError::FaultOutsideRegions { addr } => Some(addr),
            _ => None,
        };
        poison_unplaced(shared, id, outside);
    }
    finish(shared, Err(error));
}
