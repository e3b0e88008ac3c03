//! Working-set record and replay: restore a snapshot lazily twice with the page server. The
//! first run records the pages the workload touches (a fixed pseudo-random 10%, in a fixed
//! order) and saves them to a working-set file; the second run loads that file and replays
//! it, so the workload finds its pages already in place. Prints both runs' statistics and
//! checks every page touched.
//!
//! Run: `cargo run --example record_replay [MiB]` (default 256).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::serve::{MappedFile, Region, Server, Stats, WorkingSet};
use userfaultfd::UffdBuilder;

const PAGE: usize = 4096;

/// What byte `j` of page `i` of the snapshot holds.
fn byte(i: usize, j: usize) -> u8 {
    (i * 31 + j * 7 + 1) as u8
}

/// The workload's pages: a fixed pseudo-random 10% of `pages`, in a fixed order.
fn working_set(pages: usize) -> Vec<usize> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut all: Vec<usize> = (0..pages).collect();
    for i in 0..pages / 10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = i + (seed % (pages - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(pages / 10);
    all
}

/// One restore: a fresh region served from `source`, recording, replaying `replay` if given;
/// the workload touches `set` and checks each page. Returns the time, statistics and record.
fn restore(
    source: &Arc<MappedFile>,
    len: usize,
    set: &[usize],
    replay: Option<WorkingSet>,
) -> Result<(Duration, Stats, WorkingSet), Box<dyn std::error::Error>> {
    // SAFETY: a new private anonymous mapping at an address the kernel picks.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .require_features(userfaultfd::serve::EVENTS)
        .create()?;
    let start = Instant::now();
    let mut builder = Server::builder();
    builder.region(Region::new(addr, len)).record(true);
    match replay {
        Some(ws) => {
            builder.replay(ws);
        }
        // No record yet: one page per fault, so that every page touched is recorded.
        None => {
            builder.fault_around(0);
        }
    }
    // SAFETY: the region holds no Rust object: its pages get the snapshot's contents.
    let server = unsafe { builder.start(uffd, source.clone())? };
    let base = addr as *const u8;
    let mut bad = 0;
    for &p in set {
        // SAFETY: a page of the served mapping: reading it faults it in (or finds it there).
        let page = unsafe { std::slice::from_raw_parts(base.add(p * PAGE), PAGE) };
        bad += page
            .iter()
            .enumerate()
            .filter(|&(j, &b)| b != byte(p, j))
            .count();
    }
    let time = start.elapsed();
    let finished = server.stop();
    finished.outcome?;
    drop(finished.uffd);
    // SAFETY: our own mapping; the server has stopped.
    unsafe { libc::munmap(addr, len) };
    if bad > 0 {
        return Err(format!("{bad} bytes differ from the snapshot").into());
    }
    let ws = finished.working_set.ok_or("no working set recorded")?;
    Ok((time, finished.stats, ws))
}

fn print(run: &str, time: Duration, s: &Stats) {
    println!(
        "{run}: {:.1} ms, {} demand faults, {} pages prefetched by replay, replay done after {}",
        time.as_secs_f64() * 1e3,
        s.faults,
        s.replay_pages,
        s.replay_time
            .map_or("-".into(), |t| format!("{:.1} ms", t.as_secs_f64() * 1e3))
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| format!("{a:?}: expected MiB"))?,
        None => 256,
    };
    let len = mib << 20;
    let dir = std::env::temp_dir();
    let snap_path = dir.join(format!("record-replay-{}.snap", std::process::id()));
    let ws_path = snap_path.with_extension("ws");
    let mut file = File::create(&snap_path)?;
    let mut page = vec![0u8; PAGE];
    for i in 0..len / PAGE {
        for (j, b) in page.iter_mut().enumerate() {
            *b = byte(i, j);
        }
        file.write_all(&page)?;
    }
    // SAFETY: the example's own snapshot file, neither truncated nor written while mapped.
    let source = Arc::new(unsafe { MappedFile::new(&File::open(&snap_path)?) }?);
    let set = working_set(len / PAGE);
    println!(
        "snapshot {mib} MiB, the workload touches {} pages (10%)",
        set.len()
    );

    let (t1, s1, ws) = restore(&source, len, &set, None)?;
    ws.save(&ws_path)?;
    print("run 1 (record)", t1, &s1);

    let ws = WorkingSet::load(&ws_path)?;
    println!(
        "working set: {} pages, file {} bytes",
        ws.len(),
        std::fs::metadata(&ws_path)?.len()
    );
    let (t2, s2, _) = restore(&source, len, &set, Some(ws))?;
    print("run 2 (replay)", t2, &s2);

    std::fs::remove_file(&snap_path)?;
    std::fs::remove_file(&ws_path)?;
    Ok(())
}
