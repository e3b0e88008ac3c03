//! A soak of the page server: on every memory kind and backend, everything a served process
//! does at once — threads faulting on random pages, a thread discarding pages, a thread
//! splitting the mapping into VMAs (`mprotect`, `mlock`) and forking children that read it —
//! against a source that is sometimes slow, with the background fill on and off and
//! fault-around on. Every byte of every page read is checked, and a watchdog gives each access
//! a deadline: a fault not served in time is reported as a hang, with its address, and the
//! run goes on (the blocked threads are released by unregistering the range).
//!
//! Configurations (the served mapping, and the backend):
//!
//! | memory | mapping | backend | discards |
//! |---|---|---|---|
//! | anonymous | private | `Copy` | `MADV_DONTNEED`, `MADV_FREE` |
//! | hugetlbfs (2 MiB, `MAP_HUGETLB`) | private anonymous | `Copy` | `MADV_DONTNEED` |
//! | shmem (memfd), hugetlbfs (2 MiB memfd) | shared | `Copy`, `Continue { private: false }` | `MADV_DONTNEED`, `MADV_REMOVE`, `fallocate(PUNCH_HOLE)` |
//! | shmem, hugetlbfs | private | `Copy`, `Continue { private: true }` | `MADV_DONTNEED` |
//!
//! Each configuration runs rounds of at most half a second, each from empty memory (2048
//! base pages, or 16 huge pages; a quarter of that in runs shorter than a second) with other
//! settings: 1 to 3 workers, fault-around of 8, 16 or
//! 64 pages (2 or 4 huge pages), the background fill on or off. In a round: three threads
//! read random pages; one discards discardable pages one at a time; one makes a random range
//! read-only (`mprotect`) or, when privileged and not on hugetlbfs (whose VMAs `mlock` does not
//! split), locks it (`mlock2(MLOCK_ONFAULT)`), for up to a millisecond, then restores it, and
//! every eighth time forks a child instead. In every other round the `Copy` source is slow
//! (every 16th read sleeps 2 ms, and it says it may block, so the server reads messages on a
//! thread of its own), in the others fast (in memory, `never_blocks`: the workers read
//! messages and fetch themselves). `Continue` does not read the source: the page cache holds
//! the snapshot, its zero pages left as holes.
//!
//! What a page may hold (the served semantics, see `userfaultfd::serve` and `Backend`): a page
//! never discarded holds exactly the source's bytes. A page the workload discards (every
//! third page) holds the source's bytes or zeros — or, read while being discarded, the
//! source's bytes up to some offset and zeros after it ("torn", counted); and once the workload
//! is over and a final discard (`MADV_DONTNEED` on private mappings, `MADV_REMOVE` on shared
//! ones) is done, zeros exactly.
//!
//! Forked children: the server refuses `EVENT_FORK`, so a child does not inherit the
//! registration and sees the parent's memory as it was at the fork. The child checks: a page
//! the parent had read (and found right) before the fork holds the source's bytes; on
//! anonymous memory a page not yet placed is empty (zeros); with `Continue` the page cache
//! holds the snapshot, so every page not discarded is the source's. The child reads only
//! pages whose reading changes nothing the parent sees (`Kind::child_reads`): on a shmem file
//! its read of a hole would put a zero page into the file, which the parent would then map
//! without a fault (the serve docs' advice: fork only after the regions are filled, or
//! `MADV_DONTFORK`), and on hugetlbfs it would take a huge page from the pool.
//!
//! The discarder pauses 50 µs between discards: a discarder that never pauses can starve the
//! faults on Linux 6.1 (the kernel refuses placements while its events are pending; see the
//! serve docs, "Discards without pause").
//!
//! Environment: `SERVE_SOAK_SECS` seconds per configuration (default 0.25; `ci/serve-soak`
//! runs minutes), `SERVE_SOAK_DEADLINE` seconds per access before it is a hang (default 10),
//! `SERVE_SOAK_ONLY` the configurations whose name contains it (as printed: "shmem shared").
//! Per configuration it prints faults/s, hangs and mismatches; any hang or mismatch fails.

