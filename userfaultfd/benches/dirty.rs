//! Cost of finding the written pages of 1 GiB and re-arming them: `DirtyTracker` (one
//! `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`) side by side with the classic soft-dirty way
//! (write "4" to `/proc/self/clear_refs`, read `/proc/self/pagemap`, test bit 55).
//!
//! Run: `cargo bench --bench dirty` (Linux 6.7+, soft-dirty needs CONFIG_MEM_SOFT_DIRTY);
//! `DIRTY_BENCH_MIB=256 cargo bench --bench dirty` tracks 256 MiB instead of 1 GiB.
//! Each cell is the median (and min–max) over repetitions of: write the given share of the
//! pages, then time one "which pages were written, and re-arm" cycle.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use userfaultfd::dirty::DirtyTracker;

/// The tracked size: 1 GiB, or `DIRTY_BENCH_MIB` MiB (for small machines and VMs).
fn len() -> usize {
    let mib =
        std::env::var("DIRTY_BENCH_MIB").map_or(1024, |v| v.parse().expect("DIRTY_BENCH_MIB"));
    mib << 20
}
const REPS: usize = 9;
const SOFT_DIRTY: u64 = 1 << 55;

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping used only through raw pointers.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // Base pages for both: soft-dirty keeps a transparent huge page whole (one fault, 2 MiB
    // reported per written byte) while WP_ASYNC splits it to report 4 KiB pages, so with THP
    // the two would not measure the same work.
    // SAFETY: advice on our own fresh mapping.
    let r = unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    assert_eq!(r, 0, "madvise(MADV_NOHUGEPAGE)");
    p.cast()
}

/// Writes one byte to every `stride`-th page.
fn write_pages(base: *mut u8, len: usize, stride: usize, round: u8) -> usize {
    let page = page_size();
    let mut n = 0;
    for p in (0..len / page).step_by(stride) {
        // SAFETY: inside the mapping.
        unsafe { base.add(p * page).write_volatile(round) };
        n += 1;
    }
    n
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// One soft-dirty cycle over the region: read the pagemap entries, count soft-dirty pages,
/// clear the bits (for the whole process: that is the interface).
fn soft_dirty_cycle(pagemap: &File, clear_refs: &mut File, base: *mut u8, buf: &mut [u8]) -> usize {
    let page = page_size();
    let offset = (base as usize / page * 8) as u64;
    pagemap
        .read_exact_at(buf, offset)
        .expect("reading /proc/self/pagemap");
    let dirty = buf
        .chunks_exact(8)
        .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) & SOFT_DIRTY != 0)
        .count();
    clear_refs
        .write_all(b"4")
        .expect("writing /proc/self/clear_refs");
    dirty
}

fn main() {
    let page = page_size();
    let len = len();
    let pages = len / page;
    println!(
        "dirty-page tracking of {} MiB ({pages} pages), median (min-max) of {REPS} cycles",
        len >> 20
    );
    println!(
        "{:>14} {:>26} {:>26} {:>8}",
        "pages written", "PAGEMAP_SCAN+WP (ours)", "soft-dirty", "ratio"
    );

    let tracked = map(len);
    write_pages(tracked, len, 1, 0); // populated, as a real heap would be
    let mut tracker = DirtyTracker::new().expect("DirtyTracker (Linux 6.7+)");
    tracker.track(tracked.cast(), len).unwrap();

    let soft = map(len);
    write_pages(soft, len, 1, 0);
    let pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut clear_refs = OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .unwrap();
    let mut buf = vec![0u8; pages * 8];
    let mut ranges = Vec::with_capacity(pages);
    soft_dirty_cycle(&pagemap, &mut clear_refs, soft, &mut buf);

    let mut soft_dirty_works = true;
    for stride in [100, 10, 1] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..REPS {
            let n = write_pages(tracked, len, stride, round as u8);
            ranges.clear();
            let t = Instant::now();
            tracker
                .collect_written(tracked.cast(), len, &mut ranges)
                .unwrap();
            ours.push(t.elapsed());
            let found: usize = ranges.iter().map(|r| r.len() / page).sum();
            assert_eq!(found, n, "PAGEMAP_SCAN found every written page");

            write_pages(soft, len, stride, round as u8);
            let t = Instant::now();
            let dirty = soft_dirty_cycle(&pagemap, &mut clear_refs, soft, &mut buf);
            theirs.push(t.elapsed());
            // Kernels built without CONFIG_MEM_SOFT_DIRTY still walk the page tables for both
            // steps but never set the bit: the timing is then that of the procedure alone.
            soft_dirty_works &= dirty >= n;
        }
        let (om, omin, omax) = stats(ours);
        let (sm, smin, smax) = stats(theirs);
        println!(
            "{:>13}% {:>26} {:>26} {:>7.2}x",
            100 / stride,
            format!("{om:.2?} ({omin:.2?}-{omax:.2?})"),
            format!("{sm:.2?} ({smin:.2?}-{smax:.2?})"),
            sm.as_secs_f64() / om.as_secs_f64()
        );
    }
    println!("ratio: soft-dirty time / PAGEMAP_SCAN time (higher: ours faster)");

    // The other half of the cost: the first write to each armed page takes a write-protect
    // fault, which the kernel resolves itself (WP_ASYNC). Writing every page once, armed
    // against not tracked (the soft-dirty region, its bits cleared, is the baseline).
    let (mut armed, mut plain) = (Vec::new(), Vec::new());
    for round in 0..REPS {
        ranges.clear();
        tracker
            .collect_written(tracked.cast(), len, &mut ranges)
            .unwrap();
        let t = Instant::now();
        write_pages(tracked, len, 1, round as u8);
        armed.push(t.elapsed());
        soft_dirty_cycle(&pagemap, &mut clear_refs, soft, &mut buf);
        let t = Instant::now();
        write_pages(soft, len, 1, round as u8);
        plain.push(t.elapsed());
    }
    let ((am, _, _), (pm, _, _)) = (stats(armed), stats(plain));
    println!(
        "writing all {pages} pages once: armed (WP_ASYNC) {am:.2?}, after clear_refs \
         (soft-dirty, or a plain write without it) {pm:.2?}: {:.0} ns more per page when armed",
        (am.as_secs_f64() - pm.as_secs_f64()) * 1e9 / pages as f64
    );
    if !soft_dirty_works {
        println!(
            "note: this kernel never set the soft-dirty bit (built without CONFIG_MEM_SOFT_DIRTY): \
             the soft-dirty column times the procedure (clear_refs walk + pagemap read) without \
             the write faults that soft-dirty tracking adds to every first write after a clear"
        );
    }
}
