//! The page server: every memory type served by many faulting threads with every byte
//! checked, the MINOR + CONTINUE backend (shared and private mappings), the file sources
//! (sparse files: holes become zero pages), fault-around over present pages, background fill.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use support::serve::{mismatches, serve_uffd, snapshot, TestSource};
use support::{join_timeout, pattern, spawn_named, MemoryType, Region};
use userfaultfd::serve::{Backend, MappedFile, PageSource, ReadFile, Region as Served, Server};
use userfaultfd::RegisterMode;

/// Pages per region: enough for several fault-around blocks (4 of hugetlb's 2 MiB pages).
fn pages_for(memory: MemoryType) -> usize {
    match memory {
        MemoryType::Hugetlb => 4,
        _ => 1024,
    }
}

/// `threads` threads read every page of `region` (each in its own order), and return the
/// pages that did not hold `expected`.
fn touch_all(region: &Arc<Region>, expected: &Arc<Vec<u8>>, threads: usize) -> Vec<usize> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (region, expected) = (Arc::clone(region), Arc::clone(expected));
            spawn_named(&format!("toucher-{t}"), move || {
                let n = region.pages();
                // Thread t walks with stride 2t+1 (coprime with n when n is a power of two).
                let order = (0..n).map(move |k| (k * (2 * t + 1) + t * 37) % n);
                mismatches(&region, &expected, order)
            })
        })
        .collect();
    handles.into_iter().flat_map(join_timeout).collect()
}

#[test]
fn every_memory_type_many_threads_every_byte() {
    for memory in MemoryType::ALL {
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        let expected = Arc::new(snapshot(region.pages(), ps));
        let source = Arc::new(TestSource::new(expected.to_vec(), ps));
        for workers in [1, 3] {
            let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
                break;
            };
            // SAFETY: the test region holds no Rust object.
            let server = unsafe {
                Server::builder()
                    .workers(workers)
                    .region(Served::new(region.addr(), region.len()).page_size(ps))
                    .start(uffd, source.clone())
            }
            .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
            let bad = touch_all(&region, &expected, 4);
            let finished = server.stop();
            assert!(
                bad.is_empty(),
                "{memory:?}, {workers} workers: pages {bad:?} differ"
            );
            assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
            let s = finished.stats;
            eprintln!("{memory:?}, {workers} workers: {s:?}");
            if workers == 1 {
                // Every page was placed once, copied or zeroed (zero pages from the zeros).
                assert_eq!(
                    s.pages_copied + s.pages_zeroed,
                    region.pages() as u64,
                    "{s:?}"
                );
                assert!(s.pages_zeroed >= (region.pages() / 7) as u64, "{s:?}");
                // Threads faulting on one page at once each send a fault.
                assert!(
                    s.faults >= 1 && s.faults <= 4 * region.pages() as u64,
                    "{s:?}"
                );
                assert_eq!(s.latency.iter().sum::<u64>(), s.faults);
            }
            // Discard everything for the next round (closing the descriptor first, so that
            // no REMOVE event waits for a reader): the pages fault again.
            drop(finished.uffd);
            let advice = if memory == MemoryType::Anonymous {
                libc::MADV_DONTNEED
            } else {
                libc::MADV_REMOVE
            };
            // SAFETY: discards our own test mapping's pages.
            let r = unsafe { libc::madvise(region.addr(), region.len(), advice) };
            assert_eq!(r, 0);
        }
    }
}

/// A memfd whose page cache holds `expected`, mapped (shared or private) for minor faults.
fn continue_backend(memory: MemoryType, private: bool) {
    let Some(uffd) = serve_uffd(memory, RegisterMode::MINOR | RegisterMode::MISSING) else {
        return;
    };
    let Some(region) = Region::new(memory, pages_for(memory)) else {
        return;
    };
    let ps = region.page_size();
    let pages = region.pages();
    let expected = Arc::new(snapshot(pages, ps));
    // Load the snapshot into the page cache through another view, except the zero pages:
    // those are holes, which the server fills with zero pages.
    let view = region.second_view();
    for i in (0..pages).filter(|&i| !support::serve::zero_page(i)) {
        view.write_page(i, &expected[i * ps..(i + 1) * ps]);
    }
    let region = if private {
        // Map the file privately instead (the test's own mapping is shared).
        let fd = std::os::fd::AsRawFd::as_raw_fd(&region.file().unwrap());
        // SAFETY: a new private mapping of the memfd at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                region.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: replaces the shared view by the private one at the same address.
        unsafe {
            libc::mremap(
                p,
                region.len(),
                region.len(),
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                region.addr(),
            )
        };
        region
    } else {
        region
    };
    let region = Arc::new(region);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(2)
            .region(
                Served::new(region.addr(), region.len())
                    .page_size(ps)
                    .backend(Backend::Continue { private }),
            )
            .start(uffd, Arc::new(userfaultfd::serve::Zeros::new(0)))
    }
    .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
    let bad = touch_all(&region, &expected, 4);
    let finished = server.stop();
    assert!(
        bad.is_empty(),
        "{memory:?} private={private}: pages {bad:?} differ"
    );
    let s = finished.stats;
    eprintln!("{memory:?} private={private}: {s:?}");
    assert_eq!(s.pages_copied, 0, "{s:?}");
    assert_eq!(s.pages_continued + s.pages_zeroed, pages as u64, "{s:?}");
    assert!(s.pages_continued > 0 && s.pages_zeroed > 0, "{s:?}");
}