mod support;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::dirty::Rng;
use support::serve::{compare_page, serve_uffd, snapshot, zero_page, PageRead, TestSource};
use support::watchdog::Watchdog;
use support::{
    join_timeout, privileged, spawn_child, spawn_named, ChildExit, MemoryType, Region, Waitable,
};
use userfaultfd::serve::{Backend, PageSource, Region as Served, Server, Zeros};
use userfaultfd::{RegisterMode, Uffd};

/// One configuration: a memory kind, how it is mapped, and the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind {
    memory: MemoryType,
    /// The served mapping is `MAP_PRIVATE` (anonymous memory always is).
    private: bool,
    /// `Backend::Continue` (the page cache holds the snapshot) instead of `Backend::Copy`.
    minor: bool,
    /// A mapping of a memfd (else `MAP_PRIVATE | MAP_ANONYMOUS`, with `MAP_HUGETLB` for
    /// hugetlbfs).
    file: bool,
}

const KINDS: [Kind; 10] = {
    const fn k(memory: MemoryType, private: bool, minor: bool) -> Kind {
        Kind {
            memory,
            private,
            minor,
            file: !matches!(memory, MemoryType::Anonymous),
        }
    }
    use MemoryType::{Anonymous, Hugetlb, Shmem};
    [
        k(Anonymous, true, false),
        Kind {
            file: false,
            ..k(Hugetlb, true, false)
        },
        k(Shmem, false, false),
        k(Shmem, true, false),
        k(Shmem, false, true),
        k(Shmem, true, true),
        k(Hugetlb, false, false),
        k(Hugetlb, true, false),
        k(Hugetlb, false, true),
        k(Hugetlb, true, true),
    ]
};

/// How the workload discards a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discard {
    DontNeed,
    Free,
    Remove,
    /// `fallocate(PUNCH_HOLE)` on the memfd: no `REMOVE` event (the server is not told).
    PunchHole,
}

impl Kind {
    fn name(&self) -> String {
        let memory = match self.memory {
            MemoryType::Anonymous => "anonymous",
            MemoryType::Shmem => "shmem",
            MemoryType::Hugetlb => "hugetlb",
        };
        let mapping = match (self.file, self.private) {
            (false, _) if self.memory == MemoryType::Hugetlb => "anonymous",
            (false, _) | (true, true) => "private",
            (true, false) => "shared",
        };
        let backend = if self.minor { "Continue" } else { "Copy" };
        format!("{memory} {mapping} {backend}")
    }

    fn backend(&self) -> Backend {
        if self.minor {
            Backend::Continue {
                private: self.private,
            }
        } else {
            Backend::Copy
        }
    }

    fn mode(&self) -> RegisterMode {
        if self.minor {
            RegisterMode::MISSING | RegisterMode::MINOR
        } else {
            RegisterMode::MISSING
        }
    }

    /// The region's pages: a quarter-second run (the suite's default, also under qemu) uses
    /// a quarter of them, so that its final checks stay short.
    fn pages(&self, short: bool) -> usize {
        let pages = if self.memory == MemoryType::Hugetlb {
            16
        } else {
            2048
        };
        if short {
            pages / 4
        } else {
            pages
        }
    }

