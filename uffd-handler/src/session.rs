//! One session: Firecracker's regions served from the memory file (or object) by the page
//! server, from the handshake until Firecracker's process exits (or a stop signal), then the
//! statistics.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::serve::{
    ErrorPolicy, Exit, MappedFile, PageSource, ReadFile, Region, Server, Stats, WorkingSet,
};
use userfaultfd::FeatureFlags;

use crate::cli::{self, Cli, Policy, SourceKind};
use crate::handshake::Handshake;
use crate::object::Object;
use crate::regions::{self, GuestRegion, PageSizeFields};
use crate::signals::{self, Signals, Woken};
use crate::{log, pagesize};

/// The guest memory's bytes, opened before the socket was made.
pub enum Memory {
    /// A local file.
    File(File),
    /// An object in storage.
    Object(Box<Object>),
}

/// How a session ended: the exit status.
pub type Status = u8;

/// The peer's process id (`SO_PEERCRED`): Firecracker's, whose exit ends the session.
pub fn peer_pid(stream: &UnixStream) -> Option<libc::pid_t> {
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

/// Gives every region its page size: as sent, or (releases that send none) the kernel page
/// size of Firecracker's mapping, or the base page size.
fn resolve_page_sizes(regions: &mut [GuestRegion], peer: Option<libc::pid_t>) -> &'static str {
    let mut how = "as sent";
    for r in regions.iter_mut().filter(|r| r.page_size.is_none()) {
        r.page_size = Some(
            match peer.and_then(|pid| pagesize::of_mapping(pid, r.addr)) {
                Some(ps) => {
                    how = "from Firecracker's mapping (/proc/PID/smaps)";
                    ps
                }
                None => {
                    how = "the base page size (Firecracker's smaps not readable)";
                    pagesize::base()
                }
            },
        );
    }
    how
}

/// Serves the session; returns the exit status.
pub fn serve(
    cli: &Cli,
    handshake: Handshake,
    stream: UnixStream,
    memory: Memory,
    replay: Option<WorkingSet>,
    signals: &Signals,
) -> Status {
    let Handshake { mut list, uffd } = handshake;
    let peer = peer_pid(&stream);
    let derived = resolve_page_sizes(&mut list.regions, peer);
    let memory_len = match &memory {
        Memory::File(file) => match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                log!("reading the memory file's size: {e}");
                return cli::EXIT_SETUP;
            }
        },
        Memory::Object(object) => object.source.len(),
    };
    if let Err(e) = regions::check(&list.regions, memory_len, pagesize::base()) {
        log!("refusing Firecracker's regions: {e}");
        return cli::EXIT_HANDSHAKE;
    }
    let mut object_source = None;
    let source: Arc<dyn PageSource> = match memory {
        Memory::File(file) => match file_source(cli.backend.unwrap_or(SourceKind::Mmap), file) {
            Ok(source) => source,
            Err(status) => return status,
        },
        Memory::Object(object) => match object_for(*object, &list.regions) {
            Ok(object) => {
                let source = object.source.clone();
                object_source = Some(object);
                source
            }
            Err(status) => return status,
        },
    };
    let features = uffd.features();
    // Before 1.12, Firecracker asks for EVENT_REMOVE only when the VM has a balloon, the only
    // thing that discards guest memory: without it nothing is discarded, so the descriptor
    // is served as it is (it cannot gain the feature).
    let discards = features.contains(FeatureFlags::EVENT_REMOVE);
    let mut builder = Server::builder();
    builder
        .workers(cli.workers().into())
        .background_fill(cli.background_fill)
        .place_arrived(cli.place_arrived)
        .no_discards(!discards)
        .error_policy(match cli.error_policy {
            Policy::FailClosed => ErrorPolicy::FailClosed,
            Policy::Stop => ErrorPolicy::Stop,
        });
    if let Some(pid) = peer {
        builder.peer_process(pid);
    }
    match (cli.fault_around, &cli.record) {
        (Some(bytes), _) => {
            builder.fault_around(bytes);
        }
        // One page per fault while recording: every page the guest touches is then a demand
        // fault, and recorded.
        (None, Some(_)) => {
            builder.fault_around(0);
        }
        (None, None) => {}
    }
    if cli.record.is_some() {
        builder.record(true);
    }
    if let Some(ws) = replay {
        builder.replay(ws);
    }
    // A record or replay of an object is tied to its length and ETag: the server would
    // otherwise sample 66 of its pages, fetching their chunks, to identify it.
    if let Some(object) = &object_source {
        match object.source.snapshot_id() {
            Some(id) => {
                builder.snapshot_id(id);
            }
            None if cli.record.is_some() || cli.replay.is_some() => log!(
                "the store sent no ETag: the working set's snapshot is identified by sampling \
                 66 of its pages (their chunks are fetched first)"
            ),
            None => {}
        }
    }
    for r in &list.regions {
        builder.region(
            Region::new(r.addr as usize as *mut libc::c_void, r.size as usize)
                .offset(r.offset)
                .page_size(r.page_size.expect("resolved") as usize),
        );
    }
    // SAFETY: the regions are Firecracker's guest memory, registered by Firecracker with this
    // descriptor for this handler to fill; nothing in this process lives there.
    let server = match unsafe { builder.start(uffd, source) } {
        Ok(server) => server,
        Err(e) => {
            log!("the page server refused Firecracker's regions: {e}");
            return cli::EXIT_HANDSHAKE;
        }
    };
    let backend = match &object_source {
        Some(object) => object.describe(),
        None => format!("{:?}", cli.backend.unwrap_or(SourceKind::Mmap)),
    };
    log_session(
        &list.regions,
        list.fields,
        derived,
        features,
        peer,
        cli,
        &backend,
    );
    let started = Instant::now();
    let mut progress = object_source
        .as_ref()
        .map(|o| Progress::new(&o.source, Object::progress_every(cli)));
    let stop_signal = wait_for_end(
        &server,
        &stream,
        signals,
        cli.stats_every,
        started,
        progress.as_mut(),
    );
    let finished = server.stop();
    log!("{}", stats_line(started.elapsed(), &finished.stats));
    if let Some(object) = &object_source {
        log!("{}", object.source.progress_line());
        if let Some(e) = object.source.cache_error() {
            log!("the disk cache was turned off: {e}");
        }
    }
    if let Some(e) = &finished.replay_error {
        log!("the replay stopped early: {e}");
    }
    let mut status = match (&finished.outcome, stop_signal) {
        (Ok(_), Some(signal)) => {
            log!("stopped by signal {signal}");
            cli::EXIT_OK
        }
        (Ok(Exit::ProcessExited), None) => {
            log!("Firecracker's process exited: done");
            cli::EXIT_OK
        }
        (Ok(Exit::Stopped), None) => cli::EXIT_OK,
        (Err(e), _) => {
            log!("serving failed: {e}");
            cli::EXIT_SERVE_FAILED
        }
    };
    if let (Some(path), Some(ws)) = (&cli.record, &finished.working_set) {
        match ws.save(path) {
            Ok(()) => log!("recorded {} pages to {}", ws.len(), path.display()),
            Err(e) => {
                log!("saving the working set {}: {e}", path.display());
                if status == cli::EXIT_OK {
                    status = cli::EXIT_SETUP;
                }
            }
        }
    }
    status
}

