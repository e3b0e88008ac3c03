//! Working-set record and replay on the page server: record the demand faults of a run,
//! replay them on a fresh mapping (every backend: anonymous and shmem and hugetlbfs with
//! COPY, shmem and hugetlbfs with CONTINUE), and check that the second run finds its pages
//! in place, with the right contents, without faulting; a record of another snapshot is
//! refused; a REMOVE during replay wins; stopping during replay, and a replay that fails,
//! leave the server in order; only demand faults are recorded.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::serve::{mismatches, serve_uffd, snapshot, Gate, TestSource};
use support::{join_timeout, spawn_named, MemoryType, Region};
use userfaultfd::serve::{
    Backend, PageSource, Region as Served, ServeError, Server, SnapshotId, WorkingSet,
    WorkingSetError, Zeros,
};
use userfaultfd::RegisterMode;

/// Pages per region (hugetlb's are 2 MiB: the reservation is shared, use few).
fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 8,
        _ => 256,
    }
}

/// The workload's pages: a fixed scattered third of the region, in a fixed order.
fn touched(pages: usize) -> Vec<usize> {
    let mut seen = vec![false; pages];
    (0..pages)
        .map(|k| (k * 37 + 11) % pages)
        .filter(|&p| p % 3 == 0 && !std::mem::replace(&mut seen[p], true))
        .collect()
}

/// How one run serves the region: the backend, and what memory to serve.
struct Setup {
    memory: MemoryType,
    backend: Backend,
    expected: Vec<u8>,
}

impl Setup {
    /// A fresh region (for CONTINUE: its page cache filled with the snapshot, served from a
    /// second view) and its source.
    fn region(&self) -> Option<(Region, Arc<dyn PageSource>, Option<Region>)> {
        let memory = self.memory;
        let file = Region::new(memory, pages_for(memory))?;
        let ps = file.page_size();
        match self.backend {
            Backend::Copy => {
                let source = Arc::new(TestSource::new(self.expected.clone(), ps));
                Some((file, source, None))
            }
            Backend::Continue { .. } => {
                let view = file.second_view();
                for i in 0..file.pages() {
                    view.write_page(i, &self.expected[i * ps..(i + 1) * ps]);
                }
                let served = file.second_view();
                Some((served, Arc::new(Zeros::new(0)), Some(file)))
            }
        }
    }

    fn mode(&self) -> RegisterMode {
        match self.backend {
            Backend::Copy => RegisterMode::MISSING,
            Backend::Continue { .. } => RegisterMode::MISSING | RegisterMode::MINOR,
        }
    }

    /// Starts a server on `region` (one page per fault, so that the record holds exactly the
    /// pages touched), recording, replaying `replay` if given.
    fn start(
        &self,
        region: &Region,
        source: Arc<dyn PageSource>,
        replay: Option<WorkingSet>,
    ) -> Option<Result<Server, ServeError>> {
        let uffd = serve_uffd(self.memory, self.mode())?;
        let mut b = Server::builder();
        b.fault_around(0)
            .record(true)
            .snapshot_id(SnapshotId::new(self.expected.len() as u64, 42))
            .region(
                Served::new(region.addr(), region.len())
                    .page_size(region.page_size())
                    .backend(self.backend),
            );
        if let Some(ws) = replay {
            b.replay(ws);
        }
        // SAFETY: the test region holds no Rust object.
        Some(unsafe { b.start(uffd, source) })
    }
}