    /// The discards the workload makes, in turn.
    fn discards(&self) -> &'static [Discard] {
        match (self.memory, self.private) {
            // (MADV_FREE is for anonymous base pages only.)
            (MemoryType::Anonymous, _) => &[Discard::DontNeed, Discard::Free],
            (_, true) => &[Discard::DontNeed],
            (_, false) => &[Discard::DontNeed, Discard::Remove, Discard::PunchHole],
        }
    }

    /// The discard after which a page reads as zeros.
    fn final_discard(&self) -> Discard {
        if self.private {
            Discard::DontNeed
        } else {
            Discard::Remove
        }
    }

    /// Whether a forked child reads page `p` (`seen`: the parent found it right before the
    /// fork). The child reads only pages whose read changes nothing the parent sees: reading
    /// a page that is not present puts a zero page into a shmem file (which the parent then
    /// maps without a fault: on a `Copy` mapping a non-discardable page would read zeros, and
    /// a discardable one could go from those zeros back to the source's bytes when a later
    /// hole punch, unknown to the server, is refilled), and on hugetlbfs takes a huge page from
    /// the pool (`SIGBUS` when other tests have emptied it).
    fn child_reads(&self, p: usize, seen: bool) -> bool {
        match (self.memory, self.minor) {
            // The child's own copy: reading changes nothing of the parent's.
            (MemoryType::Anonymous, _) => true,
            // The page cache holds the snapshot; holes read as zeros, as the parent's do.
            (MemoryType::Shmem, true) => true,
            // Never a hole: the page cache holds them and nothing punches them.
            (MemoryType::Hugetlb, true) => !discardable(p) && !zero_page(p),
            // Present in the parent at the fork, and never discarded.
            (_, false) => seen && !discardable(p),
        }
    }
}

/// Pages the workload discards.
fn discardable(page: usize) -> bool {
    page % 3 == 1
}

fn env_secs(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: a number of seconds"))
        })
        .unwrap_or(default)
}

/// What the threads of a run count.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    torn: AtomicU64,
    discards: AtomicU64,
    discards_skipped: AtomicU64,
    splits: AtomicU64,
    forks: AtomicU64,
    mismatches: AtomicU64,
    /// The first mismatches (and errors), described.
    notes: Mutex<Vec<String>>,
}

impl Tally {
    fn mismatch(&self, what: String) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < 20 && !notes.contains(&what) {
            notes.push(what);
        }
    }
}

/// A range whose VMA the shaper changed: discards that would fail there are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `mprotect(PROT_READ)`: `MADV_REMOVE` needs a writable shared mapping.
    ReadOnly,
    /// `mlock2(MLOCK_ONFAULT)`: no `madvise` discard applies to locked pages.
    Locked,
}

/// One round: the memory and what its threads share.
struct Round {
    kind: Kind,
    /// The served mapping.
    view: Region,
    /// The memfd's own mapping (file kinds): the file, for punching holes.
    file: Option<Region>,
    expected: Arc<Vec<u8>>,
    /// Pages a reader found holding the source's bytes (bit per page).
    seen: Box<[AtomicU64]>,
    /// The range the shaper changed, if any: `(first page, end page, how)`.
    shaped: Mutex<Option<(usize, usize, Shape)>>,
    done: AtomicBool,
    watchdog: Arc<Watchdog>,
    tally: Arc<Tally>,
    deadline: Duration,
    mlock: bool,
}

// Watchdog slots.
const READERS: usize = 3;
const DISCARDER: usize = READERS;
const SHAPER: usize = READERS + 1;
const FINAL: usize = READERS + 2;

impl Round {
    fn ps(&self) -> usize {
        self.view.page_size()
    }

    fn pages(&self) -> usize {
        self.view.pages()
    }

    /// Page `p` as read now, compared with the source's, every byte.
    fn read(&self, p: usize) -> PageRead {
        let ps = self.ps();
        // SAFETY: a page of the served mapping (readable: the shaper only makes it read-only);
        // its contents change only by discards, which the comparison allows for.
        let got = unsafe { std::slice::from_raw_parts(self.view.page(p), ps) };
        compare_page(got, &self.expected[p * ps..(p + 1) * ps])
    }

    fn is_seen(&self, p: usize) -> bool {
        self.seen[p / 64].load(Ordering::Relaxed) & (1 << (p % 64)) != 0
    }

    /// Checks a read during the workload; records a mismatch (unless a hang was reported:
    /// then the range may have been released to the kernel's default pages).
    fn judge(&self, p: usize, got: PageRead, who: &str) {
        let ok = match got {
            PageRead::Source => true,
            PageRead::Zeros => discardable(p),
            PageRead::Torn(_) => {
                self.tally.torn.fetch_add(1, Ordering::Relaxed);
                discardable(p)
            }
            PageRead::Wrong(_) => false,
        };
        if !ok && !self.watchdog.hung() {
            self.tally.mismatch(format!(
                "{}: {who}: page {p} at {:#x} (discardable: {}): {got:?}",
                self.kind.name(),
                self.view.page(p) as usize,
                discardable(p)
            ));
        }
    }

