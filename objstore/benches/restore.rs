//! Restoring a snapshot over loopback nginx, side by side in one run: `serve` from the local
//! file, this crate cold (nothing cached), warm (from its disk cache), and a handler that
//! sends one GET per 4 KiB fault; a random restore over https; then a recorded working set.
//! Numbers: BENCHMARKS.md.
//!
//!   cargo bench -p userfaultfd-objstore --bench restore
//!
//! OBJSTORE_BENCH_MIB (default 1024): snapshot size; OBJSTORE_BENCH_REPS (3): runs per
//! scenario (the median is printed); OBJSTORE_BENCH_PER_FAULT_MIB (32): how much of the
//! snapshot the one-GET-per-fault handler restores (its time is per MiB, scaled up).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::nginx::Nginx;
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::{write_snapshot, TempDir};
use userfaultfd::serve::{MappedFile, PageSource};
use userfaultfd_objstore::{open, Options};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Makes a source, and a function that reads its request count.
type Make<'a> = &'a dyn Fn() -> (Arc<dyn PageSource>, Box<dyn Fn() -> u64>);

struct Run {
    time: Duration,
    /// The process's CPU time (user and system, every thread) over the same span: the
    /// page server, the source's threads and the touching thread; not nginx's.
    cpu: Duration,
    requests: u64,
}

/// The CPU time this process has used so far, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage, which all-zero bytes initialise.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    assert_eq!(ret, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// How the page server runs for one restore.
#[derive(Clone, Copy)]
enum Serve {
    /// Faults only, with the default fault-around (`Some`: this block; 0 one page).
    Faults(Option<usize>),
    /// Faults, and the server's background fill placing the rest (what
    /// `uffd-handler --background-fill` runs, with the source's own fill).
    Filling,
    /// Faults, and each chunk placed as it arrives (`ServerBuilder::place_arrived`,
    /// `uffd-handler --place-arrived`).
    Arrived,
}

/// One restore: open (timed from here), serve, touch `order` from one thread.
fn restore(make: Make<'_>, len: usize, order: &[usize], serve: Serve) -> Run {
    let start = Instant::now();
    let cpu = cpu_time();
    let (source, requests) = make();
    let r = Restore::start_configured(Memory::Anonymous, source, len, 1, |b| match serve {
        Serve::Faults(Some(bytes)) => {
            b.fault_around(bytes);
        }
        Serve::Faults(None) => {}
        Serve::Filling => {
            b.background_fill(true);
        }
        Serve::Arrived => {
            b.place_arrived(true);
        }
    })
    .expect("anonymous memory");
    r.touch(order, 1, Duration::from_secs(3600)).unwrap();
    let time = start.elapsed();
    Run {
        time,
        cpu: cpu_time() - cpu,
        requests: requests(),
    }
}

