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
/// Exit status: could not start: the memory file or object (not found, unreachable store,
/// refused credentials), the socket path (something already there), the working-set file.
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

MEMORY in object storage (http://, https://, s3://bucket/key):
  uffd-handler /tmp/uffd.sock s3://snapshots/vm-42/memory --cache-dir /var/cache/uffd \
    --replay vm-42.ws --background-fill
The object is opened before the socket is made (one request learns its length and ETag; a
404, refused credentials or a store still unreachable after --fetch-deadline exit with 3),
then fetched in chunks of --chunk-size, --parallelism ranges at once, each chunk once however
many faults land in it; a fault waits only for its own page. s3:// is configured from the
environment as the AWS tools are: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_S3_FORCE_PATH_STYLE (true/false, 1/0, yes/no,
on/off; anything else exits 3). https trusts the public
roots compiled in plus the PEM file of --ca-file, or else of SSL_CERT_FILE. --replay also fetches the
recorded pages first, in their order; --background-fill also fetches the whole object behind
them. A record made from an object is tied to its length and ETag (a record of the same bytes
as a local file is another snapshot's). A progress line (bytes fetched, rate, requests,
retries, cache hits) is printed every --progress seconds until the object is complete. The
bytes fetched stay in the handler's memory (an anonymous mapping, at most the object's size)
until the guest has every page of their chunk; --place-arrived hands each chunk to the guest
as soon as it arrives.

Exit status:
  0  served until Firecracker exited, or stopped by SIGTERM/SIGINT
  1  serving failed (a page could not be served; see --error-policy)
  2  bad command line
  3  could not start (memory file or object: missing, store unreachable or refusing;
     socket path; working-set file)
  4  Firecracker's handshake was refused, or the page server refused its regions";

