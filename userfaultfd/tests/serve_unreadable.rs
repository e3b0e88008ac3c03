//! `PageSource::unreadable`: a source whose bytes the kernel cannot read (a mapped file cut
//! short: its `UFFDIO_COPY` fails with `EFAULT`) switches to other memory and is asked again;
//! the restore completes with every byte right. (Without the switch the `EFAULT` is fatal:
//! `serve.rs`, `a_truncated_mapped_file_is_an_efault_not_a_crash`.)

mod support;

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::serve::{mismatches, serve_uffd, snapshot};
use support::{join_timeout, spawn_named, MemoryType, Region};
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
/// again and places the rest from memory. Every memory type.
#[test]
fn unreadable_source_bytes_are_asked_for_again() {
    for memory in MemoryType::ALL {
        let Some(region) = Region::new(memory, 8) else {
            continue;
        };
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let (ps, pages) = (region.page_size(), region.pages());
        let expected = snapshot(pages, ps);
        let file = memfd_with(&expected);
        let source = Arc::new(FallingBack {
            // SAFETY: the test breaks the contract on purpose (it cuts the file below);
            // nothing reads the mapping from Rust: only the server's `UFFDIO_COPY` does.
            mapped: unsafe { MappedFile::new(&file) }.unwrap(),
            memory: expected.clone(),
            switched: AtomicBool::new(false),
            told: Mutex::new(Vec::new()),
        });
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(region.len())
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, source.clone())
        }
        .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
        let cut = (pages / 2 * ps) as u64;
        file.set_len(cut).unwrap();
        let region = Arc::new(region);
        let (r, e) = (Arc::clone(&region), expected.clone());
        let reader = spawn_named("reader", move || mismatches(&r, &e, 0..pages));
        // (Without the switch the server stops with the EFAULT and the reader stays blocked.)
        let wrong = join_timeout(reader);
        let finished = server.stop();
        assert!(
            finished.outcome.is_ok(),
            "{memory:?}: {:?}",
            finished.outcome
        );
        assert_eq!(wrong, Vec::<usize>::new(), "{memory:?}");
        let told = source.told.lock().unwrap().clone();
        assert!(!told.is_empty(), "{memory:?}: the source was never told");
        for &(offset, len) in &told {
            // Whatever the kernel read before the cut was placed, never reported again.
            assert!(
                offset >= cut,
                "{memory:?}: told of {offset} before the cut {cut}"
            );
            assert!(
                offset + len as u64 <= expected.len() as u64,
                "{memory:?}: {told:?}"
            );
            assert_eq!(offset % ps as u64, 0, "{memory:?}: {told:?}");
        }
        let s = finished.stats;
        assert_eq!(s.pages_copied as usize, pages, "{memory:?}: {s:?}");
    }
}
