//! Lazy restore of a snapshot file: the page server against the alternatives, side by side in
//! one run.
//!
//! Run: `cargo bench --bench serve`. `SERVE_BENCH_MIB` sets the snapshot size (default 1024),
//! `SERVE_BENCH_REPS` the repetitions per cell (default 3; medians are shown),
//! `SERVE_BENCH_BUSY_POLL_US` the server's busy-poll time (default 0, the server's default),
//! `SERVE_BENCH_WORKERS` its worker threads (default 1, the server's default).
//!
//! The snapshot is a dense file on tmpfs (`/dev/shm`). Each cell maps a fresh region and
//! times touching (reading one byte of) every 4 KiB page, sequentially or in a random order,
//! by 1 or 2 threads (each its own half). Columns:
//! - `kernel`: the kernel's own lazy file mapping (`MAP_PRIVATE` of the file, no userfaultfd):
//!   the limit;
//! - `eager`: read the whole file into anonymous memory (`pread`), then touch;
//! - `1-page`: a handler on the crate's primitives placing one page per fault (`COPY` from a
//!   mapping of the file), what userfaultfd 0.9's example does;
//! - `anon`: the server with its defaults over anonymous memory (`MappedFile` source, `COPY`);
//! - `minor`: the server with its defaults, `Backend::Continue` on a `MAP_PRIVATE` mapping of
//!   the tmpfs file (the snapshot is already in the page cache: `CONTINUE`, no copy);
//! - `hugetlb`: the server on 2 MiB pages (sized to the free huge pages, see its row).
//!
//! A second table gives the time from starting the server to the first page served.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_or, median, Map};
use userfaultfd::serve::{Backend, MappedFile, Region, Server};
use userfaultfd::{Event, FeatureFlags, UffdBuilder};

const PAGE: usize = 4096;

/// A touch order: `threads` lists of byte offsets (one byte per 4 KiB page).
fn orders(len: usize, threads: usize, random: bool) -> Vec<Vec<usize>> {
    let pages = len / PAGE;
    let per = pages / threads;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    (0..threads)
        .map(|t| {
            let mut o: Vec<usize> = (t * per..(t + 1) * per).map(|p| p * PAGE).collect();
            if random {
                for i in (1..o.len()).rev() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    o.swap(i, (seed % (i as u64 + 1)) as usize);
                }
            }
            o
        })
        .collect()
}