/// Reads `path` whole, so that its pages are in the page cache.
fn warm_page_cache(path: &std::path::Path) {
    use std::io::Read;
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let mib = env_or("OBJSTORE_BENCH_MIB", 1024);
    let reps = env_or("OBJSTORE_BENCH_REPS", 3);
    let per_fault_mib = env_or("OBJSTORE_BENCH_PER_FAULT_MIB", 32).min(mib);
    let len = mib << 20;
    let pages = len / PAGE;
    // nginx as deployed: a worker process per CPU under a master (one process, as in the
    // tests, sends from one CPU: it halved the store's throughput here).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(nginx) = Nginx::start_workers(cpus) else {
        eprintln!("nginx is missing: bash ci/objstore installs it");
        std::process::exit(1);
    };
    let path = nginx.www().join("mem");
    write_snapshot(&path, 1, len as u64);
    let url = nginx.url("mem");
    let cache = TempDir::new("bench-cache");
    println!(
        "{mib} MiB snapshot, nginx ({cpus} worker processes) on 127.0.0.1, page server with 1 \
         worker, one touching thread; median of {reps}"
    );
    println!();
    println!("| touch | restore | time | vs local | CPU time | GETs | GETs per MiB touched |");
    println!("|---|---|---|---|---|---|---|");

    let local = || -> (Arc<dyn PageSource>, Box<dyn Fn() -> u64>) {
        let f = File::open(&path).unwrap();
        // SAFETY: the benchmark's own snapshot file, which nothing truncates or rewrites
        // while it is served.
        let mapped = unsafe { MappedFile::new(&f) }.unwrap();
        (Arc::new(mapped), Box::new(|| 0))
    };
    let object = |opts: Options| {
        let url = url.clone();
        move || -> (Arc<dyn PageSource>, Box<dyn Fn() -> u64>) {
            let s = open(&url, &opts).unwrap();
            let s2 = s.clone();
            (s, Box::new(move || s2.stats().requests))
        }
    };
    let cold = Options::default();
    let mut cached = Options::default();
    cached.cache_dir = Some(cache.path().to_path_buf());
    let mut cached_pread = cached.clone();
    cached_pread.cache_mapping = false;
    let mut filled = Options::default();
    filled.background = true;
    let mut per_fault = Options::default();
    per_fault.chunk_size = PAGE;
    per_fault.parallelism = 1;

    for (name, order) in [
        ("sequential", (0..pages).collect::<Vec<_>>()),
        ("random", shuffled(pages, 1)),
    ] {
        let row = |what: &str, runs: Vec<Run>, base: Option<Duration>, touched_mib: f64| {
            let requests = runs.last().map_or(0, |r| r.requests);
            let cpu = median(runs.iter().map(|r| r.cpu).collect());
            let t = median(runs.into_iter().map(|r| r.time).collect());
            let vs = base.map_or("1.00x".into(), |b| {
                format!("{:.2}x", t.as_secs_f64() / b.as_secs_f64())
            });
            println!(
                "| {name} | {what} | {} | {vs} | {} | {requests} | {:.2} |",
                ms(t),
                ms(cpu),
                requests as f64 / touched_mib
            );
            t
        };
        let all = mib as f64;
        // The disk cache filled by one restore first. Then the runs of each repetition one
        // after the other (local, cold, cold with the fill, warm both ways), so that a change in the
        // machine's load shows in all of them, not in one row.
        let _ = std::fs::remove_dir_all(cache.path());
        restore(&object(cached.clone()), len, &order, Serve::Faults(None));
        let (mut local_runs, mut cold_runs, mut fill_runs, mut warm_runs, mut pread_runs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cold_arrived_runs, mut warm_arrived_runs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            // The file in the page cache first (not timed), as a local restore's file and
            // nginx's are expected to be: this VM's host reclaims idle page cache between
            // runs, and the local restore then measured the disk (532 to 1887 ms).
            warm_page_cache(&path);
            local_runs.push(restore(&local, len, &order, Serve::Faults(None)));
            cold_runs.push(restore(
                &object(cold.clone()),
                len,
                &order,
                Serve::Faults(None),
            ));
            cold_arrived_runs.push(restore(&object(cold.clone()), len, &order, Serve::Arrived));
            fill_runs.push(restore(
                &object(filled.clone()),
                len,
                &order,
                Serve::Filling,
            ));
            warm_runs.push(restore(
                &object(cached.clone()),
                len,
                &order,
                Serve::Faults(None),
            ));
            pread_runs.push(restore(
                &object(cached_pread.clone()),
                len,
                &order,
                Serve::Faults(None),
            ));
            warm_arrived_runs.push(restore(
                &object(cached.clone()),
                len,
                &order,
                Serve::Arrived,
            ));
        }
        let base = row(
            "serve from the local file (MappedFile)",
            local_runs,
            None,
            all,
        );
        if name == "sequential" {
            // What the store delivers at all: the whole object in one GET, read and discarded.
            let runs = (0..reps)
                .map(|_| {
                    let start = Instant::now();
                    let cpu = cpu_time();
                    let resp = ureq::get(&url).call().unwrap();
                    std::io::copy(&mut resp.into_reader(), &mut std::io::sink()).unwrap();
                    Run {
                        time: start.elapsed(),
                        cpu: cpu_time() - cpu,
                        requests: 1,
                    }
                })
                .collect();
            row(
                "(the store's ceiling: one GET of the whole object, discarded)",
                runs,
                Some(base),
                all,
            );
        }
        row(
            "objstore cold (4 MiB chunks, 4 in flight)",
            cold_runs,
            Some(base),
            all,
        );
        row(
            "objstore cold, chunks placed as they arrive (`place_arrived`)",
            cold_arrived_runs,
            Some(base),
            all,
        );
        row(
            "objstore cold, background fill (server and source, as `uffd-handler --background-fill`)",
            fill_runs,
            Some(base),
            all,
        );
        row(
            "objstore warm (disk cache, copied from its mapping)",
            warm_runs,
            Some(base),
            all,
        );
        row(
            "objstore warm, chunks placed as they are found intact (`place_arrived`)",
            warm_arrived_runs,
            Some(base),
            all,
        );
        row(
            "objstore warm, `cache_mapping` off (a `pread` per fault)",
            pread_runs,
            Some(base),
            all,
        );
        // One GET per fault: 4 KiB chunks, one in flight, one page per fault; a prefix of
        // the snapshot, its time scaled to the whole.
        let part: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&p| p < per_fault_mib * 256)
            .collect();
        let runs: Vec<Run> = (0..reps)
            .map(|_| {
                let r = restore(
                    &object(per_fault.clone()),
                    len,
                    &part,
                    Serve::Faults(Some(0)),
                );
                let scale = mib as f64 / per_fault_mib as f64;
                Run {
                    time: r.time.mul_f64(scale),
                    cpu: r.cpu.mul_f64(scale),
                    requests: r.requests,
                }
            })
            .collect();
        row(
            &format!("one GET per 4 KiB fault ({per_fault_mib} MiB, time scaled)"),
            runs,
            Some(base),
            per_fault_mib as f64,
        );
    }

    // Over https: the same snapshot (a hard link) behind nginx with TLS, trusted through a
    // throwaway certificate authority; random order. These requests go through ureq (the
    // crate's own client reads plain http only), so the rows show what TLS and ureq's
    // receive path cost against the local restore.
    match support::tls::Pki::new() {
        None => println!("\n(no https rows: the openssl command is missing)"),
        Some(pki) => {
            let tls =
                Nginx::start_tls_workers(&pki.cert(), &pki.key(), cpus).expect("nginx with TLS");
            std::fs::hard_link(&path, tls.www().join("mem")).unwrap();
            let tls_url = tls.url("mem");
            let mut over_tls = Options::default();
            over_tls.ca_certificates = Some(pki.ca());
            let tls_object = || {
                let url = tls_url.clone();
                let opts = over_tls.clone();
                move || -> (Arc<dyn PageSource>, Box<dyn Fn() -> u64>) {
                    let s = open(&url, &opts).unwrap();
                    let s2 = s.clone();
                    (s, Box::new(move || s2.stats().requests))
                }
            };
            let order = shuffled(pages, 1);
            let (mut local_runs, mut cold_runs, mut arrived_runs) =
                (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                warm_page_cache(&path);
                local_runs.push(restore(&local, len, &order, Serve::Faults(None)));
                cold_runs.push(restore(&tls_object(), len, &order, Serve::Faults(None)));
                arrived_runs.push(restore(&tls_object(), len, &order, Serve::Arrived));
            }
            println!();
            println!("| touch | restore over https | time | vs local | CPU time | GETs |");
            println!("|---|---|---|---|---|---|");
            let base = median(local_runs.iter().map(|r| r.time).collect());
            for (what, runs) in [
                ("serve from the local file (MappedFile)", local_runs),
                ("objstore cold over https (ureq, rustls)", cold_runs),
                (
                    "objstore cold over https, chunks placed as they arrive",
                    arrived_runs,
                ),
            ] {
                let requests = runs.last().map_or(0, |r| r.requests);
                let cpu = median(runs.iter().map(|r| r.cpu).collect());
                let t = median(runs.into_iter().map(|r| r.time).collect());
                println!(
                    "| random | {what} | {} | {:.2}x | {} | {requests} |",
                    ms(t),
                    t.as_secs_f64() / base.as_secs_f64(),
                    ms(cpu)
                );
            }
        }
    }

    // A recorded working set: 10% of the pages, in runs of 1 MiB (a guest's working set is
    // clustered: kernel text, hot heaps, page cache of a few files) at random places, the
    // runs in a random order.
    println!();
    println!(
        "| working set ({} MiB of {mib} in 1 MiB runs, random order) | time to the last \
         working-set page | GETs |",
        mib / 10
    );
    println!("|---|---|---|");
    let runs_of = 256;
    let ws_pages: Vec<usize> = shuffled(pages / runs_of, 2)
        .into_iter()
        .take(pages / runs_of / 10)
        .flat_map(|r| r * runs_of..(r + 1) * runs_of)
        .collect();
    let ws_row = |what: &str, runs: Vec<Run>| {
        let requests = runs.last().map_or(0, |r| r.requests);
        let t = median(runs.into_iter().map(|r| r.time).collect());
        println!("| {what} | {} | {requests} |", ms(t));
    };
    ws_row(
        "serve from the local file",
        (0..reps)
            .map(|_| restore(&local, len, &ws_pages, Serve::Faults(None)))
            .collect(),
    );
    ws_row(
        "objstore cold, faults only",
        (0..reps)
            .map(|_| restore(&object(cold.clone()), len, &ws_pages, Serve::Faults(None)))
            .collect(),
    );
    let mut with_ws = Options::default();
    with_ws.working_set = ws_pages.iter().map(|&p| (p * PAGE) as u64).collect();
    ws_row(
        "objstore cold, working set given (prefetch in its order)",
        (0..reps)
            .map(|_| {
                restore(
                    &object(with_ws.clone()),
                    len,
                    &ws_pages,
                    Serve::Faults(None),
                )
            })
            .collect(),
    );
    ws_row(
        "objstore cold, working set given, chunks placed as they arrive (`place_arrived`)",
        (0..reps)
            .map(|_| restore(&object(with_ws.clone()), len, &ws_pages, Serve::Arrived))
            .collect(),
    );
    // The prefetch alone: open to every working-set page arrived, nothing touched.
    let runs = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let s = open(&url, &with_ws).unwrap();
            while !ws_pages.iter().all(|&p| s.arrived((p * PAGE) as u64)) {
                std::thread::sleep(Duration::from_micros(200));
            }
            Run {
                time: start.elapsed(),
                cpu: Duration::ZERO, // not printed
                requests: s.stats().requests,
            }
        })
        .collect();
    ws_row(
        "objstore, working set given, no touches (prefetch alone)",
        runs,
    );

    // What the source still holds once a restore has touched everything: the chunks it
    // fetched, less those it dropped after the page server placed them whole.
    println!();
    println!("| touch (cold, defaults) | fetched | dropped after placement | held by the source after the restore |");
    println!("|---|---|---|---|");
    for (name, order) in [
        ("sequential", (0..pages).collect::<Vec<_>>()),
        ("random", shuffled(pages, 1)),
    ] {
        let s = open(&url, &cold).unwrap();
        let r = Restore::start_with(s.clone(), len, 1, None);
        r.touch(&order, 1, Duration::from_secs(3600)).unwrap();
        // The last placements are reported just after the faulting thread was woken.
        let until = Instant::now() + Duration::from_secs(5);
        while s.stats().bytes_released < s.stats().bytes_fetched && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let st = s.stats();
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1 << 20) as f64);
        println!(
            "| {name} | {} | {} | {} |",
            mib(st.bytes_fetched),
            mib(st.bytes_released),
            mib(st.bytes_fetched - st.bytes_released)
        );
    }
}