fn wait_replayed(server: &Server) -> Duration {
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        if let Some(t) = server.stats().replay_time {
            return t;
        }
        assert!(Instant::now() < deadline, "the replay did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn record_then_replay(memory: MemoryType, backend: Backend) {
    let pages = pages_for(memory);
    let ps = memory.page_size();
    let setup = Setup {
        memory,
        backend,
        expected: snapshot(pages, ps),
    };
    let order = touched(pages);

    // Run 1: record.
    let Some((region, source, _keep)) = setup.region() else {
        return;
    };
    let Some(server) = setup.start(&region, source, None) else {
        return;
    };
    let server = server.unwrap_or_else(|e| panic!("{memory:?} {backend:?}: {e}"));
    let bad = mismatches(&region, &setup.expected, order.iter().copied());
    let first = server.stop();
    assert!(
        bad.is_empty(),
        "{memory:?} {backend:?}: pages {bad:?} differ"
    );
    let ws = first.working_set.expect("recording");
    let recorded: Vec<usize> = ws.order().iter().map(|&p| p as usize).collect();
    assert_eq!(recorded, order, "{memory:?} {backend:?}: the record");
    assert_eq!(first.stats.faults, order.len() as u64);
    // Through the file format, as a next restore would.
    let ws = WorkingSet::decode(&ws.encode()).unwrap();
    drop(first.uffd);
    drop(region);

    // Run 2: replay on a fresh mapping; once it is done, the workload faults no more.
    let (region, source, _keep) = setup.region().unwrap();
    let server = setup
        .start(&region, source, Some(ws))
        .unwrap()
        .unwrap_or_else(|e| panic!("{memory:?} {backend:?}: {e}"));
    let replay_time = wait_replayed(&server);
    let bad = mismatches(&region, &setup.expected, order.iter().copied());
    let mid = server.stats();
    // A page outside the record still faults, and is served.
    let outside = (0..pages).find(|p| !order.contains(p)).unwrap();
    let bad_outside = mismatches(&region, &setup.expected, [outside].into_iter());
    let second = server.stop();
    let s = &second.stats;
    eprintln!("{memory:?} {backend:?}: replay {replay_time:?}, {s:?}");
    assert!(
        bad.is_empty() && bad_outside.is_empty(),
        "{memory:?} {backend:?}: {bad:?}"
    );
    assert_eq!(mid.faults, 0, "{memory:?} {backend:?}: {mid:?}");
    assert_eq!(s.replay_pages, order.len() as u64, "{s:?}");
    assert_eq!(s.faults, 1, "{s:?}");
    assert!(second.outcome.is_ok() && second.replay_error.is_none());
    // The second run recorded only its own demand fault.
    assert_eq!(second.working_set.unwrap().order(), &[outside as u64]);
}

#[test]
fn record_then_replay_on_every_backend() {
    for memory in MemoryType::ALL {
        record_then_replay(memory, Backend::Copy);
    }
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        record_then_replay(memory, Backend::Continue { private: false });
    }
}

fn anonymous(pages: usize) -> (Region, Vec<u8>) {
    let region = Region::new(MemoryType::Anonymous, pages).unwrap();
    let expected = snapshot(pages, region.page_size());
    (region, expected)
}