/// Waits until the server stops (Firecracker's process exited, or an error) or a stop signal
/// arrives (returned), printing statistics every `every` (if not zero). A socket Firecracker
/// closes right after the handshake (releases before 1.12 do) does not end the session: its
/// guest is still running.
fn wait_for_end(
    server: &Server,
    stream: &UnixStream,
    signals: &Signals,
    every: Duration,
    started: Instant,
    mut progress: Option<&mut Progress<'_>>,
) -> Option<i32> {
    let mut socket_open = true;
    let mut next_stats = (!every.is_zero()).then(|| Instant::now() + every);
    let tick = Duration::from_millis(100);
    loop {
        if server.is_stopped() {
            return None;
        }
        let fds: &[_] = if socket_open {
            &[stream.as_raw_fd()]
        } else {
            &[]
        };
        match signals::wait(fds, signals, Some(Instant::now() + tick)) {
            Woken::Signal(s) => return Some(s),
            Woken::Ready => {
                if socket_drained_or_closed(stream) {
                    socket_open = false;
                    log!("Firecracker closed the socket; serving until its process exits");
                }
            }
            Woken::Timeout => {}
        }
        if let Some(at) = next_stats {
            if Instant::now() >= at {
                log!("{}", stats_line(started.elapsed(), &server.stats()));
                next_stats = Some(at + every);
            }
        }
        if let Some(p) = progress.as_mut() {
            p.tick();
        }
    }
}

/// The object's progress line every period, until every byte has arrived (then once more,
/// saying so).
struct Progress<'a> {
    source: &'a userfaultfd_objstore::ObjectSource,
    every: Duration,
    next: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(source: &'a userfaultfd_objstore::ObjectSource, every: Duration) -> Progress<'a> {
        Progress {
            source,
            every,
            next: (!every.is_zero()).then(|| Instant::now() + every),
        }
    }

    fn tick(&mut self) {
        let Some(at) = self.next else { return };
        if Instant::now() < at {
            return;
        }
        if self.source.complete() {
            log!("{} | complete", self.source.progress_line());
            self.next = None;
        } else {
            log!("{}", self.source.progress_line());
            self.next = Some(at + self.every);
        }
    }
}

