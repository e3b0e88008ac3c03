//! Cost of dirty-page tracking of 1 GiB: `DirtyTracker` (one `PAGEMAP_SCAN` with
//! `PM_SCAN_WP_MATCHING`) side by side with the classic soft-dirty way (write "4" to
//! `/proc/self/clear_refs`, read `/proc/self/pagemap`, test bit 55).
//!
//! Run: `cargo bench --bench dirty` (Linux 6.7+; soft-dirty needs `CONFIG_MEM_SOFT_DIRTY`,
//! which `ci/bench-dirty-vm` provides by running this under Debian's 6.12 kernel in qemu).
//! `DIRTY_BENCH_MIB` sets the region size (default 1024), `DIRTY_BENCH_REPS` the repetitions
//! (default 9).
//!
//! Each repetition writes one byte to every n-th page of a populated region, then does one
//! "which pages were written, and re-arm" cycle. Two tables, medians (min–max):
//! 1. the cycle alone (scan and re-arm), the figure the tracker exists for;
//! 2. the writes, next to writing the same pages again at once (already writable: no fault):
//!    both methods make the first write to a page after re-arming fault (soft-dirty to set
//!    the bit, `WP_ASYNC` to drop the protection), and this is that fault's price. (A separate
//!    untracked region would not do: clearing soft-dirty write-protects the whole process.)
//!
//! Both regions use 4 KiB pages (`MADV_NOHUGEPAGE`): with transparent huge pages soft-dirty
//! reports whole 2 MiB blocks, which would not be the same measurement.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::env_or;
use userfaultfd::dirty::DirtyTracker;

const SOFT_DIRTY: u64 = 1 << 55;
/// Every n-th page written: 1%, 10%, 100%.
const STRIDES: [usize; 3] = [100, 10, 1];

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize
}

/// The number in the environment variable `name`, or `default` when it is not set.
/// A populated private anonymous region of 4 KiB pages.
struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Region {
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
        assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
        // SAFETY: advice on the mapping just made.
        let rc = unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        assert_eq!(rc, 0, "MADV_NOHUGEPAGE");
        let region = Region {
            base: p.cast(),
            len,
        };
        region.write_pages(1, 0); // populated, as a real heap would be
        region
    }

    /// Writes one byte to every `stride`-th page; returns how many pages it wrote.
    fn write_pages(&self, stride: usize, value: u8) -> usize {
        let page = page_size();
        let mut n = 0;
        for p in (0..self.len / page).step_by(stride) {
            // SAFETY: inside the mapping.
            unsafe { self.base.add(p * page).write_volatile(value) };
            n += 1;
        }
        n
    }

    /// Times `write_pages`.
    fn timed_write(&self, stride: usize, value: u8) -> (usize, Duration) {
        let t = Instant::now();
        let n = self.write_pages(stride, value);
        (n, t.elapsed())
    }
}

/// Soft-dirty tracking: `/proc/self/pagemap` and `/proc/self/clear_refs`, and a buffer for
/// the region's pagemap entries.
struct SoftDirty {
    pagemap: File,
    clear_refs: File,
    entries: Vec<u8>,
}

impl SoftDirty {
    fn open(pages: usize) -> SoftDirty {
        SoftDirty {
            pagemap: File::open("/proc/self/pagemap").expect("opening /proc/self/pagemap"),
            clear_refs: OpenOptions::new()
                .write(true)
                .open("/proc/self/clear_refs")
                .expect("opening /proc/self/clear_refs"),
            entries: vec![0; pages * 8],
        }
    }

    /// One cycle: read the region's pagemap entries, count the soft-dirty pages, clear the
    /// bits (of the whole process: that is the interface).
    fn cycle(&mut self, region: &Region) -> usize {
        let offset = (region.base as usize / page_size() * 8) as u64;
        self.pagemap
            .read_exact_at(&mut self.entries, offset)
            .expect("reading /proc/self/pagemap");
        let dirty = self
            .entries
            .chunks_exact(8)
            .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) & SOFT_DIRTY != 0)
            .count();
        self.clear_refs
            .write_all(b"4")
            .expect("writing /proc/self/clear_refs");
        dirty
    }
}