#[test]
fn record_of_another_snapshot_is_refused() {
    let (region, expected) = anonymous(64);
    let ps = region.page_size();
    let source = Arc::new(TestSource::new(expected.clone(), ps));
    // Recorded on a snapshot that differs in one sampled page.
    let mut other = expected.clone();
    other[0] ^= 1;
    let ws = WorkingSet::new(
        SnapshotId::sample(&TestSource::new(other, ps)).unwrap(),
        ps as u64,
        vec![1, 2],
    )
    .unwrap();
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    // SAFETY: the test region holds no Rust object.
    let started = unsafe {
        Server::builder()
            .replay(ws)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, source)
    };
    let e = started.unwrap_err();
    assert!(
        matches!(
            e,
            ServeError::WorkingSet(WorkingSetError::OtherSnapshot { .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("another snapshot"), "{e}");
}

/// Starts a replay of pages `0..n` (one run) whose source read is held at a gate.
fn gated_replay(region: &Region, expected: &[u8], n: u64) -> (Server, Arc<Gate>) {
    let ps = region.page_size();
    let gate = Arc::new(Gate::default());
    let mut source = TestSource::new(expected.to_vec(), ps);
    source.gate = Some(Arc::clone(&gate));
    let id = SnapshotId::new(expected.len() as u64, 7);
    let ws = WorkingSet::new(id, ps as u64, (0..n).collect()).unwrap();
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(0)
            .snapshot_id(id)
            .replay(ws)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    gate.wait_entered();
    (server, gate)
}

#[test]
fn remove_during_replay_wins() {
    let (region, expected) = anonymous(64);
    let ps = region.page_size();
    let (server, gate) = gated_replay(&region, &expected, 16);
    // The replay has read its run from the source and not placed it: discard half of it.
    // SAFETY: discards pages of our own test mapping (a REMOVE event the workers read).
    let r = unsafe { libc::madvise(region.page(4).cast(), 8 * ps, libc::MADV_DONTNEED) };
    assert_eq!(r, 0);
    gate.open();
    wait_replayed(&server);
    let mut want = expected.clone();
    want[4 * ps..12 * ps].fill(0);
    let bad = mismatches(&region, &want, 0..16);
    let s = server.stop().stats;
    eprintln!("{s:?}");
    assert!(bad.is_empty(), "pages {bad:?} differ");
    // The discarded pages were not replayed (the 8 faults on them got zeros).
    assert_eq!(s.replay_pages, 8, "{s:?}");
    assert_eq!(s.faults, 8, "{s:?}");
}

#[test]
fn stop_during_replay() {
    let (region, expected) = anonymous(64);
    let (server, gate) = gated_replay(&region, &expected, 64);
    let opener = spawn_named("opener", move || {
        std::thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    let finished = server.stop();
    join_timeout(opener);
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    let s = finished.stats;
    // Stopped before the end of the replay: no replay time; what was placed is counted.
    assert!(s.replay_time.is_none() || s.replay_pages == 64, "{s:?}");
    assert!(s.replay_pages <= 64, "{s:?}");
}

#[test]
fn failed_replay_leaves_faults_served() {
    let (region, expected) = anonymous(64);
    let ps = region.page_size();
    let mut source = TestSource::new(expected.clone(), ps);
    source.fail_at = Some(40);
    let id = SnapshotId::new(expected.len() as u64, 7);
    // The replay reads 40 first (and fails), never reaching 0..8.
    let ws = WorkingSet::new(id, ps as u64, [40].into_iter().chain(0..8).collect()).unwrap();
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(0)
            .snapshot_id(id)
            .replay(ws)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    let deadline = Instant::now() + support::TIMEOUT;
    while server.replay_error().is_none() {
        assert!(Instant::now() < deadline, "the replay did not fail");
        std::thread::sleep(Duration::from_millis(1));
    }
    let bad = mismatches(&region, &expected, (0..32).chain(48..64));
    assert!(!server.is_stopped());
    let finished = server.stop();
    assert!(bad.is_empty(), "pages {bad:?} differ");
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    let e = finished.replay_error.unwrap();
    assert!(matches!(e, ServeError::Source { .. }), "{e:?}");
    assert_eq!(finished.stats.faults, 48);
    assert_eq!(finished.stats.replay_pages, 0);
}

#[test]
fn fault_ahead_of_the_replay_places_the_next_recorded_pages() {
    let (region, expected) = anonymous(64);
    let ps = region.page_size();
    let mut source = TestSource::new(expected.clone(), ps);
    // The replay fails at once (page 40), so the faults below are all ahead of it.
    source.fail_at = Some(40);
    let id = SnapshotId::new(expected.len() as u64, 7);
    let evens: Vec<u64> = (0..16).map(|k| 2 * k).collect();
    let ws = WorkingSet::new(id, ps as u64, [40].into_iter().chain(evens).collect()).unwrap();
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(16 * ps)
            .snapshot_id(id)
            .replay(ws)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    let deadline = Instant::now() + support::TIMEOUT;
    while server.replay_error().is_none() {
        assert!(Instant::now() < deadline, "the replay did not fail");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A fault on page 0 places it and the 15 recorded pages after it (the even pages up to
    // 30), not the block around it: touching them faults no more.
    let mut bad = mismatches(&region, &expected, [0].into_iter());
    // (The fault is counted once its extra placements are done.)
    while server.stats().faults == 0 {
        assert!(Instant::now() < deadline, "the fault was not counted");
        std::thread::sleep(Duration::from_millis(1));
    }
    bad.extend(mismatches(&region, &expected, (2..32).step_by(2)));
    let after_evens = server.stats();
    // An odd page is not recorded: its fault places the block around it (pages 16..32 not yet
    // placed).
    // (Once that fault is counted: its thread is woken when page 17 is in place.)
    let mut bad_odd = mismatches(&region, &expected, [17].into_iter());
    while server.stats().faults < 2 {
        assert!(Instant::now() < deadline, "the fault was not counted");
        std::thread::sleep(Duration::from_millis(1));
    }
    bad_odd.extend(mismatches(&region, &expected, (19..32).step_by(2)));
    let s = server.stop().stats;
    assert!(bad.is_empty() && bad_odd.is_empty(), "{bad:?} {bad_odd:?}");
    assert_eq!(after_evens.faults, 1, "{after_evens:?}");
    assert_eq!(after_evens.fault_around_pages, 15, "{after_evens:?}");
    assert_eq!(s.faults, 2, "{s:?}");
    assert_eq!(s.fault_around_pages, 15 + 7, "{s:?}");
}

#[test]
fn only_demand_faults_are_recorded() {
    let (region, expected) = anonymous(64);
    let ps = region.page_size();
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(8 * ps)
            .record(true)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(TestSource::new(expected.clone(), ps)))
    }
    .unwrap();
    // Page 9 faults and brings its block (8..16); 12 and 8 are then there (once the fault
    // is counted: its thread is woken when page 9 is in place, before the rest of the block).
    // Page 3 faults.
    let mut bad = mismatches(&region, &expected, [9].into_iter());
    let deadline = Instant::now() + support::TIMEOUT;
    while server.stats().faults == 0 {
        assert!(Instant::now() < deadline, "the fault was not counted");
        std::thread::sleep(Duration::from_millis(1));
    }
    bad.extend(mismatches(&region, &expected, [12, 8, 3].into_iter()));
    let recorded = server.working_set().unwrap();
    let finished = server.stop();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(recorded.order(), &[9, 3]);
    assert_eq!(finished.working_set.unwrap(), recorded);
    // Identity sampled from the source (no snapshot_id given).
    let id = SnapshotId::sample(&TestSource::new(expected.clone(), ps)).unwrap();
    assert_eq!(recorded.snapshot(), id);
}