/// Touches `map` in `orders` (one thread per order); returns the elapsed time and the time
/// to the first touch's completion.
fn touch(map: &Map, orders: &[Vec<usize>]) -> (Duration, Duration) {
    let start = Instant::now();
    let first = std::thread::scope(|s| {
        let handles: Vec<_> = orders
            .iter()
            .map(|order| {
                let base = map.ptr as usize;
                s.spawn(move || {
                    let mut sum = 0u8;
                    let mut first = None;
                    for &off in order {
                        // SAFETY: a byte inside the mapping.
                        sum = sum
                            .wrapping_add(unsafe { ((base + off) as *const u8).read_volatile() });
                        first.get_or_insert_with(|| start.elapsed());
                    }
                    std::hint::black_box(sum);
                    first.unwrap_or_default()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .min()
            .unwrap()
    });
    (start.elapsed(), first)
}

fn uffd_with(features: FeatureFlags) -> userfaultfd::Uffd {
    UffdBuilder::new()
        .close_on_exec(true)
        .require_features(features)
        .create()
        .expect("creating a userfaultfd")
}

/// Which column.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Kernel,
    Eager,
    OnePage,
    Anon,
    Minor,
    Hugetlb,
}

struct Setup {
    path: std::path::PathBuf,
    file: File,
    mapped: Arc<MappedFile>,
    len: usize,
}

/// One cell: the total time, and for the server the time from start to the first page.
fn run(
    setup: &Setup,
    method: Method,
    threads: usize,
    random: bool,
    len: usize,
) -> (Duration, Option<Duration>) {
    let orders = orders(len, threads, random);
    let fd = setup.file.as_raw_fd();
    match method {
        Method::Kernel => {
            let map = Map::new(len, libc::MAP_PRIVATE, fd);
            (touch(&map, &orders).0, None)
        }
        Method::Eager => {
            let start = Instant::now();
            let map = Map::anon(len);
            // SAFETY: the mapping is ours and `len` bytes long.
            let buf = unsafe { std::slice::from_raw_parts_mut(map.ptr, len) };
            let mut done = 0;
            while done < len {
                let n =
                    std::os::unix::fs::FileExt::read_at(&setup.file, &mut buf[done..], done as u64)
                        .unwrap();
                assert!(n > 0);
                done += n;
            }
            let (t, _) = touch(&map, &orders);
            (start.elapsed().max(t), None)
        }
        Method::OnePage => {
            let map = Map::anon(len);
            let uffd = uffd_with(FeatureFlags::empty());
            uffd.register(map.ptr.cast(), len).unwrap();
            let pages = len / PAGE;
            let src = setup.mapped.clone();
            let base = src_base(&setup.mapped);
            let start = Instant::now();
            let (t, _) = std::thread::scope(|s| {
                let uffd = &uffd;
                let map_base = map.ptr as usize;
                s.spawn(move || {
                    let _keep = src;
                    for _ in 0..pages {
                        let Some(Event::Pagefault { addr, .. }) = uffd.read_event().unwrap() else {
                            panic!("unexpected event");
                        };
                        let off = addr as usize - map_base;
                        // SAFETY: a missing page of the benchmark's region, from the file's
                        // mapping.
                        unsafe { uffd.copy((base + off) as *const libc::c_void, addr, PAGE, true) }
                            .unwrap();
                    }
                });
                touch(&map, &orders)
            });
            let _ = start;
            (t, None)
        }
        Method::Anon | Method::Minor | Method::Hugetlb => {
            let (map, region, features) = match method {
                Method::Anon => {
                    let map = Map::anon(len);
                    let r = Region::new(map.ptr.cast(), len);
                    (map, r, FeatureFlags::empty())
                }
                Method::Minor => {
                    let map = Map::new(len, libc::MAP_PRIVATE, fd);
                    let r = Region::new(map.ptr.cast(), len)
                        .backend(Backend::Continue { private: true });
                    (
                        map,
                        r,
                        FeatureFlags::MINOR_SHMEM | FeatureFlags::MISSING_SHMEM,
                    )
                }
                _ => {
                    let map = Map::new(
                        len,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                        -1,
                    );
                    let r = Region::new(map.ptr.cast(), len).page_size(2 << 20);
                    (map, r, FeatureFlags::MISSING_HUGETLBFS)
                }
            };
            let uffd = uffd_with(userfaultfd::serve::EVENTS | features);
            let start = Instant::now();
            // SAFETY: the benchmark's region holds no Rust object.
            let server = unsafe {
                Server::builder()
                    .region(region)
                    .start(uffd, setup.mapped.clone())
            }
            .expect("starting the server");
            let started = start.elapsed();
            let (t, first) = touch(&map, &orders);
            let total = start.elapsed().max(t);
            drop(server.stop());
            (total, Some(started + first))
        }
    }
}

fn src_base(mapped: &MappedFile) -> usize {
    use userfaultfd::serve::{Chunk, PageSource};
    match mapped.fetch(0, PAGE, &mut []).unwrap() {
        Chunk::Data(d) => d.as_ptr() as usize,
        Chunk::Zeros(_) => panic!("the benchmark snapshot is dense"),
    }
}

fn free_huge_pages() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mib = env_or("SERVE_BENCH_MIB", 1024);
    let reps = env_or("SERVE_BENCH_REPS", 3).max(1);
    let len = mib << 20;
    let path =
        std::path::PathBuf::from(format!("/dev/shm/uffd-serve-bench-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for c in 0..mib {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (c * 131 + i / PAGE * 7 + i) as u8 | 1;
        }
        file.write_all(&chunk).unwrap();
    }
    // SAFETY: the benchmark's own file, neither truncated nor written while mapped.
    let mapped = Arc::new(unsafe { MappedFile::new(&file) }.unwrap());
    let setup = Setup {
        path,
        file,
        mapped,
        len,
    };
    // hugetlb: half the free huge pages at most (others may need them), in whole 2 MiB.
    let huge_len = (len.min(free_huge_pages() / 2 * (2 << 20))) / (4 << 20) * (4 << 20);
    let methods = [
        Method::Kernel,
        Method::Eager,
        Method::OnePage,
        Method::Anon,
        Method::Minor,
        Method::Hugetlb,
    ];
    println!(
        "snapshot {mib} MiB on tmpfs; median of {reps}; hugetlb column: {} MiB (free huge pages permitting)",
        huge_len >> 20
    );
    println!();
    println!("| scenario | kernel | eager | 1-page | anon | minor | hugetlb | anon vs 1-page | anon vs eager | minor vs kernel |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut firsts: Vec<(Method, Vec<Duration>)> = Vec::new();
    for random in [false, true] {
        for threads in [1, 2] {
            let mut cells = Vec::new();
            for &m in &methods {
                let cell_len = if m == Method::Hugetlb {
                    huge_len
                } else {
                    setup.len
                };
                if cell_len == 0 {
                    cells.push(None);
                    continue;
                }
                let mut times = Vec::new();
                for _ in 0..reps {
                    let (t, first) = run(&setup, m, threads, random, cell_len);
                    times.push(t);
                    if let Some(f) = first {
                        match firsts.iter_mut().find(|(mm, _)| *mm == m) {
                            Some((_, v)) => v.push(f),
                            None => firsts.push((m, vec![f])),
                        }
                    }
                }
                cells.push(Some(median(times)));
            }
            let show = |c: &Option<Duration>| {
                c.map_or("-".into(), |d| format!("{:.3} s", d.as_secs_f64()))
            };
            let ratio = |a: usize, b: usize| match (cells[a], cells[b]) {
                (Some(x), Some(y)) => format!("{:.1}x", y.as_secs_f64() / x.as_secs_f64()),
                _ => "-".into(),
            };
            println!(
                "| {} {} thread{} | {} | {} | {} | {} | {} | {} | {} faster | {} faster | {} |",
                if random { "random" } else { "sequential" },
                threads,
                if threads > 1 { "s" } else { "" },
                show(&cells[0]),
                show(&cells[1]),
                show(&cells[2]),
                show(&cells[3]),
                show(&cells[4]),
                show(&cells[5]),
                ratio(3, 2),
                ratio(3, 1),
                match (cells[4], cells[0]) {
                    (Some(m), Some(k)) => format!(
                        "{:.1}x the kernel's time",
                        m.as_secs_f64() / k.as_secs_f64()
                    ),
                    _ => "-".into(),
                },
            );
        }
    }
    println!();
    println!("Time from starting the server to the first page served (median over all cells):");
    println!();
    println!("| backend | time to first page |");
    println!("|---|---|");
    for (m, v) in firsts {
        println!("| {m:?} | {:.0} µs |", median(v).as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&setup.path);
}
