//! A guest's memory faulted in through `uffd-handler` against the same through a
//! reimplementation of Firecracker's own example handler (`src/firecracker/examples/uffd/
//! on_demand_handler.rs` and `uffd_utils.rs`), each a separate process on the same driver,
//! side by side in one run.
//!
//! Run: `cargo bench -p uffd-handler --bench firecracker`. `FC_BENCH_MIB` sets the guest
//! size (default 1024), `FC_BENCH_REPS` the repetitions (default 5; medians are shown).
//!
//! The driver (this process) plays Firecracker 1.12+: it creates the userfaultfd
//! (`EVENT_REMOVE`, non-blocking, close-on-exec), registers a fresh anonymous guest region,
//! connects to the handler's socket and sends the region list with the descriptor. It then
//! touches the first page (untimed: the handler has received the descriptor and is ready
//! once that is served) and times one thread reading one byte of every other 4 KiB page in
//! order, as a booting guest's first sweep does, then checks pages against the memory file.
//! The memory file is dense, on tmpfs (`/dev/shm`). The handlers' order rotates between
//! repetitions. With nginx installed (Debian nginx-light; userfaultfd-objstore's test support
//! starts it on 127.0.0.1), `uffd-handler` also serves the same file from its `http://` URL:
//! the object path's cost over loopback, with no network in the way.
//!
//! What Firecracker's example handler does, reproduced step by step: after `accept`, map
//! the memory file `MAP_PRIVATE | MAP_POPULATE`; `poll` the socket and the userfaultfds
//! (no timeout); on the socket, `recv_with_fd` into a 1024-byte buffer, `serde_json` the
//! region list, adopt the descriptor; on a userfaultfd, read every pending event into a
//! `Vec`, then for each page fault align the address down to the page size, find its region
//! by a linear search, and `UFFDIO_COPY` one page from the mapping with wake (a zero-length
//! `EAGAIN` defers the event to the next round, `EEXIST` is success); a `REMOVE` unregisters
//! the range. It never exits by itself (this driver kills it).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

#[path = "../../objstore/tests/support/mod.rs"]
mod objstore_support;
use userfaultfd::{Error, Event, FeatureFlags, Uffd, UffdBuilder};

const PAGE: usize = 4096;

/// The whole number in environment variable `name`, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

/// The median of `v`.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn map(len: usize, prot: libc::c_int, flags: libc::c_int, fd: RawFd) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    ptr.cast()
}

// ---- Firecracker's example handler, reimplemented (runs as `<bench> fc-example SOCKET FILE`).

/// The region as Firecracker's example declares it.
#[derive(Debug, Deserialize)]
struct GuestRegionUffdMapping {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    page_size: usize,
}

impl GuestRegionUffdMapping {
    fn contains(&self, fault_page_addr: u64) -> bool {
        fault_page_addr >= self.base_host_virt_addr
            && fault_page_addr < self.base_host_virt_addr + self.size as u64
    }
}

struct UffdHandler {
    mem_regions: Vec<GuestRegionUffdMapping>,
    page_size: usize,
    backing_buffer: *const u8,
    uffd: Uffd,
}

impl UffdHandler {
    fn serve_pf(&self, addr: *mut u8, len: usize) -> bool {
        let dst = (addr as usize & !(self.page_size - 1)) as u64;
        for region in self.mem_regions.iter() {
            if region.contains(dst) {
                let src =
                    self.backing_buffer as u64 + region.offset + (dst - region.base_host_virt_addr);
                // SAFETY: `dst` is in a region Firecracker registered for this handler; `src`
                // is inside the memory file's mapping.
                match unsafe { self.uffd.copy(src as *const _, dst as *mut _, len, true) } {
                    Ok(n) => assert!(n > 0),
                    Err(Error::PartiallyCopied(n)) if n == 0 || n == (-libc::EAGAIN) as usize => {
                        return false
                    }
                    Err(e) if e.errno() == Some(userfaultfd::Errno::EEXIST) => {}
                    Err(e) => panic!("Uffd copy failed: {e:?}"),
                }
                return true;
            }
        }
        panic!("Could not find addr: {addr:?} within guest region mappings.");
    }
}

