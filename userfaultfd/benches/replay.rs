//! Working-set replay: a restored program that touches a fixed pseudo-random 10% of a 1 GiB
//! snapshot in a fixed order, doing a little work per page, restored four ways side by side
//! in one run.
//!
//! Run: `cargo bench --bench replay`. `REPLAY_BENCH_MIB` sets the snapshot size (default
//! 1024), `REPLAY_BENCH_REPS` the repetitions per column (default 3; medians are shown),
//! `REPLAY_BENCH_WORK` the rounds of work per page (default 4: each round sums the page's
//! 512 words, about 0.3 µs).
//!
//! Columns (each maps a fresh private anonymous region served from a `MappedFile` of the
//! snapshot on tmpfs, and times the workload from the server's start to its last page):
//! - `1-page`: a handler on the crate's primitives placing one page per fault (`COPY`);
//! - `around`: the server with its defaults (256 KiB of fault-around), no replay;
//! - `1-page server`: the server with `fault_around(0)`, not recording (what the next column
//!   costs without recording);
//! - `record`: the server with `fault_around(0)` and `record(true)`: the previous run, whose
//!   record the next column replays (one page per fault, so that every page the workload
//!   touches is a demand fault and is recorded);
//! - `replay`: the server with its defaults replaying that record (saved to a file and loaded
//!   back, as a next restore does);
//! - `replay, clone`: the same, with a workload whose working set differs from the recorded
//!   one in every 33rd page (about 3%: clones of one snapshot overlap above 0.9).
//!
//! Waste (prefetched pages never touched) is counted from the workload's own knowledge: the
//! pages the replay placed are the record's pages not already placed by a fault, and the
//! workload knows which pages it touches.

mod common;

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_or, median, Map};
use userfaultfd::serve::{MappedFile, Region, Server, Stats, WorkingSet};
use userfaultfd::{Event, FeatureFlags, UffdBuilder};

const PAGE: usize = 4096;

