//! `uffd_stress`: the kernel's userfaultfd stress test (`tools/testing/selftests/mm/
//! uffd-stress`, Linux 6.12), written anew on this crate's API, so that the two can be run
//! side by side and their output compared line by line (`ci/stress-vs-kernel` does).
//!
//! ```text
//! cargo run --release --example uffd_stress -- <anon|shmem|shmem-private|hugetlb|hugetlb-private> <MiB> <bounces>
//! ```
//!
//! Two areas of `<MiB>` (rounded down to whole pages per CPU) are mapped; every page starts
//! with a `pthread_mutex_t` and a counter. Each bounce registers the destination area and
//! moves every page into it from the source while, per CPU:
//!
//! - a locking thread locks the mutex of a page of the destination (random or sequential),
//!   checks the page's counter against the expected value, and increments it; its first
//!   touch of a page faults;
//! - a fault-handler thread serves those faults with `UFFDIO_COPY` from the source (blocking
//!   `read(2)`, or `poll(2)` on a non-blocking descriptor); write-protect faults, with
//!   `UFFDIO_WRITEPROTECT`;
//! - a background thread copies its share of the pages at full speed, racing the handlers
//!   (the loser gets `EEXIST` and wakes the faulting thread), and when write protection is
//!   supported copies pages write-protected and protects its share halfway, so that the
//!   locking threads' increments take write-protect faults too.
//!
//! Then the source is dropped, the areas swap roles, and the next bounce goes the other way.
//! The number of bounces left selects the mode: bit 0 random pages (`rnd`), bit 1 all CPUs on
//! the same pages (`racing`), bit 2 verify every counter at the end (`ver`), bit 3 `poll`
//! handlers (else `read`). Every ten seconds (`SIGALRM`), and at the first copy, one successful
//! copy is repeated and must fail with `EEXIST`. Any mismatch or unexpected error prints
//! `ERROR: ...` and exits 1. `UFFD_STRESS_CORRUPT=1` serves one fault with a page of zeros, to
//! see that caught.
//!
//! Output, as the kernel's program prints it:
//!
//! ```text
//! nr_pages: 8192, nr_pages_per_cpu: 4096
//! bounces: 15, mode: rnd racing ver poll, userfaults: 1326 missing (637+689+\b) 5383 wp (2647+2736+\b)
//! ...
//! ```
//!
//! (`\b` is a backspace character; the per-CPU counts are those of each CPU's handler.) Exit
//! status 0 when every bounce passed, 1 on an error, 4 (kselftest's "skip") when hugetlb
//! lacks free huge pages.
//!
//! Differences from the C program, none visible in the output: read-mode handlers are ended
//! by one fault each on a sentinel page instead of `pthread_cancel` (see `stop.rs`);
//! concurrent alarms make at most one repeated copy each. Minor faults are not exercised, as
//! in the 6.12 program (its `minor` column is always absent).

/// Prints `ERROR: <message>` and exits with status 1 (from any thread), as the kernel's
/// program does on any failure.
macro_rules! fatal {
    ($($arg:tt)*) => {{
        eprintln!("ERROR: {}", format_args!($($arg)*));
        std::process::exit(1)
    }};
}

mod alarm;
mod area;
mod args;
mod bounce;
mod handler;
mod inject;
mod stats;
mod stop;
mod workers;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64};

use userfaultfd::{FeatureFlags, RegisterMode, UffdBuilder};

use area::{Kind, Memory};
use args::Config;
use bounce::{Bounce, POLL, RACING, RANDOM, VERIFY};
use stop::Stoppers;

fn main() {
    let config = args::parse();
    inject::arm_from_env();
    println!(
        "nr_pages: {}, nr_pages_per_cpu: {}",
        config.mem.nr_pages, config.nr_pages_per_cpu
    );
    run(&config);
}

