//! Fault-serving benchmarks, side by side in one run: this repository's `userfaultfd`, a raw
//! loop on `libc::read`/`libc::ioctl` with the request codes of `userfaultfd-sys`, and crates.io
//! `userfaultfd` 0.9.
//!
//! ```text
//! cargo run --release -- [REPS]            the table (ci/bench runs it)
//! cargo run --release -- serve IMPL N [B [T]]
//!                                          serve N faults made by T threads (default 1)
//!                                          with MADV_POPULATE_READ, reading one event per
//!                                          read (B = 1, the default) or through a batch
//!                                          buffer of B events (for valgrind
//!                                          --tool=callgrind; see ci/bench)
//! ```

mod handlers;
mod memory;
mod scenarios;
mod stats;

use handlers::Impl;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let which = Impl::parse(&args[1]).expect("IMPL is raw, ours or v09");
            let n: usize = args[2].parse().expect("N");
            let batch: usize = args.get(3).map_or(1, |b| b.parse().expect("B"));
            let threads: usize = args.get(4).map_or(1, |t| t.parse().expect("T"));
            assert!(batch >= 1 && threads >= 1, "B and T are at least 1");
            scenarios::serve_populate(which, n, batch, threads);
        }
        reps => {
            let reps = reps.map_or(11, |r| r.parse().expect("REPS"));
            scenarios::table(reps);
        }
    }
}
