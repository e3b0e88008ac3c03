//! `PageSource::unreadable`: a source whose bytes the kernel cannot read (a mapped file cut
//! short: its `UFFDIO_COPY` fails with `EFAULT`) switches to other memory and is asked again;
//! the restore completes with every byte right. (Without the switch the `EFAULT` is fatal:
//! `serve.rs`, `a_truncated_mapped_file_is_an_efault_not_a_crash`.) An `EFAULT` that is the
//! destination's (its file cut short) is not the source's to answer.

mod support;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::serve::{mismatches, serve_uffd, snapshot, Gate, TestSource};
use support::{join_timeout, spawn_named, wait_until, MemoryType, Region};
use userfaultfd::serve::{Chunk, MappedFile, PageSource, Region as Served, Server};
use userfaultfd::RegisterMode;

/// Answers from a mapping of a file until told it is unreadable, then from memory.
struct FallingBack {
    mapped: MappedFile,
    memory: Vec<u8>,
    switched: AtomicBool,
    /// The ranges `unreadable` was told of.
    told: Mutex<Vec<(u64, usize)>>,
}

impl PageSource for FallingBack {
    fn len(&self) -> u64 {
        self.memory.len() as u64
    }

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> std::io::Result<Chunk<'a>> {
        if self.switched.load(Ordering::Acquire) {
            let at = offset as usize;
            Ok(Chunk::Data(&self.memory[at..at + len]))
        } else {
            self.mapped.fetch(offset, len, scratch)
        }
    }

    fn unreadable(&self, offset: u64, len: usize) -> bool {
        self.told.lock().unwrap().push((offset, len));
        self.switched.store(true, Ordering::Release);
        true
    }
}

/// A memfd holding `bytes` (written, so that no page of it is a hole).
fn memfd_with(bytes: &[u8]) -> File {
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"unreadable-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just created and owned by nobody else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).unwrap();
    file
}

/// The file is cut to half its length under the running server. One fault-around block
/// covers the whole region: its copy places the first half from the mapping, stops with
/// `EFAULT` at the cut, and the source is told of the range from there; the server asks
/// again and places the rest from memory. Every memory type; a fault with one worker, and the
/// background fill with three (its placements are made by another thread, which hands the
/// restart back).
#[test]
fn unreadable_source_bytes_are_asked_for_again() {
    for memory in MemoryType::ALL {
        for fill in [false, true] {
            asked_again(memory, fill);
        }
    }
}

fn asked_again(memory: MemoryType, fill: bool) {
    let Some(region) = Region::new(memory, 8) else {
        return;
    };
    let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
        return;
    };
    let what = format!("{memory:?}, background fill {fill}");
    let (ps, pages) = (region.page_size(), region.pages());
    let expected = snapshot(pages, ps);
    let file = memfd_with(&expected);
    let source = Arc::new(FallingBack {
        // SAFETY: the test breaks the contract on purpose (it cuts the file below); nothing
        // reads the mapping from Rust: only the server's `UFFDIO_COPY` does.
        mapped: unsafe { MappedFile::new(&file) }.unwrap(),
        memory: expected.clone(),
        switched: AtomicBool::new(false),
        told: Mutex::new(Vec::new()),
    });
    let cut = (pages / 2 * ps) as u64;
    file.set_len(cut).unwrap();
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(if fill { 3 } else { 1 })
            .background_fill(fill)
            .fault_around(region.len())
            .region(Served::new(region.addr(), region.len()).page_size(ps))
            .start(uffd, source.clone())
    }
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    if fill {
        // Nothing touched: the fill places every page.
        wait_until(
            || {
                assert!(!server.is_stopped(), "{what}: {:?}", server.stats());
                server.stats().background_pages >= pages as u64
            },
            "the background fill",
        );
    }
    let region = Arc::new(region);
    let (r, e) = (Arc::clone(&region), expected.clone());
    let reader = spawn_named("reader", move || mismatches(&r, &e, 0..pages));
    // (Without the switch the server stops with the EFAULT and the reader stays blocked.)
    let wrong = join_timeout(reader);
    let finished = server.stop();
    assert!(finished.outcome.is_ok(), "{what}: {:?}", finished.outcome);
    assert_eq!(wrong, Vec::<usize>::new(), "{what}");
    let told = source.told.lock().unwrap().clone();
    assert!(!told.is_empty(), "{what}: the source was never told");
    for &(offset, len) in &told {
        // Whatever the kernel read before the cut was placed, never reported again.
        assert!(
            offset >= cut,
            "{what}: told of {offset} before the cut {cut}"
        );
        assert!(
            offset + len as u64 <= expected.len() as u64,
            "{what}: {told:?}"
        );
        assert_eq!(offset % ps as u64, 0, "{what}: {told:?}");
    }
    let s = finished.stats;
    assert_eq!(s.pages_copied as usize, pages, "{what}: {s:?}");
}

/// The process cuts the file behind the served memory (shmem, hugetlbfs) to one page while
/// the fetch of a two-page block is held: the copy places page 0 (its faulting thread is
/// woken and reads it), then fails with `EFAULT` at page 1 for the destination's sake (beyond
/// the end of its file). The server checks that the source's bytes are readable, so it does
/// not ask the source (whose `unreadable` answers `true`: asking would loop for ever) and
/// stops with the error. Anonymous memory has no file to cut.
#[test]
fn a_destination_cut_short_is_not_the_sources_to_answer() {
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        let Some(region) = Region::new(memory, 2) else {
            continue;
        };
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = snapshot(pages, ps);
        let gate = Arc::new(Gate::default());
        let mut source = TestSource::new(expected.clone(), ps);
        source.gate = Some(gate.clone());
        let source = Arc::new(source);
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(2 * ps)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, source.clone())
        }
        .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
        let region = Arc::new(region);
        let r = Arc::clone(&region);
        let reader = spawn_named("reader", move || r.read_page(0));
        gate.wait_entered();
        let fd = region.file().expect("a file behind shared memory");
        // SAFETY: ftruncate only sizes the test's own memfd.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), ps as libc::off_t) };
        assert_eq!(rc, 0, "{memory:?}: {}", std::io::Error::last_os_error());
        gate.open();
        assert_eq!(join_timeout(reader), &expected[..ps], "{memory:?}: page 0");
        assert!(
            server.wait_stopped(support::TIMEOUT),
            "{memory:?}: the server neither stopped nor placed page 1"
        );
        let finished = server.stop();
        let shown = finished.outcome.expect_err("a fatal error").to_string();
        assert!(shown.contains("EFAULT"), "{memory:?}: {shown}");
        assert_eq!(source.unreadable.load(Ordering::Relaxed), 0, "{memory:?}");
    }
}
