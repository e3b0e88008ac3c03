//! Fault-serving benchmarks, side by side in one run: this repository's `userfaultfd`, a raw
//! loop on `libc::read`/`libc::ioctl` with the request codes of `userfaultfd-sys`, and crates.io
//! `userfaultfd` 0.9.
//!
//! ```text
//! cargo run --release -- [REPS]            the table (ci/bench runs it)
//! cargo run --release -- serve IMPL MODE N B T
//!                                          serve N faults made by T threads with
//!                                          MADV_POPULATE_READ, each resolved by a COPY of
//!                                          4 KiB (MODE copy) or a ZEROPAGE (zeropage),
//!                                          reading one event per read (B = 1) or through a
//!                                          batch buffer of B events (for valgrind
//!                                          --tool=callgrind; see ci/callgrind; the same
//!                                          handler in C is c/handler.c); IMPL server:
//!                                          userfaultfd::serve with one worker and one
//!                                          page per fault (B is ignored)
//! ```

mod handlers;
mod memory;
mod scenarios;
mod stats;

use handlers::Impl;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args[1] == "server" => {
            let zero = args[2] == "zeropage";
            let n: usize = args[3].parse().expect("N");
            let threads: usize = args[5].parse().expect("T");
            scenarios::serve_with_server(zero, n, threads);
        }
        Some("serve") => {
            let which = Impl::parse(&args[1]).expect("IMPL is raw, ours, v09 or server");
            let zero = match args[2].as_str() {
                "copy" => false,
                "zeropage" => true,
                other => panic!("MODE is copy or zeropage, not {other}"),
            };
            let n: usize = args[3].parse().expect("N");
            let batch: usize = args[4].parse().expect("B");
            let threads: usize = args[5].parse().expect("T");
            assert!(batch >= 1 && threads >= 1, "B and T are at least 1");
            scenarios::serve_populate(which, zero, n, batch, threads);
        }
        reps => {
            let reps = reps.map_or(11, |r| r.parse().expect("REPS"));
            scenarios::table(reps);
        }
    }
}
