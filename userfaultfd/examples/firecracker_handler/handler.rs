//! Serving Firecracker's guest memory with the page server, from the handshake to the end.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use userfaultfd::serve::{
    ErrorPolicy, Exit, Finished, MappedFile, Region, Server, Stats, WorkingSet,
};

use crate::protocol::{self, GuestRegion};

/// How to serve.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads.
    pub workers: usize,
    /// Whether the rest of guest memory is placed in the background after start (memory then
    /// ends fully populated, as with an eager restore, but the guest runs at once).
    pub background_fill: bool,
    /// How long to wait for Firecracker's message.
    pub handshake_timeout: Duration,
    /// Print a line of statistics this often (`None`: never).
    pub log_every: Option<Duration>,
    /// Record the pages the guest touches, and save them to this working-set file at exit.
    /// The recording run places one page per fault, so that every page touched is a demand
    /// fault and is recorded.
    pub record: Option<PathBuf>,
    /// Replay this working-set file (recorded on the same snapshot memory file): its pages
    /// are placed in the recorded order from the start, ahead of the guest's faults.
    pub replay: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            background_fill: false,
            handshake_timeout: Duration::from_secs(10),
            log_every: Some(Duration::from_secs(1)),
            record: None,
            replay: None,
        }
    }
}

/// Serves the guest memory described on `stream` (an accepted connection from Firecracker)
/// from `snapshot` until Firecracker exits or closes the connection; returns the server's
/// final statistics and outcome.
pub fn serve(stream: &UnixStream, snapshot: &File, options: &Options) -> Result<Finished, String> {
    let file_len = snapshot
        .metadata()
        .map_err(|e| format!("reading the snapshot file's size: {e}"))?
        .len();
    let handshake = protocol::receive(stream, file_len, options.handshake_timeout)
        .map_err(|e| e.to_string())?;
    // SAFETY: the snapshot file is Firecracker's memory file, written once when the snapshot
    // was taken and only read since (the contract of a snapshot restore: a restore from a file
    // being rewritten would serve a mix of two snapshots whatever the source).
    let source = Arc::new(
        unsafe { MappedFile::new(snapshot) }.map_err(|e| format!("mapping the snapshot: {e}"))?,
    );
    let mut builder = Server::builder();
    builder
        .workers(options.workers)
        .background_fill(options.background_fill)
        // Fail closed: a page that cannot be served raises SIGBUS in the vCPU rather than
        // letting the guest run on a zero page.
        .error_policy(ErrorPolicy::FailClosed);
    if let Some(pid) = peer_pid(stream) {
        builder.peer_process(pid);
    }
    if options.record.is_some() {
        builder.record(true).fault_around(0);
    }
    if let Some(path) = &options.replay {
        let working_set = WorkingSet::load(path)
            .map_err(|e| format!("loading the working set {}: {e}", path.display()))?;
        builder.replay(working_set);
    }
    for r in &handshake.regions {
        builder.region(region(r));
    }
    // SAFETY: the regions are Firecracker's guest memory, registered by Firecracker with this
    // descriptor for this handler to fill; nothing in this process lives there.
    let server = unsafe { builder.start(handshake.uffd, source) }.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    while !server.is_stopped() && !hung_up(stream, Duration::from_millis(100)) {
        if let Some(every) = options.log_every {
            if last_log.elapsed() >= every {
                println!("{}", stats_line(started.elapsed(), &server.stats()));
                last_log = Instant::now();
            }
        }
    }
    let finished = server.stop();
    if options.log_every.is_some() {
        println!("{}", stats_line(started.elapsed(), &finished.stats));
    }
    if let (Some(path), Some(working_set)) = (&options.record, &finished.working_set) {
        working_set
            .save(path)
            .map_err(|e| format!("saving the working set {}: {e}", path.display()))?;
        if options.log_every.is_some() {
            println!("recorded {} pages to {}", working_set.len(), path.display());
        }
    }
    Ok(finished)
}

/// The server's region for one of Firecracker's.
fn region(r: &GuestRegion) -> Region {
    Region::new(
        r.base_host_virt_addr as usize as *mut libc::c_void,
        r.size as usize,
    )
    .offset(r.offset)
    .page_size(r.page_size as usize)
}

/// The connected peer's process id (`SO_PEERCRED`), so that the server stops when it exits.
fn peer_pid(stream: &UnixStream) -> Option<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// Whether Firecracker closed its end of the connection (waits up to `wait`).
fn hung_up(stream: &UnixStream, wait: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pollfd, 1, wait.as_millis() as libc::c_int) };
    if n <= 0 {
        return false;
    }
    if pollfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
        return true;
    }
    // Readable: data (ignored) or end of file.
    let mut byte = [0u8; 64];
    // SAFETY: `byte` is writable for its length.
    let r = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            byte.len(),
            libc::MSG_DONTWAIT,
        )
    };
    r == 0 || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
}

/// One line of statistics.
pub fn stats_line(elapsed: Duration, s: &Stats) -> String {
    let q = |q: f64| {
        s.latency_quantile(q)
            .map_or("-".to_string(), |d| format!("{d:?}"))
    };
    format!(
        "{:>7.1}s faults {} | pages copied {} zeroed {} continued {} | fault-around {} \
         background {} replayed {} | removed {} | eexist {} eagain {} | latency p50 {} p99 {}",
        elapsed.as_secs_f64(),
        s.faults,
        s.pages_copied,
        s.pages_zeroed,
        s.pages_continued,
        s.fault_around_pages,
        s.background_pages,
        s.replay_pages,
        s.removed_pages,
        s.eexist,
        s.eagain_retries,
        q(0.5),
        q(0.99),
    )
}

/// Whether the server ended as it should (Firecracker went away, or it was stopped).
pub fn ended_cleanly(finished: &Finished) -> bool {
    matches!(finished.outcome, Ok(Exit::Stopped | Exit::ProcessExited))
}
