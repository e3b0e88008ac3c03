//! `uffd-handler`: an external page-fault handler for Firecracker snapshots, on
//! `userfaultfd::serve`.
//!
//! ```text
//! uffd-handler [OPTIONS] <SOCKET> <MEMORY>
//! ```
//!
//! Start it, then `PUT /snapshot/load` with
//! `"mem_backend": {"backend_type": "Uffd", "backend_path": "<SOCKET>"}`. It accepts
//! Firecracker's connection, receives and checks the region list and the userfaultfd
//! (`handshake.rs`, `regions.rs`: every release's form of the list), serves the guest memory
//! from the memory file, or from its object in storage (`object.rs`: `http://`, `https://`,
//! `s3://`), with the page server (`session.rs`) until Firecracker's process
//! exits or SIGTERM/SIGINT arrives, prints the statistics and exits. `uffd-handler --help`
//! lists the options and the exit statuses.

mod cli;
mod handshake;
mod object;
mod pagesize;
mod regions;
mod session;
mod signals;
mod socket;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use cli::Cli;
use handshake::Refused;
use object::{Object, Opening};
use session::Memory;
use signals::{Signals, Woken};
use socket::Listener;
use userfaultfd::serve::WorkingSet;

/// Prints a line to standard error, prefixed with the program's name.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("uffd-handler: {}", format_args!($($arg)*))
    };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to standard output and succeed; a bad command line
        // prints why and the usage.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            });
        }
    };
    ExitCode::from(run(&cli))
}

/// Everything from the socket to the end of the session; the exit status.
fn run(cli: &Cli) -> u8 {
    // Before any thread starts: every thread inherits the blocked mask.
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            log!("blocking SIGTERM/SIGINT for a signalfd: {e}");
            return cli::EXIT_SETUP;
        }
    };
    if let Some(option) = cli.misplaced_option() {
        log!(
            "{option} does not apply to {}",
            match cli.memory {
                cli::Memory::File(_) => "a local memory file (only to a URL)",
                cli::Memory::Url(_) => {
                    "a URL without --cache-dir (it says how a local memory file, or a URL's \
                     disk cache, is read)"
                }
            }
        );
        return cli::EXIT_USAGE;
    }
    let replay = match &cli.replay {
        Some(path) => match WorkingSet::load(path) {
            Ok(ws) => Some(ws),
            Err(e) => {
                log!("loading the working set {}: {e}", path.display());
                return cli::EXIT_SETUP;
            }
        },
        None => None,
    };
    let memory = match &cli.memory {
        cli::Memory::File(path) => match File::open(path) {
            Ok(f) => Memory::File(f),
            Err(e) => {
                log!("opening the memory file {}: {e}", path.display());
                return cli::EXIT_SETUP;
            }
        },
        cli::Memory::Url(url) => match Object::open(cli, url, replay.as_ref(), &signals) {
            Ok(object) => {
                // A record of another object (or of another page size) is refused now,
                // before Firecracker connects, not when the server starts.
                if let (Some(ws), Some(id)) = (&replay, object.source.snapshot_id()) {
                    if let Err(e) = ws.check_applies_to(id, ws.page_size()) {
                        log!("--replay {}: {e}", cli.replay.as_ref().unwrap().display());
                        return cli::EXIT_SETUP;
                    }
                }
                log!("opened {}", object.describe());
                Memory::Object(Box::new(object))
            }
            Err(Opening::Failed(e)) => {
                log!("opening the memory object {url}: {e}");
                return cli::EXIT_SETUP;
            }
            Err(Opening::Signal(s)) => {
                return stopped_before_serving(s, "while opening the memory object")
            }
        },
    };
    if let Some(path) = &cli.record {
        if let Err(e) = writable_directory_of(path) {
            log!("--record {}: {e}", path.display());
            return cli::EXIT_SETUP;
        }
    }
    let listener = match Listener::bind(&cli.socket) {
        Ok(l) => l,
        Err(e) => {
            log!("{e}");
            return cli::EXIT_SETUP;
        }
    };
    log!("waiting for Firecracker on {}", cli.socket.display());
    let fd = listener.as_listener().as_raw_fd();
    if let Woken::Signal(s) = signals::wait(&[fd], &signals, None) {
        return stopped_before_serving(s, "before Firecracker connected");
    }
    let stream = match listener.accept() {
        Ok(s) => s,
        Err(e) => {
            log!("accepting Firecracker's connection: {e}");
            return cli::EXIT_SETUP;
        }
    };
    let deadline = Instant::now() + cli.handshake_timeout;
    let handshake = match handshake::receive(&stream, deadline, &signals) {
        Ok(h) => h,
        Err(Refused::Signal(s)) => return stopped_before_serving(s, "during the handshake"),
        Err(Refused::Bad(why)) => {
            log!("refusing Firecracker's handshake: {why}");
            return cli::EXIT_HANDSHAKE;
        }
    };
    session::serve(cli, handshake, stream, memory, replay, &signals)
}

/// A stop signal before any page was served: the (empty) statistics, and success.
fn stopped_before_serving(signal: i32, when: &str) -> u8 {
    log!(
        "{}",
        session::stats_line(Duration::ZERO, &Default::default())
    );
    log!("stopped by signal {signal} {when}");
    cli::EXIT_OK
}

/// Checks, before serving, that the record can be saved where asked (its directory exists and
/// is writable): finding out at the end would lose the whole recording.
fn writable_directory_of(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: `c` is a NUL-terminated path; access reads it only.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!(
            "its directory {} is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