/// The workload's pages: a fixed pseudo-random 10% of `pages`, in a fixed pseudo-random order.
fn working_set(pages: usize) -> Vec<usize> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut all: Vec<usize> = (0..pages).collect();
    // A partial Fisher-Yates shuffle: the first tenth is a random sample in random order.
    let n = pages / 10;
    for i in 0..n {
        let j = i + (next() % (pages - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

/// Touches the pages of `set` in order, `rounds` sums of each page's words.
fn workload(map: &Map, set: &[usize], rounds: usize) -> Duration {
    let start = Instant::now();
    let mut sum = 0u64;
    for &p in set {
        // SAFETY: a page inside the mapping, read as words.
        let words = unsafe { std::slice::from_raw_parts(map.ptr.add(p * PAGE) as *const u64, 512) };
        for _ in 0..rounds {
            for w in words {
                sum = sum.wrapping_add(std::hint::black_box(*w));
            }
        }
    }
    std::hint::black_box(sum);
    start.elapsed()
}

fn uffd() -> userfaultfd::Uffd {
    UffdBuilder::new()
        .close_on_exec(true)
        .require_features(userfaultfd::serve::EVENTS | FeatureFlags::empty())
        .create()
        .expect("creating a userfaultfd")
}

/// One run of a column: the time, and the server's statistics and record.
struct Run {
    time: Duration,
    stats: Option<Stats>,
    record: Option<WorkingSet>,
}

fn one_page(mapped: &MappedFile, len: usize, set: &[usize], rounds: usize) -> Run {
    use userfaultfd::serve::{Chunk, PageSource};
    let map = Map::anon(len);
    let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
    uffd.register(map.ptr.cast(), len).unwrap();
    let Chunk::Data(src) = mapped.fetch(0, PAGE, &mut []).unwrap() else {
        panic!("the benchmark snapshot is dense")
    };
    let src = src.as_ptr() as usize;
    let start = Instant::now();
    std::thread::scope(|s| {
        let (uffd, base) = (&uffd, map.ptr as usize);
        s.spawn(move || {
            for _ in 0..set.len() {
                let Some(Event::Pagefault { addr, .. }) = uffd.read_event().unwrap() else {
                    panic!("unexpected event");
                };
                let off = (addr as usize - base) & !(PAGE - 1);
                // SAFETY: a missing page of the benchmark's region, from the file's mapping.
                unsafe {
                    uffd.copy(
                        (src + off) as *const libc::c_void,
                        (base + off) as *mut libc::c_void,
                        PAGE,
                        true,
                    )
                }
                .unwrap();
            }
        });
        workload(&map, set, rounds);
    });
    Run {
        time: start.elapsed(),
        stats: None,
        record: None,
    }
}

fn server(
    mapped: &Arc<MappedFile>,
    len: usize,
    set: &[usize],
    rounds: usize,
    one_page: Option<bool>,
    replay: Option<WorkingSet>,
) -> Run {
    let map = Map::anon(len);
    let start = Instant::now();
    let mut b = Server::builder();
    b.region(Region::new(map.ptr.cast(), len));
    // `Some(record)`: one page per fault, recording or not.
    if let Some(record) = one_page {
        b.fault_around(0).record(record);
    }
    if let Some(ws) = replay {
        b.replay(ws);
    }
    // SAFETY: the benchmark's region holds no Rust object.
    let server = unsafe { b.start(uffd(), mapped.clone()) }.expect("starting the server");
    workload(&map, set, rounds);
    let time = start.elapsed();
    let finished = server.stop();
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    Run {
        time,
        stats: Some(finished.stats),
        record: finished.working_set,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let mib = env_or("REPLAY_BENCH_MIB", 1024);
    let reps = env_or("REPLAY_BENCH_REPS", 3).max(1);
    // At least one round: the workload must touch its pages.
    let rounds = env_or("REPLAY_BENCH_WORK", 4).max(1);
    let len = mib << 20;
    let path =
        std::path::PathBuf::from(format!("/dev/shm/uffd-replay-bench-{}", std::process::id()));
    let mut file: File = std::fs::OpenOptions::new()
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
    let set = working_set(len / PAGE);
    let record_path = path.with_extension("ws");

    // A clone's working set: the recorded one with every 33rd page swapped for one outside it
    // (about 3% different: clones of one snapshot overlap above 0.9).
    let in_set: std::collections::HashSet<usize> = set.iter().copied().collect();
    let clone: Vec<usize> = set
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            if k % 33 != 32 {
                return p;
            }
            let mut q = p;
            while in_set.contains(&q) {
                q = (q + 7) % (len / PAGE);
            }
            q
        })
        .collect();

    let mut times: [Vec<Duration>; 6] = Default::default();
    let mut last: [Option<Stats>; 6] = Default::default();
    let mut replay_times = Vec::new();
    let mut wastes = [0usize; 5];
    let mut record_len = 0;
    for _ in 0..reps {
        times[0].push(one_page(&mapped, len, &set, rounds).time);
        let r = server(&mapped, len, &set, rounds, None, None);
        times[1].push(r.time);
        last[1] = r.stats;
        // The previous run: records, then saves its record.
        // What recording costs: the same run without it.
        let r = server(&mapped, len, &set, rounds, Some(false), None);
        times[5].push(r.time);
        last[5] = r.stats;
        let r = server(&mapped, len, &set, rounds, Some(true), None);
        times[2].push(r.time);
        last[2] = r.stats;
        r.record.unwrap().save(&record_path).unwrap();
        // The next restores (the same program, and a clone): load the record and replay it.
        for (column, touched) in [(3, &set), (4, &clone)] {
            let record = WorkingSet::load(&record_path).unwrap();
            record_len = record.len();
            // Placed by replay and never touched: recorded pages the run does not touch.
            let want: std::collections::HashSet<u64> = touched.iter().map(|&p| p as u64).collect();
            wastes[column] = record.order().iter().filter(|p| !want.contains(p)).count();
            let r = server(&mapped, len, touched, rounds, None, Some(record));
            times[column].push(r.time);
            if column == 3 {
                replay_times.extend(r.stats.as_ref().and_then(|s| s.replay_time));
            }
            last[column] = r.stats;
        }
    }
    let _ = std::fs::remove_file(&record_path);
    let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    drop(mapped);
    drop(file);
    let _ = std::fs::remove_file(&path);

    let [one, around, rec, replay, cloned, unrecorded] = times.map(median);
    let faults = |s: &Option<Stats>| s.as_ref().map_or(0, |s| s.faults);
    let prefetched = |s: &Option<Stats>| s.as_ref().map_or(0, |s| s.replay_pages);
    println!(
        "snapshot {} MiB on tmpfs, working set {} pages (10%), {rounds} rounds of work per page; \
         times: median of {reps}; counts: the last repetition",
        file_len >> 20,
        set.len()
    );
    println!();
    println!("| | 1-page | around | 1-page server | record | replay | replay, clone |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| time | {} | {} | {} | {} | {} | {} |",
        ms(one),
        ms(around),
        ms(unrecorded),
        ms(rec),
        ms(replay),
        ms(cloned)
    );
    println!(
        "| demand faults | {} | {} | {} | {} | {} | {} |",
        set.len(),
        faults(&last[1]),
        faults(&last[5]),
        faults(&last[2]),
        faults(&last[3]),
        faults(&last[4])
    );
    println!(
        "| pages prefetched by replay | | | | | {} | {} |",
        prefetched(&last[3]),
        prefetched(&last[4])
    );
    println!(
        "| recorded pages never touched (waste) | | | | | {} | {} |",
        wastes[3], wastes[4]
    );
    println!();
    let around_faults = faults(&last[1]).max(1) as f64;
    for (name, column, time) in [("replay", 3, replay), ("replay, clone", 4, cloned)] {
        println!(
            "{name} against around: {:.1}% fewer demand faults, {:.2}x faster, waste {:.2}% of {} recorded pages",
            100.0 * (1.0 - faults(&last[column]) as f64 / around_faults),
            around.as_secs_f64() / time.as_secs_f64(),
            100.0 * wastes[column] as f64 / record_len.max(1) as f64,
            record_len,
        );
    }
    println!(
        "recording costs {:+.1}% (record against 1-page server, medians)",
        100.0 * (rec.as_secs_f64() / unrecorded.as_secs_f64() - 1.0)
    );
    println!(
        "replay done after {} (median)",
        if replay_times.is_empty() {
            "- (stopped first)".into()
        } else {
            ms(median(replay_times))
        }
    );
}