/// Median, min, max.
fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn cell(v: Vec<Duration>) -> (String, f64) {
    let (m, lo, hi) = stats(v);
    (format!("{m:.2?} ({lo:.2?}-{hi:.2?})"), m.as_secs_f64())
}

/// The timings of one share of pages written.
#[derive(Default)]
struct Row {
    ours_scan: Vec<Duration>,
    soft_scan: Vec<Duration>,
    ours_write: Vec<Duration>,
    soft_write: Vec<Duration>,
    plain_write: Vec<Duration>,
}

fn main() {
    let page = page_size();
    let len = env_or("DIRTY_BENCH_MIB", 1024) << 20;
    let reps = env_or("DIRTY_BENCH_REPS", 9).max(1);
    let pages = len / page;

    let tracked = Region::new(len);
    let mut tracker = DirtyTracker::new().expect("DirtyTracker (Linux 6.7+)");
    tracker.track(tracked.base.cast(), len).unwrap();
    let soft = Region::new(len);
    let mut soft_dirty = SoftDirty::open(pages);
    let mut ranges = Vec::with_capacity(pages);
    soft_dirty.cycle(&soft);

    let mut soft_dirty_works = true;
    let mut rows = Vec::new();
    for stride in STRIDES {
        let mut row = Row::default();
        for rep in 0..reps {
            let value = rep as u8 + 1;
            let (n, took) = tracked.timed_write(stride, value);
            row.ours_write.push(took);
            ranges.clear();
            let t = Instant::now();
            tracker
                .collect_written(tracked.base.cast(), len, &mut ranges)
                .unwrap();
            row.ours_scan.push(t.elapsed());
            let found: usize = ranges.iter().map(|r| r.len() / page).sum();
            assert_eq!(found, n, "PAGEMAP_SCAN reports exactly the written pages");

            let (_, took) = soft.timed_write(stride, value);
            row.soft_write.push(took);
            row.plain_write.push(soft.timed_write(stride, value).1);
            let t = Instant::now();
            let dirty = soft_dirty.cycle(&soft);
            row.soft_scan.push(t.elapsed());
            // Kernels built without CONFIG_MEM_SOFT_DIRTY walk the page tables for both steps
            // but never set the bit: the timing is then that of the procedure alone.
            soft_dirty_works &= dirty >= n;
        }
        rows.push((stride, row));
    }

    println!(
        "dirty-page tracking of {} MiB ({pages} pages of {page} bytes), median (min-max) of \
         {reps} cycles; {}",
        len >> 20,
        uname()
    );
    println!();
    println!(
        "1. find the written pages and re-arm (ratio: soft-dirty / ours; higher: ours faster)"
    );
    println!(
        "{:>14} {:>28} {:>28} {:>7}",
        "pages written", "PAGEMAP_SCAN+WP (ours)", "soft-dirty", "ratio"
    );
    for (stride, row) in &rows {
        let (ours, o) = cell(row.ours_scan.clone());
        let (soft, s) = cell(row.soft_scan.clone());
        println!(
            "{:>13}% {ours:>28} {soft:>28} {:>6.2}x",
            100 / stride,
            s / o
        );
    }
    println!();
    println!("2. the writes themselves (first write to each page after re-arming faults)");
    println!(
        "{:>14} {:>28} {:>28} {:>28}",
        "pages written", "WP_ASYNC (ours)", "soft-dirty", "no fault (rewrite)"
    );
    for (stride, row) in rows {
        let (ours, _) = cell(row.ours_write);
        let (soft, _) = cell(row.soft_write);
        let (plain, _) = cell(row.plain_write);
        println!("{:>13}% {ours:>28} {soft:>28} {plain:>28}", 100 / stride);
    }
    if !soft_dirty_works {
        println!();
        println!(
            "note: this kernel never set the soft-dirty bit (built without CONFIG_MEM_SOFT_DIRTY): \
             the soft-dirty columns time the procedure (clear_refs walk + pagemap read) and \
             writes that do not fault; ci/bench-dirty-vm measures on a kernel that has it"
        );
    }
}

/// The kernel release, for the table's heading.
fn uname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("Linux {}", r.trim()))
        .unwrap_or_else(|_| "Linux (release unknown)".into())
}