/// The bounces, after setting up the areas and the descriptor.
fn run(config: &Config) {
    let mem = config.mem;
    let bytes = mem.bytes();
    let mut src = mem
        .allocate(true)
        .unwrap_or_else(|e| fatal!("context init failed: memory allocation failed: {e}"));
    let mut dst = mem
        .allocate(false)
        .unwrap_or_else(|e| fatal!("context init failed: memory allocation failed: {e}"));
    // Write protection of unpopulated anonymous pages, where the kernel has it: the
    // background copier's protection then also covers pages not yet copied.
    let features = if mem.kind == Kind::Anon {
        config.features & FeatureFlags::WP_UNPOPULATED
    } else {
        FeatureFlags::empty()
    };
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .require_features(features)
        .create()
        .unwrap_or_else(|e| fatal!("context init failed: {e}"));

    let verify: Vec<AtomicU64> = (0..mem.nr_pages).map(|_| AtomicU64::new(1)).collect();
    for nr in 0..mem.nr_pages {
        // SAFETY: page `nr` of the source area, ours and not yet shared with any thread.
        unsafe {
            mem.mutex(src.base, nr)
                .write(libc::PTHREAD_MUTEX_INITIALIZER);
            let count = mem.count(src.base, nr);
            count.write_volatile(1);
            count.add(1).write_volatile(1);
        }
    }
    // Nothing of the destination may be populated (a THP shared with the source, say).
    mem.release(&dst)
        .unwrap_or_else(|e| fatal!("releasing the destination area: {e}"));
    let stoppers =
        Stoppers::new(&uffd, config.nr_cpus).unwrap_or_else(|e| fatal!("context init failed: {e}"));

    let mut register_mode = RegisterMode::MISSING;
    if config.wp {
        register_mode |= RegisterMode::WRITE_PROTECT;
    }
    let mut left = config.bounces;
    while left > 0 {
        left -= 1;
        let mode = left;
        print!(
            "bounces: {mode}, mode:{}{}{}{}, ",
            if mode & RANDOM != 0 { " rnd" } else { "" },
            if mode & RACING != 0 { " racing" } else { "" },
            if mode & VERIFY != 0 { " ver" } else { "" },
            if mode & POLL != 0 { " poll" } else { " read" },
        );
        let _ = std::io::stdout().flush();

        if let Err(e) = uffd.set_non_blocking(mode & POLL != 0) {
            fatal!("setting O_NONBLOCK: {e}");
        }
        for (view, what) in [(Some(dst.base), ""), (dst.alias, " alias")] {
            if let Some(view) = view {
                if let Err(e) = uffd.register_with_mode(view.cast(), bytes, register_mode) {
                    fatal!("register failure{what}: {e}");
                }
            }
        }
        // Again, now that it is registered: a handler of the last bounce may have copied a
        // zero page into this area (then the source) after it was dropped.
        mem.release(&dst)
            .unwrap_or_else(|e| fatal!("releasing the destination area: {e}"));

        let bounce = Bounce {
            uffd: &uffd,
            mem,
            src: &src,
            dst: &dst,
            nr_cpus: config.nr_cpus,
            nr_pages_per_cpu: config.nr_pages_per_cpu,
            wp: config.wp,
            verify: &verify,
            mode,
            finished: AtomicBool::new(false),
            stoppers: &stoppers,
        };
        let stats = bounce::stress(&bounce);

        if config.wp {
            if let Err(e) = uffd.remove_write_protection(dst.base.cast(), bytes, true) {
                fatal!("clear WP failed: address={:p}: {e}", dst.base);
            }
        }
        for (view, what) in [(Some(dst.base), ""), (dst.alias, " alias")] {
            if let Some(view) = view {
                if let Err(e) = uffd.unregister(view.cast(), bytes) {
                    fatal!("unregister failure{what}: {e}");
                }
            }
        }
        if mode & VERIFY != 0 {
            verify_counts(&mem, &dst, &verify);
        }
        std::mem::swap(&mut src, &mut dst);
        println!("{}", stats::report(&stats));
    }
}

/// Every counter in `area` must hold the value the locking threads last wrote.
fn verify_counts(mem: &Memory, area: &area::Area, verify: &[AtomicU64]) {
    for (nr, expected) in verify.iter().enumerate() {
        // SAFETY: a page of our area; every thread that wrote it has been joined.
        let value = unsafe { mem.count(area.base, nr).read_volatile() };
        let expected = expected.load(std::sync::atomic::Ordering::Relaxed);
        if value != expected {
            fatal!("error area_count {value} {expected} {nr}");
        }
    }
}