/// An external page-fault handler for Firecracker snapshots: serves the guest memory of one
/// `PUT /snapshot/load` with the Uffd memory backend from the snapshot memory file (a local
/// file, or an object behind http://, https:// or s3://), with fault-around, balloon
/// discards, optional background fill and working-set replay.
#[derive(Debug, Parser)]
#[command(name = "uffd-handler", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Unix socket path to listen on: Firecracker's `mem_backend.backend_path`. Must not exist.
    pub socket: PathBuf,

    /// The snapshot memory file (`mem_file_path` of `PUT /snapshot/create`): a path, or the
    /// URL of that file in object storage (`http://`, `https://`, `s3://bucket/key`).
    #[arg(value_name = "MEMORY", value_parser = parse_memory)]
    pub memory: Memory,

    /// How pages are read from a local memory file: `mmap` maps it once and copies from the
    /// mapping (fast; the file must not be truncated or rewritten while serving), `pread`
    /// reads each block with pread(2) into a buffer (for files on storage where a mapping is
    /// unwelcome). For a URL, how the --cache-dir chunks are read: from a mapping of the
    /// cache file (a disk error turns the cache off either way), or with pread(2) (for
    /// hugetlbfs guest memory on kernels before 5.14, where a disk error in a mapped read
    /// would be SIGBUS); only with --cache-dir. [default: mmap]
    #[arg(long, value_enum)]
    pub backend: Option<SourceKind>,

    /// URL only: bytes per range request (a multiple of the page size; suffixes K, M, G).
    /// [default: 4M]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub chunk_size: Option<usize>,

    /// URL only: range requests in flight at once (fetch threads). [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: Option<u16>,

    /// URL only: keep fetched chunks in DIR (sparse files keyed by the object's name, ETag and
    /// length): the next restore of the same object version on this host reads them from
    /// disk. [default: none]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// URL only: the most bytes the disk cache in --cache-dir holds (least recently opened
    /// objects are deleted to make room; suffixes K, M, G). [default: 64G]
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "cache_dir")]
    pub cache_budget: Option<usize>,

    /// URL only: a request that receives nothing for SECONDS is abandoned and retried from
    /// its last byte. [default: 10]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub fetch_timeout: Option<Duration>,

    /// URL only: a range still failing, or still arriving (a store trickling its bytes),
    /// SECONDS after its first attempt fails (5xx, resets and timeouts are retried until
    /// then; a 4xx fails at once): at start the handler exits with 3, while serving
    /// --error-policy decides. [default: 120]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub fetch_deadline: Option<Duration>,

    /// URL only: trust the certificate authorities in FILE (PEM) for https, in addition to
    /// the public roots compiled in (Mozilla's): the private CA of an on-premises store.
    /// Without it, the file the environment's SSL_CERT_FILE names is added when set. A
    /// certificate that does not verify fails at once (exit 3 at start), it is not retried.
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// URL only: print the object's progress line (bytes fetched, rate, requests, retries,
    /// cache hits) every SECONDS until every byte has arrived, and at the end (0: only at the
    /// end). [default: 10]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub progress: Option<Duration>,

    /// Bytes placed per fault: the aligned block around the faulting page, clipped to the
    /// region and to pages not yet placed (suffixes K, M, G; 0 = one page). Default: 256K,
    /// or one page with --record (so that every page the guest touches is recorded).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub fault_around: Option<usize>,

    /// Worker threads serving faults. A second worker pays off with a slow source (storage),
    /// not with a memory file in the page cache. With a URL a fault waiting for the network
    /// holds its worker, so that vCPUs faulting on pages already fetched would wait behind
    /// it: 4 by default. [default: 1, or 4 with a URL]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,

    /// After start, place the rest of guest memory in the background at the lowest CPU
    /// priority, block by block (faults keep priority): memory ends fully populated, as with
    /// an eager restore, but the guest runs at once. With a URL, the whole object is also
    /// fetched in the background (behind the faults and the --replay pages, on threads of
    /// its own at nice 19; the fetches faults wait for keep the handler's priority), so that
    /// the fill rarely waits for the network.
    #[arg(long)]
    pub background_fill: bool,

    /// With a URL: place each chunk as it arrives whole (fetched for a fault, read ahead,
    /// prefetched for --replay, or found intact in --cache-dir), at the lowest CPU priority,
    /// instead of waiting for the guest to fault on each of its pages. Fetched chunks are
    /// held until the guest has them whole anyway, so this moves memory to the guest (its
    /// cgroup) from arrival rather than first touch; with --cache-dir, every chunk found in
    /// the cache is placed, as a background fill from the cache would. Pages the guest
    /// discarded (a balloon's) are skipped. Measured on random access: a cold restore in a
    /// little over half the time, a warm one as fast as from a local file. Without a URL
    /// nothing arrives: no effect.
    #[arg(long)]
    pub place_arrived: bool,

    /// Record the pages the guest touches, in first-touch order, and save them to FILE as a
    /// working set when the session ends (for --replay on the next restore of this memory
    /// file).
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub record: Option<PathBuf>,

    /// Replay a working set recorded with --record on the same memory file: its pages are
    /// placed in the recorded order from the start, ahead of the guest's faults. A record of
    /// another memory file is refused. With a URL, the recorded pages are also fetched first,
    /// in that order, from the moment the object is opened.
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

/// Where guest memory comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Memory {
    /// A local file.
    File(PathBuf),
    /// An object: `http://`, `https://` or `s3://bucket/key`.
    Url(String),
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Memory::File(p) => write!(f, "{}", p.display()),
            Memory::Url(u) => f.write_str(u),
        }
    }
}

/// A URL for the schemes the object source takes, a path otherwise; another `scheme://` is
/// refused rather than taken for a path (`./x://y` names such a file).
fn parse_memory(text: &str) -> Result<Memory, String> {
    if ["http://", "https://", "s3://"]
        .iter()
        .any(|scheme| text.starts_with(scheme))
    {
        return Ok(Memory::Url(text.to_string()));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
        {
            return Err(format!(
                "{text:?}: {scheme}:// is not served (http://, https://, s3://bucket/key, or a \
                 path)"
            ));
        }
    }
    Ok(Memory::File(PathBuf::from(text)))
}