    fn discard(&self, op: Discard, p: usize) -> std::io::Result<()> {
        let ps = self.ps();
        let r = match op {
            Discard::PunchHole => {
                let fd = self.file.as_ref().and_then(|f| f.file()).unwrap();
                // SAFETY: punches a hole in our own memfd (the served pages hold no Rust
                // object).
                unsafe {
                    libc::fallocate(
                        fd.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        (p * ps) as libc::off_t,
                        ps as libc::off_t,
                    )
                }
            }
            _ => {
                let advice = match op {
                    Discard::DontNeed => libc::MADV_DONTNEED,
                    Discard::Free => libc::MADV_FREE,
                    _ => libc::MADV_REMOVE,
                };
                // SAFETY: discards a page of our own served mapping (no Rust object in it).
                unsafe { libc::madvise(self.view.page(p).cast(), ps, advice) }
            }
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// A faulting thread: reads random pages and checks each.
fn reader(round: &Round, slot: usize, seed: u64) {
    let mut rng = Rng(seed);
    let pages = round.pages();
    for _ in 0..50_000_000u64 {
        if round.done.load(Ordering::Relaxed) {
            break;
        }
        let p = rng.next() as usize % pages;
        let got = {
            let _access = round
                .watchdog
                .enter(slot, "reading", round.view.page(p) as usize);
            round.read(p)
        };
        round.tally.reads.fetch_add(1, Ordering::Relaxed);
        if got == PageRead::Source {
            round.seen[p / 64].fetch_or(1 << (p % 64), Ordering::Relaxed);
        }
        round.judge(p, got, "reader");
    }
}

/// Discards random discardable pages, one at a time, pausing 50 µs between two.
fn discarder(round: &Round, seed: u64) {
    let mut rng = Rng(seed);
    let ops = round.kind.discards();
    let candidates = round.pages().div_ceil(3);
    let mut n = 0usize;
    while !round.done.load(Ordering::Relaxed) {
        let p = (rng.next() as usize % candidates) * 3 + 1;
        if p >= round.pages() {
            continue;
        }
        let op = ops[n % ops.len()];
        n += 1;
        {
            // Held during the discard: the shaper changes no VMA under it.
            let shaped = round.shaped.lock().unwrap();
            let refused = match *shaped {
                Some((a, b, shape)) if (a..b).contains(&p) => match shape {
                    Shape::Locked => op != Discard::PunchHole,
                    Shape::ReadOnly => op == Discard::Remove,
                },
                _ => false,
            };
            if refused {
                round.tally.discards_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let _access =
                round
                    .watchdog
                    .enter(DISCARDER, "discarding", round.view.page(p) as usize);
            if let Err(e) = round.discard(op, p) {
                round.tally.mismatch(format!(
                    "{}: discarding page {p} with {op:?} failed: {e}",
                    round.kind.name()
                ));
            }
        }
        round.tally.discards.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Splits the mapping into VMAs and restores it (`mprotect` read-only, `mlock2` on fault),
/// and every eighth time forks a child that checks the pages.
fn shaper(round: &Round, seed: u64) {
    let mut rng = Rng(seed);
    let (ps, pages) = (round.ps(), round.pages());
    let mut n = 0u64;
    while !round.done.load(Ordering::Relaxed) {
        n += 1;
        if n % 8 == 0 {
            fork_and_check(round);
            continue;
        }
        let len = 1 + rng.next() as usize % (pages / 8).clamp(1, 64);
        let a = rng.next() as usize % (pages - len + 1);
        let addr = round.view.page(a);
        let shape = if round.mlock && n % 3 == 0 {
            Shape::Locked
        } else {
            Shape::ReadOnly
        };
        {
            let mut shaped = round.shaped.lock().unwrap();
            // SAFETY: changes the protection or locking of our own mapping; readers only
            // read, so read-only is enough for them.
            let r = unsafe {
                match shape {
                    Shape::ReadOnly => libc::mprotect(addr.cast(), len * ps, libc::PROT_READ),
                    Shape::Locked => libc::mlock2(addr.cast(), len * ps, libc::MLOCK_ONFAULT),
                }
            };
            if r != 0 {
                round.tally.mismatch(format!(
                    "{}: {shape:?} of pages {a}..{}: {}",
                    round.kind.name(),
                    a + len,
                    std::io::Error::last_os_error()
                ));
                return;
            }
            *shaped = Some((a, a + len, shape));
        }
        round.tally.splits.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(rng.next() % 1000));
        let mut shaped = round.shaped.lock().unwrap();
        // SAFETY: restores what was changed above.
        let r = unsafe {
            match shape {
                Shape::ReadOnly => {
                    libc::mprotect(addr.cast(), len * ps, libc::PROT_READ | libc::PROT_WRITE)
                }
                Shape::Locked => libc::munlock(addr.cast(), len * ps),
            }
        };
        *shaped = None;
        if r != 0 {
            round.tally.mismatch(format!(
                "{}: undoing {shape:?} of pages {a}..{}: {}",
                round.kind.name(),
                a + len,
                std::io::Error::last_os_error()
            ));
            return;
        }
    }
}

/// Forks a child that checks what it sees (see the module docs); a child that does not end
/// within the deadline is a hang.
fn fork_and_check(round: &Round) {
    round.tally.forks.fetch_add(1, Ordering::Relaxed);
    let child = {
        let _access = round.watchdog.enter(SHAPER, "forking", 0);
        spawn_child(|_| check_in_child(round))
    };
    let pid = child.pid();
    match child.wait_within(round.deadline) {
        None => round.watchdog.report(format!(
            "{}: forked child {pid} did not finish within {:?}",
            round.kind.name(),
            round.deadline
        )),
        Some(outcome) if outcome.exit != ChildExit::Exited(0) => round.tally.mismatch(format!(
            "{}: forked child: {:?}: {}",
            round.kind.name(),
            outcome.exit,
            outcome.report.trim()
        )),
        Some(_) => {}
    }
}

/// In the forked child: every page it may read holds what it must.
fn check_in_child(round: &Round) -> Result<(), String> {
    let kind = round.kind;
    for p in 0..round.pages() {
        let seen = round.is_seen(p);
        if !kind.child_reads(p, seen) {
            continue;
        }
        let got = round.read(p);
        let ok = if discardable(p) {
            !matches!(got, PageRead::Wrong(_))
        } else if seen || kind.minor {
            got == PageRead::Source
        } else {
            // Anonymous memory: a page not placed at the fork is empty in the child.
            matches!(got, PageRead::Source | PageRead::Zeros)
        };
        if !ok {
            return Err(format!(
                "page {p} at {:#x} (discardable: {}, read by the parent before the fork: \
                 {seen}): {got:?}",
                round.view.page(p) as usize,
                discardable(p)
            ));
        }
    }
    Ok(())
}

/// After the workload: the final discard of every discardable page, then every page checked
/// exactly.
fn final_check(round: &Round) {
    let op = round.kind.final_discard();
    for p in (0..round.pages()).filter(|&p| discardable(p)) {
        let _access = round
            .watchdog
            .enter(FINAL, "final discard", round.view.page(p) as usize);
        if let Err(e) = round.discard(op, p) {
            round.tally.mismatch(format!(
                "{}: final discard of page {p} with {op:?} failed: {e}",
                round.kind.name()
            ));
        }
    }
    for p in 0..round.pages() {
        let got = {
            let _access = round
                .watchdog
                .enter(FINAL, "final read", round.view.page(p) as usize);
            round.read(p)
        };
        let want = if discardable(p) && !zero_page(p) {
            PageRead::Zeros
        } else {
            PageRead::Source
        };
        if got != want && !round.watchdog.hung() {
            round.tally.mismatch(format!(
                "{}: after the final discard: page {p} at {:#x}: {got:?}, not {want:?}",
                round.kind.name(),
                round.view.page(p) as usize
            ));
        }
    }
}

/// The served mapping (and the file behind it) of a configuration: for `Continue`, the page
/// cache holds the snapshot (its zero pages left as holes); `None` to skip.
fn memory_for(kind: Kind, expected: &[u8]) -> Option<(Region, Option<Region>)> {
    let pages = expected.len() / kind.memory.page_size();
    if !kind.file {
        return Some((Region::anonymous(kind.memory, pages)?, None));
    }
    let file = Region::new(kind.memory, pages)?;
    if kind.minor {
        let ps = file.page_size();
        for p in (0..pages).filter(|&p| !zero_page(p)) {
            file.write_page(p, &expected[p * ps..(p + 1) * ps]);
        }
    }
    // A fresh view: the writes above left the file's own mapping populated.
    let view = if kind.private {
        file.private_view()?
    } else {
        file.second_view()
    };
    Some((view, Some(file)))
}

/// Waits until every thread has finished (true), or a hang is reported (when `stop_on_hang`),
/// or `bound` has passed (false).
fn wait_all<T>(
    threads: &[Waitable<T>],
    watchdog: &Watchdog,
    stop_on_hang: bool,
    bound: Duration,
) -> bool {
    let until = Instant::now() + bound;
    loop {
        if threads.iter().all(Waitable::is_finished) {
            return true;
        }
        if (stop_on_hang && watchdog.hung()) || Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a configuration's rounds add up to.
#[derive(Default)]
struct Totals {
    rounds: u64,
    serving: Duration,
    faults: u64,
    p99: Duration,
    hangs: Vec<String>,
    /// A hang the run could not recover from (the server did not stop): the rest is skipped.
    unrecoverable: bool,
}

/// One round of a configuration; false to skip the configuration. Its settings come from
/// the round number `r` (in mixed radix, so that 36 rounds make every combination; the first
/// two have a slow source without the background fill, then a fast one with it): the source
/// slow or fast (`r % 2`), the background fill (`r % 4` in Gray code with the source), 1 to 3
/// workers (`r / 4 % 3`), the fault-around (`r / 12`).
fn round(
    kind: Kind,
    expected: &Arc<Vec<u8>>,
    r: usize,
    secs: f64,
    deadline: Duration,
    tally: &Arc<Tally>,
    totals: &mut Totals,
) -> bool {
    let ps = kind.memory.page_size();
    let pages = expected.len() / ps;
    let expected = Arc::clone(expected);
    let Some((view, file)) = memory_for(kind, &expected) else {
        return false;
    };
    let Some(uffd) = serve_uffd(kind.memory, kind.mode()) else {
        return false;
    };
    // A second descriptor of the same userfaultfd: unregistering through it wakes threads
    // blocked in a fault the server does not answer.
    let spare =
        Uffd::try_from(uffd.as_fd().try_clone_to_owned().expect("dup")).expect("a userfaultfd");
    let source: Arc<dyn PageSource> = if kind.minor {
        Arc::new(Zeros::new(0))
    } else {
        let mut source = TestSource::new(expected.to_vec(), ps);
        if r % 2 == 0 {
            // A remote source: every 16th read takes 2 ms (the server reads messages on one
            // thread and fetches on the workers).
            source.delay = Some((16, Duration::from_millis(2)));
        } else {
            // Contents in memory (the workers read messages and fetch themselves).
            source.never_blocks = true;
        }
        Arc::new(source)
    };
    let fault_around = if kind.memory == MemoryType::Hugetlb {
        [2, 4][r / 12 % 2]
    } else {
        [8, 16, 64][r / 12 % 3]
    } * ps;
    let base = view.addr() as usize;
    let watchdog = Watchdog::new(
        deadline,
        &[
            "reader-0",
            "reader-1",
            "reader-2",
            "discarder",
            "shaper",
            "final",
        ]
        .map(String::from),
        move |addr| {
            if addr >= base {
                format!("page {} of the region at {base:#x}", (addr - base) / ps)
            } else {
                "outside the region".into()
            }
        },
    );
    let started = Instant::now();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(1 + r / 4 % 3)
            .background_fill((r ^ r >> 1) & 1 == 1)
            .fault_around(fault_around)
            .region(
                Served::new(view.addr(), view.len())
                    .page_size(ps)
                    .backend(kind.backend()),
            )
            .start(uffd, source)
    }
    .unwrap_or_else(|e| panic!("{}: starting the server: {e}", kind.name()));
    let round = Arc::new(Round {
        kind,
        view,
        file,
        expected,
        seen: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        shaped: Mutex::new(None),
        done: AtomicBool::new(false),
        watchdog: Arc::clone(&watchdog),
        tally: Arc::clone(tally),
        deadline,
        // mlock needs CAP_IPC_LOCK beyond a small limit; it does not split hugetlb VMAs.
        mlock: privileged() && kind.memory != MemoryType::Hugetlb,
    });
    let watching = watchdog.watch();
    let seed = (r as u64 + 1) * 0x9e37_79b9;
    let mut threads: Vec<Waitable<()>> = (0..READERS)
        .map(|t| {
            let round = Arc::clone(&round);
            spawn_named(&format!("reader-{t}"), move || {
                reader(&round, t, seed + t as u64)
            })
        })
        .collect();
    threads.push({
        let round = Arc::clone(&round);
        spawn_named("discarder", move || discarder(&round, seed + 7))
    });
    threads.push({
        let round = Arc::clone(&round);
        spawn_named("shaper", move || shaper(&round, seed + 11))
    });
    let until = started + Duration::from_secs_f64(secs);
    while Instant::now() < until && !watchdog.hung() {
        std::thread::sleep(Duration::from_millis(5));
    }
    round.done.store(true, Ordering::Relaxed);
    let mut finished = wait_all(&threads, &watchdog, true, 3 * deadline);
    if finished && !watchdog.hung() {
        let final_round = Arc::clone(&round);
        threads.push(spawn_named("final", move || final_check(&final_round)));
        finished = wait_all(
            &threads,
            &watchdog,
            true,
            3 * deadline + Duration::from_secs(60),
        );
    }
    if !finished {
        if !watchdog.hung() {
            watchdog.report(format!(
                "{}: the round's threads did not finish in time (no single access was late)",
                kind.name()
            ));
        }
        // A hang: release the blocked threads (they retry without userfaultfd).
        if let Err(e) = spare.unregister(round.view.addr(), round.view.len()) {
            totals
                .hangs
                .push(format!("{}: releasing the region: {e}", kind.name()));
        }
        if !wait_all(&threads, &watchdog, false, 3 * deadline) {
            totals.hangs.push(format!(
                "{}: threads still blocked after unregistering",
                kind.name()
            ));
            totals.unrecoverable = true;
        }
    }
    drop(watching);
    let serving = started.elapsed();
    for t in threads {
        if !t.is_finished() {
            continue; // still blocked (reported): left behind
        }
        let name = t.name();
        if let Err(panic) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| join_timeout(t)))
        {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            tally.mismatch(format!("{}: thread {name} panicked: {msg}", kind.name()));
        }
    }
    // Stopped while the background fill may still run; bounded, in case a worker never ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.stop());
    });
    let Ok(stopped) = rx.recv_timeout(3 * deadline) else {
        totals.hangs.extend(watchdog.hangs());
        totals.hangs.push(format!(
            "{}: Server::stop did not return within {:?}",
            kind.name(),
            3 * deadline
        ));
        totals.unrecoverable = true;
        // Leaked: unmapping would wait for an event nobody reads.
        std::mem::forget(round);
        return false;
    };
    if let Err(e) = &stopped.outcome {
        tally.mismatch(format!("{}: the server failed: {e}", kind.name()));
    }
    totals.hangs.extend(watchdog.hangs());
    totals.rounds += 1;
    totals.serving += serving;
    totals.faults += stopped.stats.faults;
    if let Some(p99) = stopped.stats.latency_quantile(0.99) {
        totals.p99 = totals.p99.max(p99);
    }
    drop(stopped); // closes the descriptor before the regions are unmapped
    drop(spare);
    if totals.unrecoverable {
        std::mem::forget(round);
        return false;
    }
    !watchdog.hung()
}

#[test]
fn serve_soak() {
    let secs = env_secs("SERVE_SOAK_SECS", 0.25);
    let deadline = Duration::from_secs_f64(env_secs("SERVE_SOAK_DEADLINE", 10.0));
    // Rounds of at most half a second: each starts from empty memory with other settings.
    let round_secs = secs.min(0.5);
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    // SERVE_SOAK_ONLY: run only the configurations whose name contains it ("hugetlb shared").
    let only = std::env::var("SERVE_SOAK_ONLY").unwrap_or_default();
    for kind in KINDS.into_iter().filter(|k| k.name().contains(&only)) {
        let tally = Arc::new(Tally::default());
        let pages = kind.pages(secs < 1.0);
        let expected = Arc::new(snapshot(pages, kind.memory.page_size()));
        let mut totals = Totals::default();
        let start = Instant::now();
        let mut r = 0;
        while (r == 0 || start.elapsed().as_secs_f64() < secs) && r < 100_000 {
            let go_on = round(
                kind,
                &expected,
                r,
                round_secs,
                deadline,
                &tally,
                &mut totals,
            );
            r += 1;
            if !go_on {
                break;
            }
        }
        if totals.rounds == 0 && totals.hangs.is_empty() {
            continue; // skipped (printed why)
        }
        let t = &*tally;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let line = format!(
            "serve_soak {:<26} {:>4} rounds {:>6.1} s {:>9} faults {:>8.0} faults/s p99 {:>8.1?} | {:>10} reads ({} torn) {:>7} discards ({} skipped) {:>5} splits {:>4} forks | {} hangs, {} mismatches",
            kind.name(),
            totals.rounds,
            totals.serving.as_secs_f64(),
            totals.faults,
            totals.faults as f64 / totals.serving.as_secs_f64().max(1e-9),
            totals.p99,
            load(&t.reads),
            load(&t.torn),
            load(&t.discards),
            load(&t.discards_skipped),
            load(&t.splits),
            load(&t.forks),
            totals.hangs.len(),
            load(&t.mismatches),
        );
        eprintln!("{line}");
        lines.push(line);
        if !totals.hangs.is_empty() || load(&t.mismatches) > 0 {
            failures.push(format!(
                "{}: hangs {:?}; mismatches {:?}",
                kind.name(),
                totals.hangs,
                t.notes.lock().unwrap()
            ));
        }
        if totals.unrecoverable {
            failures.push(
                "a hang the run could not recover from: the remaining configurations were not run"
                    .into(),
            );
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "serve_soak failed:\n{}\n{}",
        lines.join("\n"),
        failures.join("\n")
    );
}

/// The page comparison the soak relies on: each outcome, and the offset it names.
#[test]
fn compare_page_tells_source_zeros_torn_and_wrong() {
    let want: Vec<u8> = (1..=64).collect();
    assert_eq!(compare_page(&want, &want), PageRead::Source);
    assert_eq!(compare_page(&[0; 64], &want), PageRead::Zeros);
    let mut torn = want.clone();
    torn[40..].fill(0);
    assert_eq!(compare_page(&torn, &want), PageRead::Torn(40));
    let mut wrong = want.clone();
    wrong[7] ^= 1;
    assert_eq!(compare_page(&wrong, &want), PageRead::Wrong(7));
    // Zeros, then the source's bytes again: not a discard during the read.
    let mut mixed = want.clone();
    mixed[..8].fill(0);
    assert_eq!(compare_page(&mixed, &want), PageRead::Wrong(0));
}
