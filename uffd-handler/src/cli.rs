//! The command line: what each option does, and the exit codes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Exit status: served until Firecracker exited, or stopped by SIGTERM/SIGINT.
pub const EXIT_OK: u8 = 0;
/// Exit status: the server stopped on an error while serving (a page could not be read, a
/// worker failed); with `--error-policy fail-closed` the unserved pages were poisoned first.
pub const EXIT_SERVE_FAILED: u8 = 1;
/// Exit status: bad command line (clap's own status).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: could not start: the memory file, the socket path (something already there),
/// the working-set file.
pub const EXIT_SETUP: u8 = 3;
/// Exit status: Firecracker's handshake was refused (malformed or inconsistent region list,
/// no userfaultfd, deadline passed) or the page server refused the regions.
pub const EXIT_HANDSHAKE: u8 = 4;

const AFTER_HELP: &str = "\
Firecracker: start this first, then load the snapshot with
  PUT /snapshot/load {\"snapshot_path\": \"vm.snap\", \"mem_backend\":
    {\"backend_type\": \"Uffd\", \"backend_path\": \"<SOCKET>\"}, \"resume_vm\": true}
Every Firecracker release with the Uffd backend (1.1 and later) is understood: page size sent
as page_size and page_size_kib (1.12+, both in bytes), as page_size_kib only (1.7-1.11, in
bytes despite the name), or not at all (1.1-1.6: read from the guest mapping, else the base
page size); descriptors with or without EVENT_REMOVE; a socket closed right after the
handshake (before 1.12) or kept open.

One session per run: the handler serves until Firecracker's process exits (or SIGTERM/SIGINT),
prints the statistics and exits. The socket file it made is removed once Firecracker has
connected; an existing file at SOCKET is never removed (the handler refuses to start).

Exit status:
  0  served until Firecracker exited, or stopped by SIGTERM/SIGINT
  1  serving failed (a page could not be served; see --error-policy)
  2  bad command line
  3  could not start (memory file, socket path, working-set file)
  4  Firecracker's handshake was refused, or the page server refused its regions";

/// An external page-fault handler for Firecracker snapshots: serves the guest memory of one
/// `PUT /snapshot/load` with the Uffd memory backend from the snapshot memory file, with
/// fault-around, balloon discards, optional background fill and working-set replay.
#[derive(Debug, Parser)]
#[command(name = "uffd-handler", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Unix socket path to listen on: Firecracker's `mem_backend.backend_path`. Must not exist.
    pub socket: PathBuf,

    /// The snapshot memory file (`mem_file_path` of `PUT /snapshot/create`).
    pub memory_file: PathBuf,

    /// How pages are read from the memory file: `mmap` maps it once and copies from the
    /// mapping (fast; the file must not be truncated or rewritten while serving), `pread` reads each block with
    /// pread(2) into a buffer (for files on storage where a mapping is unwelcome).
    #[arg(long, value_enum, default_value_t = SourceKind::Mmap)]
    pub backend: SourceKind,

    /// Bytes placed per fault: the aligned block around the faulting page, clipped to the
    /// region and to pages not yet placed (suffixes K, M, G; 0 = one page). Default: 256K,
    /// or one page with --record (so that every page the guest touches is recorded).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub fault_around: Option<usize>,

    /// Worker threads serving faults. A second worker pays off with a slow source (storage),
    /// not with a memory file in the page cache.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// After start, place the rest of guest memory in the background at the lowest CPU
    /// priority, block by block (faults keep priority): memory ends fully populated, as with
    /// an eager restore, but the guest runs at once.
    #[arg(long)]
    pub background_fill: bool,

    /// Record the pages the guest touches, in first-touch order, and save them to FILE as a
    /// working set when the session ends (for --replay on the next restore of this memory
    /// file).
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub record: Option<PathBuf>,

    /// Replay a working set recorded with --record on the same memory file: its pages are
    /// placed in the recorded order from the start, ahead of the guest's faults. A record of
    /// another memory file is refused.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// What to do when a page cannot be served (the memory file cannot be read, a worker
    /// fails): `fail-closed` poisons every page not yet served, so the vCPU touching one gets
    /// SIGBUS and Firecracker stops the VM (Linux 6.6+; before, faulting vCPUs stay blocked);
    /// `stop` stops serving and leaves faulting vCPUs blocked until Firecracker is killed.
    /// Either way the guest never runs on a page of zeros it did not write.
    #[arg(long, value_enum, default_value_t = Policy::FailClosed)]
    pub error_policy: Policy,

    /// Deadline for Firecracker's whole handshake (the region list and the userfaultfd),
    /// counted from its connection, in seconds: a peer that sends slowly or never finishes
    /// is refused when it passes.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub handshake_timeout: Duration,

    /// Also print a line of statistics every SECONDS while serving (0: only at the end).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_seconds)]
    pub stats_every: Duration,
}

/// How the memory file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Map the file once; copy pages from the mapping.
    Mmap,
    /// Read each block with pread(2).
    Pread,
}

/// The page server's error policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Poison unserved pages: touching one raises SIGBUS.
    FailClosed,
    /// Stop serving; faulting threads stay blocked.
    Stop,
}

/// `4096`, `256K`, `2M`, `1G` (binary multiples).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number, optionally with K, M or G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Seconds, possibly fractional (`0.5`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_and_seconds_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["uffd-handler", "s", "m", "--fault-around", "1M"]).unwrap();
        assert_eq!(cli.fault_around, Some(1 << 20));
        assert_eq!(cli.workers, 1);
        assert!(
            Cli::try_parse_from(["uffd-handler", "s", "m", "--record", "a", "--replay", "b"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["uffd-handler", "s", "m", "--workers", "0"]).is_err());
    }
}
