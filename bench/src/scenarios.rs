//! The scenarios, each run for the three implementations in rotating order per repetition, so
//! that machine noise hits all of them alike.

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::handlers::{Impl, Ours, Raw, Server, V09};
use crate::memory::{Mapping, HUGE, PAGE};
use crate::stats::{per_item, summarize, Summary};

/// How a fault is resolved.
#[derive(Clone, Copy, PartialEq)]
enum Resolve {
    /// COPY from a fixed, populated source page.
    Copy,
    Zeropage,
    /// Write the data into a staging buffer, then COPY it (the data "arrives" first).
    StagedCopy,
    /// Write the data into a staging buffer, then MOVE it (the staging page must be faulted
    /// in again for the next arrival).
    StagedMove,
}

/// A fault-serving scenario.
struct Faults {
    name: &'static str,
    /// Bytes resolved per fault.
    chunk: usize,
    faults: usize,
    huge: bool,
    threads: usize,
    /// Events per read (1: `read_event`).
    batch: usize,
    resolve: Resolve,
}

/// Serves `f.faults` faults with implementation `S`; returns the wall time from the first
/// touch to the last fault served, or `None` if `S` lacks the operation.
fn run<S: Server>(f: &Faults) -> Option<Duration> {
    if f.resolve == Resolve::StagedMove && !S::HAS_MOVE {
        return None;
    }
    let server = Arc::new(S::create(true));
    let region = Arc::new(Mapping::new(f.chunk * f.faults, f.huge));
    server.register(region.addr(), region.len);
    let source = Mapping::populated(f.chunk, f.huge);
    let staging = Mapping::new(f.chunk, f.huge);

    let handler = {
        let server = Arc::clone(&server);
        let (faults, chunk, batch, resolve) = (f.faults, f.chunk, f.batch, f.resolve);
        let (src, stage) = (source.ptr as usize, staging.ptr as usize);
        std::thread::spawn(move || {
            pin_to_cpu(0);
            let resolve_one = |addr: usize| {
                let dst = addr & !(chunk - 1);
                match resolve {
                    Resolve::Copy => server.copy(src as *const _, dst, chunk),
                    Resolve::Zeropage => server.zeropage(dst, chunk),
                    Resolve::StagedCopy | Resolve::StagedMove => {
                        // SAFETY: the staging mapping is ours, `chunk` bytes long.
                        unsafe { ptr::write_bytes(stage as *mut u8, dst as u8, chunk) };
                        if resolve == Resolve::StagedCopy {
                            server.copy(stage as *const _, dst, chunk);
                        } else {
                            server.move_pages(stage as *const _, dst, chunk);
                        }
                    }
                }
            };
            let mut served = 0;
            if batch == 1 {
                while served < faults {
                    resolve_one(server.next_fault());
                    served += 1;
                }
            } else {
                let mut buf = server.batch(batch);
                while served < faults {
                    served += server.faults(&mut buf, resolve_one);
                }
            }
        })
    };

    let start = Arc::new(Barrier::new(f.threads + 1));
    let per_thread = f.faults / f.threads;
    let touchers: Vec<_> = (0..f.threads)
        .map(|t| {
            let (region, start, chunk) = (Arc::clone(&region), Arc::clone(&start), f.chunk);
            std::thread::spawn(move || {
                pin_to_cpu(1);
                start.wait();
                for i in t * per_thread..(t + 1) * per_thread {
                    // SAFETY: inside the registered mapping; blocks until served.
                    unsafe { region.at(i * chunk).read_volatile() };
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for t in touchers {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    handler.join().unwrap();
    Some(elapsed)
}

fn run_impl(which: Impl, f: &Faults) -> Option<Duration> {
    match which {
        Impl::Raw => run::<Raw>(f),
        Impl::Ours => run::<Ours>(f),
        Impl::V09 => run::<V09>(f),
    }
}

/// Big COPYs into a registered, never-touched region (no faults: pre-population); returns
/// the time for `len` bytes.
fn prepopulate<S: Server>(len: usize, chunk: usize) -> Duration {
    let server = S::create(true);
    let region = Mapping::new(len, false);
    server.register(region.addr(), len);
    let source = Mapping::populated(chunk, false);
    let t0 = Instant::now();
    for off in (0..len).step_by(chunk) {
        server.copy(source.ptr.cast(), region.ptr as usize + off, chunk);
    }
    t0.elapsed()
}

fn memcpy_populated(len: usize, chunk: usize) -> Duration {
    let region = Mapping::populated(len, false);
    let source = Mapping::populated(chunk, false);
    let t0 = Instant::now();
    for off in (0..len).step_by(chunk) {
        // SAFETY: both mappings are ours and large enough.
        unsafe { ptr::copy_nonoverlapping(source.ptr, region.ptr.add(off), chunk) };
    }
    t0.elapsed()
}

/// One table row: a summary per implementation (None: not applicable).
struct Row {
    name: String,
    unit: &'static str,
    cells: [Option<Summary>; 3],
}

fn print_row(row: &Row) {
    let cell = |s: &Option<Summary>| match s {
        Some(s) => format!("{:.0} ({:.0}-{:.0})", s.median, s.min, s.max),
        None => "n/a".to_string(),
    };
    let ratio = |a: &Option<Summary>, b: &Option<Summary>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.3}", a.median / b.median),
        _ => "-".to_string(),
    };
    let [raw, ours, v09] = &row.cells;
    println!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        row.name,
        row.unit,
        cell(raw),
        cell(ours),
        cell(v09),
        ratio(ours, raw),
        ratio(ours, v09)
    );
}

/// Runs every scenario `reps` times and prints the Markdown table.
pub fn table(reps: usize) {
    let k = 1024;
    let scenarios = [
        Faults {
            name: "4 KiB missing faults, one event per read",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::Copy,
        },
        Faults {
            name: "4 KiB faults from 4 threads, one event per read",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 4,
            batch: 1,
            resolve: Resolve::Copy,
        },
        Faults {
            name: "4 KiB faults from 4 threads, batched reads (64)",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 4,
            batch: 64,
            resolve: Resolve::Copy,
        },
        Faults {
            name: "4 KiB faults served by ZEROPAGE",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::Zeropage,
        },
        Faults {
            name: "4 KiB faults from two threads",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 2,
            batch: 1,
            resolve: Resolve::Copy,
        },
        Faults {
            name: "2 MiB hugetlb faults",
            chunk: HUGE,
            faults: 64,
            huge: true,
            threads: 1,
            batch: 1,
            resolve: Resolve::Copy,
        },
        Faults {
            name: "4 KiB: staging buffer + COPY",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::StagedCopy,
        },
        Faults {
            name: "4 KiB: staging buffer + MOVE",
            chunk: PAGE,
            faults: 4 * k,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::StagedMove,
        },
        Faults {
            name: "2 MiB chunks: staging buffer + COPY",
            chunk: HUGE,
            faults: 64,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::StagedCopy,
        },
        Faults {
            name: "2 MiB chunks: staging buffer + MOVE",
            chunk: HUGE,
            faults: 64,
            huge: false,
            threads: 1,
            batch: 1,
            resolve: Resolve::StagedMove,
        },
    ];
    println!("| scenario | unit | raw | ours | 0.9 | ours/raw | ours/0.9 |");
    println!("|---|---|---|---|---|---|---|");
    for f in &scenarios {
        let mut samples: [Vec<f64>; 3] = Default::default();
        let mut applicable = [true; 3];
        for rep in 0..reps {
            for i in 0..3 {
                let which = (rep + i) % 3;
                match run_impl(Impl::ALL[which], f) {
                    Some(d) => samples[which].push(per_item(d, f.faults)),
                    None => applicable[which] = false,
                }
            }
        }
        let cells = std::array::from_fn(|i| applicable[i].then(|| summarize(&samples[i])));
        print_row(&Row {
            name: f.name.to_string(),
            unit: "ns/fault",
            cells,
        });
    }

    // Pre-population: GiB/s (higher is better), with memcpy into populated memory as the
    // reference in the row's name.
    let (len, chunk) = (256 << 20, 2 << 20);
    let gibs = |d: Duration| (len as f64 / (1u64 << 30) as f64) / d.as_secs_f64();
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut memcpy = Vec::new();
    for rep in 0..reps {
        for i in 0..3 {
            let which = (rep + i) % 3;
            let d = match Impl::ALL[which] {
                Impl::Raw => prepopulate::<Raw>(len, chunk),
                Impl::Ours => prepopulate::<Ours>(len, chunk),
                Impl::V09 => prepopulate::<V09>(len, chunk),
            };
            samples[which].push(gibs(d));
        }
        memcpy.push(gibs(memcpy_populated(len, chunk)));
    }
    let m = summarize(&memcpy);
    let cells = std::array::from_fn(|i| Some(summarize(&samples[i])));
    print_row(&Row {
        name: format!(
            "pre-populating 256 MiB with 2 MiB COPYs (memcpy into populated memory: {:.1} GiB/s)",
            m.median
        ),
        unit: "GiB/s x100",
        cells: cells.map(|c: Option<Summary>| {
            c.map(|s| Summary {
                median: s.median * 100.0,
                min: s.min * 100.0,
                max: s.max * 100.0,
            })
        }),
    });
}

/// Serves `n` faults raised by `MADV_POPULATE_READ` (valgrind cannot run a thread that
/// faults on a registered page: see ci/callgrind), resolving each with a COPY of 4 KiB or a
/// ZEROPAGE (`zero`). The handler is the main thread, so its instruction count is
/// callgrind's thread 1. The same handler in C: bench/c/handler.c.
pub fn serve_populate(which: Impl, zero: bool, n: usize, batch: usize, threads: usize) {
    match which {
        Impl::Raw => serve_populate_with::<Raw>(zero, n, batch, threads),
        Impl::Ours => serve_populate_with::<Ours>(zero, n, batch, threads),
        Impl::V09 => serve_populate_with::<V09>(zero, n, batch, threads),
    }
}

/// Serves `n` faults, each resolved by one COPY (or ZEROPAGE if `zero`); `batch` 1 reads one
/// event per `read` (`read_event`), more reads through the implementation's batch buffer of
/// that capacity (`read_events`). The faults come from `threads` threads, each populating its
/// share of the region with one MADV_POPULATE_READ: that call faults page after page inside
/// the kernel, never returning to user space (so valgrind's lock does not serialise the
/// threads), and with several threads several faults may wait at each read. With one thread,
/// each batch read returns the one pending event, so what is counted is the batch path's own
/// cost.
fn serve_populate_with<S: Server>(zero: bool, n: usize, batch: usize, threads: usize) {
    assert!(n.is_multiple_of(threads), "N is a multiple of T");
    let server = S::create(false);
    let region = Arc::new(Mapping::new(n * PAGE, false));
    server.register(region.addr(), region.len);
    let source = Mapping::populated(PAGE, false);
    let touchers = populate_in_threads(&region, threads);
    // The mode is a constant of each loop (as in bench/c/handler.c), so that no loop tests
    // it per fault: whether the compiler moves such a test out of a loop changes from build
    // to build, and would move the counts by a few instructions.
    let reads = if zero {
        serve_loop::<S, true>(&server, source.ptr.cast(), n, batch)
    } else {
        serve_loop::<S, false>(&server, source.ptr.cast(), n, batch)
    };
    for toucher in touchers {
        toucher.join().unwrap();
    }
    // How many events each read returned on average (ci/callgrind prints it).
    println!("reads {reads} events {n}");
}

/// The handler's loop: serves `n` faults, by ZEROPAGE if `ZERO`, else by COPY from `source`;
/// returns how many reads it took.
fn serve_loop<S: Server, const ZERO: bool>(
    server: &S,
    source: *const c_void,
    n: usize,
    batch: usize,
) -> usize {
    if batch == 1 {
        serve_single::<S, ZERO>(server, source, n)
    } else {
        serve_batch::<S, ZERO>(server, source, n, batch)
    }
}

/// Resolves the fault at `addr`: by ZEROPAGE if `ZERO`, else by a COPY from `source`.
#[inline(always)]
fn resolve<S: Server, const ZERO: bool>(server: &S, source: *const c_void, addr: usize) {
    if ZERO {
        server.zeropage(addr, PAGE)
    } else {
        server.copy(source, addr, PAGE)
    }
}

// Each loop is a function of its own for each implementation and mode, never inlined: what
// the compiler inlines into it, and how it allocates registers, is then decided for this loop
// alone, not for a caller that holds all of them (as bench/c/handler.c).

/// Serves `n` faults reading one event per `read(2)`.
#[inline(never)]
fn serve_single<S: Server, const ZERO: bool>(server: &S, source: *const c_void, n: usize) -> usize {
    for _ in 0..n {
        resolve::<S, ZERO>(server, source, server.next_fault());
    }
    n
}

/// Serves `n` faults reading up to `batch` events per `read(2)`; returns how many reads it
/// took.
#[inline(never)]
fn serve_batch<S: Server, const ZERO: bool>(
    server: &S,
    source: *const c_void,
    n: usize,
    batch: usize,
) -> usize {
    let mut buf = server.batch(batch);
    let (mut served, mut reads) = (0, 0);
    while served < n {
        served += server.faults(&mut buf, |addr| resolve::<S, ZERO>(server, source, addr));
        reads += 1;
    }
    reads
}

/// Serves `n` faults raised by `MADV_POPULATE_READ` from `threads` threads with
/// `userfaultfd::serve` (one worker, one page per fault: `fault_around(0)`), from a source in
/// memory (`zero`: a source of zeros, placed by ZEROPAGE). The worker is the first thread
/// the process starts, so its instruction count is callgrind's thread 2 (ci/callgrind).
pub fn serve_with_server(zero: bool, n: usize, threads: usize) {
    use userfaultfd::serve::{Memory, PageSource, Region, Server, Zeros, EVENTS};
    assert!(n.is_multiple_of(threads), "N is a multiple of T");
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .user_mode_only(false)
        .require_features(EVENTS)
        .create()
        .unwrap();
    let region = Arc::new(Mapping::new(n * PAGE, false));
    let source: Arc<dyn PageSource> = if zero {
        Arc::new(Zeros::new((n * PAGE) as u64))
    } else {
        Arc::new(Memory::new(vec![0x5a; n * PAGE]))
    };
    // SAFETY: the region is a benchmark mapping holding no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(1)
            .fault_around(0)
            .region(Region::new(region.addr(), region.len))
            .start(uffd, source)
    }
    .unwrap();
    let touchers = populate_in_threads(&region, threads);
    for toucher in touchers {
        toucher.join().unwrap();
    }
    let finished = server.stop();
    assert_eq!(finished.stats.faults, n as u64, "{:?}", finished.stats);
    println!("reads {} events {n}", finished.stats.faults);
}

/// Starts `threads` threads, each populating its share of `region` with one
/// `MADV_POPULATE_READ`: that call faults page after page inside the kernel, never returning
/// to user space (so valgrind's lock does not serialise the threads).
fn populate_in_threads(region: &Arc<Mapping>, threads: usize) -> Vec<std::thread::JoinHandle<()>> {
    let share = region.len / threads;
    (0..threads)
        .map(|t| {
            let region = Arc::clone(region);
            std::thread::spawn(move || {
                // SAFETY: populates a share of our own mapping; each page faults to the
                // handler.
                let r = unsafe {
                    libc::madvise(
                        region.addr().cast::<u8>().add(t * share).cast(),
                        share,
                        libc::MADV_POPULATE_READ,
                    )
                };
                assert_eq!(
                    r,
                    0,
                    "MADV_POPULATE_READ: {}",
                    std::io::Error::last_os_error()
                );
            })
        })
        .collect()
}

/// Pins the calling thread to `cpu` (when the machine has it): the handler on one CPU, the
/// faulting threads on the other, so that every run sees the same wake-up path.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % num_cpus(), &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