/// The page source over a local memory file.
fn file_source(kind: SourceKind, memory: File) -> Result<Arc<dyn PageSource>, Status> {
    match kind {
        // SAFETY: the memory file is the snapshot, which must not be truncated or rewritten
        // while a VM restores from it (the contract that `--backend` states): the mapping then
        // stays valid for as long as the source lives.
        SourceKind::Mmap => match unsafe { MappedFile::new(&memory) } {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => {
                log!("mapping the memory file: {e}");
                Err(cli::EXIT_SETUP)
            }
        },
        SourceKind::Pread => match ReadFile::new(memory) {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => {
                log!("opening the memory file for pread: {e}");
                Err(cli::EXIT_SETUP)
            }
        },
    }
}

/// The object, answering in the guest's page size (opened again if it was opened with
/// smaller pages). Answers are whole pages of one size, so guest memory in pages of several
/// sizes cannot be served from one object.
fn object_for(object: Object, regions: &[GuestRegion]) -> Result<Object, Status> {
    let page = regions[0].page_size.expect("resolved");
    if let Some(r) = regions.iter().find(|r| r.page_size != Some(page)) {
        log!(
            "refusing Firecracker's regions: pages of {page} and {} bytes, and an object is \
             served in pages of one size",
            r.page_size.expect("resolved")
        );
        return Err(cli::EXIT_HANDSHAKE);
    }
    if object.page_size == page {
        return Ok(object);
    }
    log!(
        "the guest's pages are of {page} bytes: opening the object again to answer in them \
         (it was opened in pages of {})",
        object.page_size
    );
    object.reopen(page).map_err(|e| {
        log!("opening the memory object again: {e}");
        cli::EXIT_SETUP
    })
}

/// Reads what is waiting on the socket (nothing is expected after the handshake: ignored);
/// whether the peer closed it.
fn socket_drained_or_closed(stream: &UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let r = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match r {
            0 => return true,
            n if n > 0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => false,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => true,
                };
            }
        }
    }
}

/// The session's line: Firecracker's process, the regions, the page size and how it was
/// known, the descriptor's features, what is served how.
fn log_session(
    regions: &[GuestRegion],
    fields: PageSizeFields,
    derived: &str,
    features: FeatureFlags,
    peer: Option<libc::pid_t>,
    cli: &Cli,
    backend: &str,
) {
    let total: u64 = regions.iter().map(|r| r.size).sum();
    let list: Vec<String> = regions
        .iter()
        .map(|r| format!("[{:#x}+{:#x} @ file {:#x}]", r.addr, r.size, r.offset))
        .collect();
    let page = regions[0].page_size.expect("resolved");
    let page_how = match fields {
        PageSizeFields::None => format!("{fields}: {derived}"),
        other => other.to_string(),
    };
    log!(
        "session: firecracker pid {} | {} regions, {}: {} | page size {page} ({page_how}) | \
         features {} (balloon discards {}) | backend {}, fault-around {}, workers {}, \
         background fill {}, place arrived {}, {}",
        peer.map_or("unknown".to_string(), |p| p.to_string()),
        regions.len(),
        human(total),
        list.join(" "),
        if features.is_empty() {
            "none".to_string()
        } else {
            format!("{features:?}")
        },
        if features.contains(FeatureFlags::EVENT_REMOVE) {
            "served as zeros"
        } else {
            "impossible: no EVENT_REMOVE, Firecracker before 1.12 without a balloon"
        },
        backend,
        match (cli.fault_around, &cli.record) {
            (Some(b), _) => format!("{b} bytes"),
            (None, Some(_)) => "one page (recording)".into(),
            (None, None) => "256K (default)".into(),
        },
        cli.workers(),
        if cli.background_fill { "on" } else { "off" },
        if cli.place_arrived { "on" } else { "off" },
        match (&cli.record, &cli.replay) {
            (Some(p), _) => format!("recording to {}", p.display()),
            (_, Some(p)) => format!("replaying {}", p.display()),
            _ => "no working set".into(),
        },
    );
}

/// One line of statistics.
pub fn stats_line(elapsed: Duration, s: &Stats) -> String {
    let q = |q: f64| {
        s.latency_quantile(q)
            .map_or("-".to_string(), |d| format!("{d:?}"))
    };
    format!(
        "stats: {:.1}s | faults {} | pages copied {} zeroed {} | fault-around {} background {} \
         replayed {} | removed {} | eexist {} eagain {} | copied {} | latency p50 {} p99 {}",
        elapsed.as_secs_f64(),
        s.faults,
        s.pages_copied,
        s.pages_zeroed,
        s.fault_around_pages,
        s.background_pages,
        s.replay_pages,
        s.removed_pages,
        s.eexist,
        s.eagain_retries,
        human(s.bytes_copied),
        q(0.5),
        q(0.99),
    )
}

/// `total` bytes in the largest binary unit that keeps it whole-ish (`640 KiB`, `1.5 GiB`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(0), "0 bytes");
        assert_eq!(human(640 << 10), "640 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(10 << 20), "10 MiB");
    }
}