#[test]
fn continue_backend_shared_and_private() {
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        continue_backend(memory, false);
        continue_backend(memory, true);
    }
}

/// A sparse file: the snapshot's data pages written, its zero pages left as holes.
fn sparse_file(expected: &[u8], ps: usize) -> std::fs::File {
    let mut file = tempfile();
    file.set_len(expected.len() as u64).unwrap();
    for (i, page) in expected.chunks(ps).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.seek(SeekFrom::Start((i * ps) as u64)).unwrap();
            file.write_all(page).unwrap();
        }
    }
    file
}

/// Whether the file system reports the file's holes (`SEEK_HOLE` before its end); ramfs,
/// for one, reports none.
fn reports_holes(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on our own descriptor has no memory effects.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    hole >= 0 && (hole as u64) < file.metadata().unwrap().len()
}

/// A memfd (shmem, which reports holes; needs no writable directory, so it works for any
/// user).
fn tempfile() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"uffd-serve-snapshot".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor only we own.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

#[test]
fn file_sources_serve_holes_as_zero_pages() {
    let memory = MemoryType::Anonymous;
    let region = Arc::new(Region::new(memory, 512).unwrap());
    let ps = region.page_size();
    // Long runs of holes, so that whole fault-around blocks are holes too.
    let mut expected = snapshot(region.pages(), ps);
    expected[100 * ps..300 * ps].fill(0);
    let expected = Arc::new(expected);
    let file = sparse_file(&expected, ps);
    let sources: [(&str, Arc<dyn PageSource>); 2] = [
        ("MappedFile", Arc::new(MappedFile::new(&file).unwrap())),
        (
            "ReadFile",
            Arc::new(ReadFile::new(file.try_clone().unwrap()).unwrap()),
        ),
    ];
    for (name, source) in sources {
        let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .region(Served::new(region.addr(), region.len()))
                .start(uffd, source)
        }
        .unwrap();
        let bad = touch_all(&region, &expected, 2);
        let s = server.stop().stats;
        assert!(bad.is_empty(), "{name}: pages {bad:?} differ");
        eprintln!("{name}: {s:?}");
        if reports_holes(&file) {
            // The 200-page hole at least is mapped as zero pages, not copied.
            assert!(s.pages_zeroed >= 200, "{name}: {s:?}");
            let copied_at_most = ((region.pages() - 200) * ps) as u64;
            assert!(s.bytes_copied <= copied_at_most, "{name}: {s:?}");
        } else {
            eprintln!("the temporary directory's file system reports no holes: zeros copied");
        }
        // SAFETY: discards our own test mapping's pages for the next source.
        let r = unsafe { libc::madvise(region.addr(), region.len(), libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
    }
}

#[test]
fn fault_around_continues_after_present_pages() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let ps = region.page_size();
        let pages = region.pages();
        let expected = snapshot(pages, ps);
        // Pages the process wrote before serving starts: present, never overwritten.
        let own: Vec<usize> = [1, 2, pages - 1]
            .into_iter()
            .filter(|&p| p < pages)
            .collect();
        for &p in &own {
            region.write_page(p, &pattern(1000 + p, ps));
        }
        let mut want = expected.clone();
        for &p in &own {
            want[p * ps..(p + 1) * ps].copy_from_slice(&pattern(1000 + p, ps));
        }
        let region = Arc::new(region);
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(16 * ps)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(TestSource::new(expected, ps)))
        }
        .unwrap();
        let bad = mismatches(&region, &want, 0..pages);
        // A fault's block is finished after its thread is woken: wait until every page was
        // visited (placed, or found present) before stopping, which may cut a block short.
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        loop {
            let s = server.stats();
            if s.pages_copied + s.pages_zeroed + s.eexist >= pages as u64
                || std::time::Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let s = server.stop().stats;
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        eprintln!("{memory:?}: {s:?}");
        // The first block holds present pages: the copy stopped at them (EAGAIN with
        // progress, then EEXIST) and went on after them. Every other page was placed once.
        // (EEXIST also counts a thread that, woken by the first pages of a block, faults on
        // a page of that block before the rest of it is placed: a race, not a count.)
        assert!(s.eexist >= own.len() as u64, "{memory:?}: {s:?}");
        assert_eq!(
            s.pages_copied + s.pages_zeroed,
            (pages - own.len()) as u64,
            "{memory:?}: {s:?}"
        );
    }
}

