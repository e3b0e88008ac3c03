//! Fault in all of a guest's memory through the Firecracker handler (examples/
//! firecracker_handler, on the page server) against the approach of Firecracker's own example
//! on-demand handler (one page copied per fault), side by side in one run.
//!
//! Run: `cargo bench --bench firecracker`. `FC_BENCH_MIB` sets the guest size (default 1024),
//! `FC_BENCH_REPS` the repetitions (default 5; medians are shown). Each repetition creates the
//! userfaultfd and registers a fresh anonymous guest region as Firecracker does, hands it to
//! the handler over a Unix socket (ours) or to the one-page loop (a thread), then times one
//! thread reading one byte of every 4 KiB page in order, as a booting guest's first sweep
//! does. The snapshot is a dense file on tmpfs (`/dev/shm`). The order of the two handlers
//! alternates between repetitions.

#[path = "../examples/firecracker_handler/handler.rs"]
#[allow(dead_code)]
mod handler;
#[path = "../examples/firecracker_handler/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "../examples/firecracker_handler/protocol.rs"]
#[allow(dead_code)]
mod protocol;

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{env_or, median};
use userfaultfd::{Event, FeatureFlags, Uffd, UffdBuilder};

const PAGE: usize = 4096;

fn map(len: usize, prot: libc::c_int, flags: libc::c_int, fd: RawFd) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    ptr.cast()
}

/// The userfaultfd as Firecracker creates it, with a fresh guest region registered.
fn guest(len: usize) -> (Uffd, *mut u8) {
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
    (uffd, addr)
}

/// Reads one byte of every page; returns the elapsed time (and checks two bytes).
fn sweep(addr: *mut u8, len: usize, snapshot: *const u8) -> Duration {
    let started = Instant::now();
    let mut sum = 0u64;
    for off in (0..len).step_by(PAGE) {
        // SAFETY: inside the guest mapping; a volatile read of plain memory.
        sum += u64::from(unsafe { addr.add(off).read_volatile() });
    }
    let elapsed = started.elapsed();
    std::hint::black_box(sum);
    for off in [0, len - 1] {
        // SAFETY: inside both mappings.
        assert_eq!(unsafe { *addr.add(off) }, unsafe { *snapshot.add(off) });
    }
    elapsed
}

/// Firecracker's example handler's approach: one page copied from the snapshot per fault.
fn one_page(len: usize, snapshot: *const u8) -> Duration {
    let (uffd, addr) = guest(len);
    let stop = Arc::new(AtomicBool::new(false));
    let (base, snap) = (addr as usize, snapshot as usize);
    let handler = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut removed = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let mut pollfd = libc::pollfd {
                    fd: uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pollfd, 1, 10) };
                while let Some(event) = uffd.read_event().unwrap() {
                    match event {
                        Event::Pagefault { addr, .. } => {
                            let page = addr as usize & !(PAGE - 1);
                            let src = snap + (page - base);
                            let r = if removed.contains(&page) {
                                // SAFETY: the guest region holds no Rust object.
                                unsafe { uffd.zeropage(page as *mut _, PAGE, true) }
                            } else {
                                // SAFETY: as above; `src` is inside the snapshot mapping.
                                unsafe { uffd.copy(src as *const _, page as *mut _, PAGE, true) }
                            };
                            match r {
                                Ok(_) => {}
                                Err(e) if e.errno() == Some(userfaultfd::Errno::EEXIST) => {
                                    uffd.wake(page as *mut _, PAGE).unwrap()
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        Event::Remove { start, end } => {
                            removed.extend((start as usize..end as usize).step_by(PAGE))
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        })
    };
    let elapsed = sweep(addr, len, snapshot);
    stop.store(true, Ordering::Relaxed);
    handler.join().unwrap();
    // SAFETY: our guest mapping, no longer used.
    unsafe { libc::munmap(addr.cast(), len) };
    elapsed
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

/// Our handler: the region list and the descriptor over a socket, then the sweep.
fn ours(len: usize, snapshot_file: &File, snapshot: *const u8) -> Duration {
    let (uffd, addr) = guest(len);
    let (firecracker, handler_end) = UnixStream::pair().unwrap();
    let file = snapshot_file.try_clone().unwrap();
    let handler = thread::spawn(move || {
        let options = handler::Options {
            log_every: None,
            ..handler::Options::default()
        };
        handler::serve(&handler_end, &file, &options)
    });
    let json = format!(
        "[{{\"base_host_virt_addr\":{},\"size\":{len},\"offset\":0,\"page_size\":{PAGE}}}]",
        addr as usize
    );
    send_with_fd(&firecracker, json.as_bytes(), uffd.as_raw_fd());
    let elapsed = sweep(addr, len, snapshot);
    drop(firecracker);
    let finished = handler.join().unwrap().expect("the handler served");
    assert!(handler::ended_cleanly(&finished), "{:?}", finished.outcome);
    drop(uffd);
    // SAFETY: our guest mapping, no longer used.
    unsafe { libc::munmap(addr.cast(), len) };
    elapsed
}

fn main() {
    let len = env_or("FC_BENCH_MIB", 1024) << 20;
    let reps = env_or("FC_BENCH_REPS", 5).max(1);
    let path = format!("/dev/shm/uffd-fc-bench-{}", std::process::id());
    {
        let mut file = File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..len >> 20 {
            file.write_all(&chunk).unwrap();
        }
    }
    let file = File::open(&path).unwrap();
    let snapshot = map(len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd()) as *const u8;
    let (mut theirs, mut our) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        if rep % 2 == 0 {
            theirs.push(one_page(len, snapshot));
            our.push(ours(len, &file, snapshot));
        } else {
            our.push(ours(len, &file, snapshot));
            theirs.push(one_page(len, snapshot));
        }
    }
    let _ = std::fs::remove_file(&path);
    let (t, o) = (median(theirs), median(our));
    println!(
        "Fault in all of a {} MiB guest, one thread reading every page in order ({} runs, medians):",
        len >> 20,
        reps
    );
    println!("| handler | time | |");
    println!("|---|---|---|");
    println!("| one page per fault (Firecracker's example handler's approach) | {t:.2?} | 1.00x |");
    println!(
        "| examples/firecracker_handler (page server, defaults) | {o:.2?} | {:.2}x faster |",
        t.as_secs_f64() / o.as_secs_f64()
    );
}