impl Cli {
    /// `--workers`, or its default for the kind of memory.
    pub fn workers(&self) -> u16 {
        self.workers.unwrap_or(match self.memory {
            Memory::File(_) => 1,
            Memory::Url(_) => 4,
        })
    }

    /// The options given that apply to one kind of memory only, for the other kind: the
    /// first one's name.
    pub fn misplaced_option(&self) -> Option<&'static str> {
        match self.memory {
            Memory::File(_) => [
                ("--chunk-size", self.chunk_size.is_some()),
                ("--parallelism", self.parallelism.is_some()),
                ("--cache-dir", self.cache_dir.is_some()),
                ("--cache-budget", self.cache_budget.is_some()),
                ("--fetch-timeout", self.fetch_timeout.is_some()),
                ("--fetch-deadline", self.fetch_deadline.is_some()),
                ("--progress", self.progress.is_some()),
                ("--ca-file", self.ca_file.is_some()),
            ]
            .into_iter()
            .find_map(|(name, given)| given.then_some(name)),
            // For a URL, --backend says how the disk cache is read.
            Memory::Url(_) => {
                (self.backend.is_some() && self.cache_dir.is_none()).then_some("--backend")
            }
        }
    }
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

/// The longest period accepted: ten years. The deadlines are instants (now plus the period),
/// and an instant far enough ahead does not exist: `1e19` would panic when added.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// Seconds, possibly fractional (`0.5`), at most [`MAX_SECONDS`].
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs > MAX_SECONDS {
        return Err(format!(
            "{text:?} is more than {MAX_SECONDS} seconds (ten years)"
        ));
    }
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
        // Added to Instant::now() for a deadline, 1e19 seconds panicked (--handshake-timeout).
        assert!(parse_seconds("1e19").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert_eq!(
            parse_seconds("315360000"),
            Ok(Duration::from_secs(315_360_000))
        );
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["uffd-handler", "s", "m", "--fault-around", "1M"]).unwrap();
        assert_eq!(cli.fault_around, Some(1 << 20));
        assert_eq!(cli.workers(), 1);
        let url = Cli::try_parse_from(["uffd-handler", "s", "s3://b/k"]).unwrap();
        assert_eq!(url.workers(), 4);
        assert!(
            Cli::try_parse_from(["uffd-handler", "s", "m", "--record", "a", "--replay", "b"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["uffd-handler", "s", "m", "--workers", "0"]).is_err());
    }

    #[test]
    fn memory_is_a_path_or_a_url_of_a_served_scheme() {
        let url = |u: &str| Ok(Memory::Url(u.into()));
        assert_eq!(parse_memory("http://h/m"), url("http://h/m"));
        assert_eq!(parse_memory("https://h/m"), url("https://h/m"));
        assert_eq!(parse_memory("s3://b/k"), url("s3://b/k"));
        assert_eq!(parse_memory("vm.mem"), Ok(Memory::File("vm.mem".into())));
        assert_eq!(
            parse_memory("./ftp://x"),
            Ok(Memory::File("./ftp://x".into()))
        );
        assert!(parse_memory("ftp://h/m")
            .unwrap_err()
            .contains("ftp:// is not served"));
        let cli = |args: &[&str]| Cli::try_parse_from(args).unwrap().misplaced_option();
        assert_eq!(
            cli(&["u", "s", "m", "--cache-dir", "d"]),
            Some("--cache-dir")
        );
        assert_eq!(
            cli(&["u", "s", "s3://b/k", "--backend", "pread"]),
            Some("--backend")
        );
        assert_eq!(
            cli(&[
                "u",
                "s",
                "s3://b/k",
                "--backend",
                "pread",
                "--cache-dir",
                "d"
            ]),
            None
        );
        assert_eq!(cli(&["u", "s", "s3://b/k", "--chunk-size", "1M"]), None);
        assert_eq!(cli(&["u", "s", "m", "--backend", "pread"]), None);
    }
}