/// The fill hands its placements to a worker (a source that never blocks: `Memory`) or to
/// the reader thread (one that may: the test source).
#[test]
fn background_fill_places_everything_without_faults() {
    for memory in MemoryType::ALL {
        for never_blocks in [true, false] {
            background_fill(memory, never_blocks);
        }
    }
}

fn background_fill(memory: MemoryType, never_blocks: bool) {
    {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            return;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            return;
        };
        let ps = region.page_size();
        let expected = snapshot(region.pages(), ps);
        let source: Arc<dyn PageSource> = if never_blocks {
            Arc::new(userfaultfd::serve::Memory::new(expected.clone()))
        } else {
            Arc::new(TestSource::new(expected.clone(), ps))
        };
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .background_fill(true)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, source)
        }
        .unwrap();
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        while server.stats().background_pages < region.pages() as u64 {
            assert!(std::time::Instant::now() < deadline, "{:?}", server.stats());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bad = mismatches(&region, &expected, 0..region.pages());
        let s = server.stop().stats;
        assert!(bad.is_empty(), "{memory:?}: pages {bad:?} differ");
        assert_eq!(
            s.faults, 0,
            "{memory:?}: everything was placed before the reads: {s:?}"
        );
    }
}

/// The classic hang: the faulting page is placed by someone else (here, a `COPY` with
/// `DONTWAKE` through another descriptor of the same userfaultfd) while the server is busy
/// with its fault; the server's own placement then finds it present (`EEXIST`) and must wake
/// the faulting thread, which would otherwise wait forever.
#[test]
fn eexist_on_the_faulting_page_ends_in_a_wake() {
    for memory in MemoryType::ALL {
        let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let other = uffd.try_clone().unwrap();
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        let region = Arc::new(region);
        let ps = region.page_size();
        let expected = snapshot(region.pages(), ps);
        let gate = Arc::new(support::serve::Gate::default());
        let mut source = TestSource::new(expected.clone(), ps);
        source.gate = Some(Arc::clone(&gate));
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(source))
        }
        .unwrap();
        let reader = {
            let region = Arc::clone(&region);
            spawn_named("faulting", move || region.read_page(0))
        };
        gate.wait_entered();
        let mine = pattern(4242, ps);
        // SAFETY: page 0 of the test region, which holds no Rust object.
        unsafe { other.copy(mine.as_ptr().cast(), region.addr(), ps, false) }.unwrap();
        drop(other); // an open copy would make the region's munmap wait for a reader
        gate.open();
        assert_eq!(join_timeout(reader), mine, "{memory:?}");
        let s = server.stop().stats;
        assert!(s.eexist >= 1, "{memory:?}: {s:?}");
    }
}

/// A slow (remote) source does not serialise the workers: three faults on three blocks are
/// fetched at once — each fetch waits until all three are in progress.
#[test]
fn slow_source_fetches_run_in_parallel() {
    use std::sync::{Condvar, Mutex};
    use userfaultfd::serve::Chunk;

    struct Rendezvous {
        inner: TestSource,
        waiting: Mutex<usize>,
        cv: Condvar,
    }
    impl PageSource for Rendezvous {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn fetch<'a>(
            &'a self,
            offset: u64,
            len: usize,
            scratch: &'a mut [u8],
        ) -> std::io::Result<Chunk<'a>> {
            let mut n = self.waiting.lock().unwrap();
            *n += 1;
            self.cv.notify_all();
            let (n, timeout) = self
                .cv
                .wait_timeout_while(n, support::TIMEOUT, |n| *n < 3)
                .unwrap();
            drop(n);
            if timeout.timed_out() {
                return Err(std::io::Error::other("fetches were serialised"));
            }
            self.inner.fetch(offset, len, scratch)
        }
    }

    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 192).unwrap());
    let ps = region.page_size();
    let expected = Arc::new(snapshot(192, ps));
    let source = Rendezvous {
        inner: TestSource::new(expected.to_vec(), ps),
        waiting: Mutex::new(0),
        cv: Condvar::new(),
    };
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(3)
            .fault_around(64 * ps)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    let readers: Vec<_> = (0..3)
        .map(|b| {
            let (region, expected) = (Arc::clone(&region), Arc::clone(&expected));
            spawn_named(&format!("faulting-{b}"), move || {
                mismatches(&region, &expected, b * 64..b * 64 + 1)
            })
        })
        .collect();
    for r in readers {
        assert!(join_timeout(r).is_empty());
    }
    let finished = server.stop();
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
}
