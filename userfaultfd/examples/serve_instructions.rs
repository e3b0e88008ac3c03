//! The page server's user-space cost per fault, for `valgrind --tool=callgrind` (see
//! BENCHMARKS.md): serves `N` faults of one page each (`fault_around(0)`), raised by one
//! `MADV_POPULATE_READ` (faults inside the kernel: a thread faulting in user space would
//! deadlock on valgrind's lock), with the default single worker.
//!
//! `cargo run --release --example serve_instructions -- N [inline|dispatch]`: `inline`, a
//! source that never blocks (each worker reads and serves); `dispatch`, the same source
//! declared as possibly blocking (a reader thread hands the faults to the worker). Needs
//! root (`/dev/userfaultfd`, since valgrind does not know the `userfaultfd` system call, and
//! kernel-mode faults).

use std::io;
use std::sync::Arc;

use userfaultfd::serve::{Chunk, PageSource, Region, Server};
use userfaultfd::UffdBuilder;

const PAGE: usize = 4096;

/// The same page of ones at every offset.
struct OnePage {
    page: Vec<u8>,
    len: u64,
    never_blocks: bool,
}

impl PageSource for OnePage {
    fn len(&self) -> u64 {
        self.len
    }

    fn fetch<'a>(&'a self, _: u64, len: usize, _: &'a mut [u8]) -> io::Result<Chunk<'a>> {
        Ok(Chunk::Data(&self.page[..len.min(PAGE)]))
    }

    fn never_blocks(&self) -> bool {
        self.never_blocks
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).expect("N");
    let never_blocks = match args.next().as_deref() {
        None | Some("inline") => true,
        Some("dispatch") => false,
        Some(other) => panic!("mode {other:?}: inline or dispatch"),
    };
    let len = n * PAGE;
    // SAFETY: a new private anonymous mapping; nothing lives there.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    // SAFETY: advice on our own mapping (base pages: one fault per page).
    unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .user_mode_only(false)
        .require_features(userfaultfd::serve::EVENTS)
        .create()
        .expect("a userfaultfd (root: /dev/userfaultfd)");
    let source = Arc::new(OnePage {
        page: vec![1; PAGE],
        len: len as u64,
        never_blocks,
    });
    // SAFETY: the region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(0)
            .region(Region::new(addr, len))
            .start(uffd, source)
    }
    .expect("starting the server");
    let addr_n = addr as usize;
    std::thread::spawn(move || {
        // SAFETY: populates our own mapping; each page faults to the server.
        let r = unsafe { libc::madvise(addr_n as *mut _, len, libc::MADV_POPULATE_READ) };
        assert_eq!(r, 0, "MADV_POPULATE_READ: {}", io::Error::last_os_error());
    })
    .join()
    .unwrap();
    let finished = server.stop();
    println!("faults {}", finished.stats.faults);
}
