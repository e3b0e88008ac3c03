//! A ready external page-fault handler for Firecracker snapshots, on `userfaultfd::serve`.
//!
//! ```text
//! cargo run --release --example firecracker_handler -- <socket path> <snapshot memory file>
//!     [--record FILE | --replay FILE] [--workers N] [--background-fill]
//! ```
//!
//! Start it before `PUT /snapshot/load` with
//! `"mem_backend": {"backend_type": "Uffd", "backend_path": "<socket path>"}`. It accepts
//! Firecracker's one connection, checks the region list and the userfaultfd sent with it
//! (`protocol.rs`), and serves the guest memory from the snapshot file with the page server:
//! fault-around, balloon removals (`REMOVE`: those pages read as zeros afterwards), several
//! workers. It prints a line of statistics every second and at exit, and exits when
//! Firecracker exits or closes the connection.
//!
//! `--record FILE` saves the pages the guest touched, in the order it first touched them, to a
//! working-set file at exit (that run places one page per fault, so that every page touched is
//! recorded); `--replay FILE` places those pages in that order from the start on a later
//! restore of the same snapshot, ahead of the guest's faults. A record of another memory file is
//! refused.
//!
//! It fails closed: if a page cannot be served (the snapshot file cannot be read, a worker
//! fails), every page not yet served is poisoned, so the vCPU that touches one gets `SIGBUS`
//! and Firecracker stops the VM, instead of the guest silently running on zero pages (what a
//! handler that just exits causes). On kernels without `UFFDIO_POISON` (before 6.6) the
//! faulting vCPUs stay blocked until Firecracker is killed.

mod handler;
mod json;
mod protocol;

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: firecracker_handler <socket path> <snapshot memory file> \
         [--record FILE | --replay FILE] [--workers N] [--background-fill]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(snapshot)) = (args.next(), args.next()) else {
        return usage();
    };
    let mut options = handler::Options::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--background-fill" => options.background_fill = true,
            "--record" if options.replay.is_none() => match args.next() {
                Some(path) => options.record = Some(path.into()),
                None => return usage(),
            },
            "--replay" if options.record.is_none() => match args.next() {
                Some(path) => options.replay = Some(path.into()),
                None => return usage(),
            },
            "--workers" => match args.next().map(|v| v.parse::<usize>()) {
                Some(Ok(n)) if n > 0 => options.workers = n,
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    let snapshot = match File::open(&snapshot) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("firecracker_handler: opening {snapshot}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A stale socket file from an earlier run would make bind fail.
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("firecracker_handler: binding {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("firecracker_handler: waiting for Firecracker on {socket}");
    let stream = match listener.accept() {
        Ok((stream, _)) => stream,
        Err(e) => {
            eprintln!("firecracker_handler: accepting: {e}");
            return ExitCode::FAILURE;
        }
    };
    match handler::serve(&stream, &snapshot, &options) {
        Ok(finished) if handler::ended_cleanly(&finished) => {
            eprintln!("firecracker_handler: done: {:?}", finished.outcome);
            ExitCode::SUCCESS
        }
        Ok(finished) => {
            eprintln!("firecracker_handler: stopped: {:?}", finished.outcome);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("firecracker_handler: {e}");
            ExitCode::FAILURE
        }
    }
}