/// `recv_with_fd` into a 1024-byte buffer, as vmm-sys-util's does.
fn recv_with_fd(stream: &UnixStream) -> (String, Option<RawFd>) {
    let mut buf = vec![0u8; 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at live, writable buffers.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    // SAFETY: the control buffer was filled by recvmsg.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS)
            .then(|| libc::CMSG_DATA(cmsg).cast::<RawFd>().read_unaligned())
    };
    (String::from_utf8(buf).unwrap(), fd)
}

fn firecracker_example(socket: &Path, memory: &Path) {
    let file = File::open(memory).expect("Cannot open memfile");
    let listener = UnixListener::bind(socket).expect("Cannot bind to socket path");
    let (stream, _) = listener.accept().expect("Cannot listen on UDS socket");
    let size = file.metadata().unwrap().len() as usize;
    let backing = map(
        size,
        libc::PROT_READ,
        libc::MAP_PRIVATE | libc::MAP_POPULATE,
        file.as_raw_fd(),
    ) as *const u8;
    let mut handlers: Vec<UffdHandler> = Vec::new();
    let mut pollfds = vec![libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        // SAFETY: `pollfds` is a live array of that many pollfds.
        let mut nready =
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        assert!(nready != -1, "Could not poll for events!");
        for i in 0..pollfds.len() {
            if nready == 0 {
                break;
            }
            if pollfds[i].revents & libc::POLLIN != 0 {
                nready -= 1;
                if pollfds[i].fd == stream.as_raw_fd() {
                    let (body, fd) = recv_with_fd(&stream);
                    let mappings: Vec<GuestRegionUffdMapping> =
                        serde_json::from_str(&body).expect("Cannot deserialize memory mappings");
                    let page_size = mappings[0].page_size;
                    // SAFETY: the descriptor Firecracker sent with the list: its userfaultfd.
                    let uffd = unsafe { Uffd::from_raw_fd(fd.expect("no uffd").into_raw_fd()) };
                    pollfds.push(libc::pollfd {
                        fd: uffd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    handlers.push(UffdHandler {
                        mem_regions: mappings,
                        page_size,
                        backing_buffer: backing,
                        uffd,
                    });
                } else {
                    let fd = pollfds[i].fd;
                    let h = handlers.iter().find(|h| h.uffd.as_raw_fd() == fd).unwrap();
                    let mut deferred = Vec::new();
                    loop {
                        let mut events: Vec<Event> = std::mem::take(&mut deferred);
                        while let Some(event) =
                            h.uffd.read_event().expect("Failed to read uffd_msg")
                        {
                            events.push(event);
                        }
                        for event in events.drain(..) {
                            match event {
                                Event::Pagefault { addr, .. } => {
                                    if !h.serve_pf(addr.cast(), h.page_size) {
                                        deferred.push(event);
                                    }
                                }
                                Event::Remove { start, end } => {
                                    let len = end as usize - start as usize;
                                    h.uffd
                                        .unregister(start, len)
                                        .expect("range should be valid");
                                }
                                _ => panic!("Unexpected event on userfaultfd"),
                            }
                        }
                        if deferred.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        pollfds.retain(|p| p.revents & (libc::POLLRDHUP | libc::POLLHUP) == 0);
    }
}

// ---- The driver: Firecracker's side.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handler {
    FirecrackerExample,
    Ours,
    OursOnePage,
    OursFromNginx,
}

impl Handler {
    fn start(self, socket: &Path, memory: &std::ffi::OsStr) -> Child {
        let mut cmd = match self {
            Handler::FirecrackerExample => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.arg("fc-example");
                c
            }
            Handler::Ours => Command::new(env!("CARGO_BIN_EXE_uffd-handler")),
            Handler::OursOnePage => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_uffd-handler"));
                c.args(["--fault-around", "0"]);
                c
            }
            Handler::OursFromNginx => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_uffd-handler"));
                c.args(["--progress", "0"]);
                c
            }
        };
        let child = cmd
            .arg(socket)
            .arg(memory)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the handler");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{self:?} never listened"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }
}

/// Sends `json` with `fd` attached, as Firecracker does.
fn send_with_fd(stream: &UnixStream, json: &[u8], fd: RawFd) {
    let mut iov = libc::iovec {
        iov_base: json.as_ptr() as *mut _,
        iov_len: json.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
    // SAFETY: the control buffer holds one cmsg of CMSG_SPACE(4) bytes; `msg` points at live
    // buffers.
    let n = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        libc::sendmsg(stream.as_raw_fd(), &msg, 0)
    };
    assert_eq!(n as usize, json.len());
}

/// One restore through `handler`: the time of the sweep.
fn restore(
    handler: Handler,
    len: usize,
    memory: &std::ffi::OsStr,
    snapshot: *const u8,
) -> Duration {
    let socket = std::env::temp_dir().join(format!("uffd-fc-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut child = handler.start(&socket, memory);
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .expect("creating the userfaultfd as Firecracker does (run as root)");
    let addr = map(
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
    );
    uffd.register(addr.cast(), len).unwrap();
    let stream = UnixStream::connect(&socket).unwrap();
    let json = format!(
        "[{{\"base_host_virt_addr\":{},\"size\":{len},\"offset\":0,\"page_size\":{PAGE},\"page_size_kib\":{PAGE}}}]",
        addr as usize
    );
    send_with_fd(&stream, json.as_bytes(), uffd.as_raw_fd());
    // SAFETY: inside the guest mapping; served by the handler once it is ready.
    std::hint::black_box(unsafe { addr.read_volatile() });
    let started = Instant::now();
    let mut sum = 0u64;
    for off in (PAGE..len).step_by(PAGE) {
        // SAFETY: inside the guest mapping; a volatile read of plain memory.
        sum += u64::from(unsafe { addr.add(off).read_volatile() });
    }
    let elapsed = started.elapsed();
    std::hint::black_box(sum);
    for off in (0..len).step_by(len / 64).chain([len - 1]) {
        // SAFETY: inside both mappings, populated.
        assert_eq!(unsafe { *addr.add(off) }, unsafe { *snapshot.add(off) });
    }
    match handler {
        Handler::FirecrackerExample => {
            let _ = child.kill();
            let _ = child.wait();
        }
        _ => {
            // SAFETY: kill has no memory effects; our child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "uffd-handler: {status}");
        }
    }
    drop(stream);
    drop(uffd);
    let _ = std::fs::remove_file(&socket);
    // SAFETY: our guest mapping, no longer used.
    unsafe { libc::munmap(addr.cast(), len) };
    elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("fc-example") {
        firecracker_example(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let len = env_or("FC_BENCH_MIB", 1024) << 20;
    let reps = env_or("FC_BENCH_REPS", 5).max(1);
    let path = PathBuf::from(format!("/dev/shm/uffd-fc-bench-{}", std::process::id()));
    {
        let mut file = File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..len >> 20 {
            file.write_all(&chunk).unwrap();
        }
    }
    let file = File::open(&path).unwrap();
    let snapshot = map(len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd()) as *const u8;
    // The same file behind nginx (a symbolic link in the directory it serves).
    let nginx = objstore_support::nginx::Nginx::start();
    if let Some(n) = &nginx {
        std::os::unix::fs::symlink(&path, n.www().join("mem")).unwrap();
    }
    let url = nginx.as_ref().map(|n| n.url("mem"));
    let mut handlers = vec![
        Handler::FirecrackerExample,
        Handler::Ours,
        Handler::OursOnePage,
    ];
    if url.is_some() {
        handlers.push(Handler::OursFromNginx);
    }
    let memory_of = |h: Handler| match h {
        Handler::OursFromNginx => std::ffi::OsString::from(url.as_ref().unwrap()),
        _ => path.clone().into_os_string(),
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    for rep in 0..reps {
        for k in 0..handlers.len() {
            let i = (k + rep) % handlers.len();
            times[i].push(restore(handlers[i], len, &memory_of(handlers[i]), snapshot));
        }
    }
    let _ = std::fs::remove_file(&path);
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    println!(
        "Fault in all of a {} MiB guest, one thread reading every page in order, each handler \
         a process ({} runs, medians):",
        len >> 20,
        reps
    );
    println!("| handler | time | |");
    println!("|---|---|---|");
    let names = [
        "Firecracker's example handler (its per-fault steps, reimplemented)",
        "`uffd-handler` (defaults: 256 KiB fault-around)",
        "`uffd-handler --fault-around 0` (one page per fault)",
        "`uffd-handler http://127.0.0.1/...` (defaults: nginx on loopback, 4 MiB chunks, 4 in flight)",
    ];
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "| {name} | {m:.2?} | {:.2}x |",
            medians[0].as_secs_f64() / m.as_secs_f64()
        );
    }
}
