//! A real `serve` restore on private anonymous memory, from any page source, with every byte
//! checked against the snapshot version it must hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::serve::{PageSource, Region, Server};
use userfaultfd::UffdBuilder;

pub const PAGE: usize = 4096;

/// The memory a restore fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`, base pages.
    Anonymous,
    /// A memfd (shmem), `MAP_SHARED`.
    Shmem,
    /// A hugetlbfs memfd (2 MiB pages), `MAP_SHARED`.
    Hugetlb,
}

impl Memory {
    pub const ALL: [Memory; 3] = [Memory::Anonymous, Memory::Shmem, Memory::Hugetlb];

    /// Its page size.
    pub fn page_size(self) -> usize {
        if self == Memory::Hugetlb {
            2 << 20
        } else {
            PAGE
        }
    }
}

pub struct Restore {
    addr: usize,
    len: usize,
    server: Option<Server>,
    /// The memfd of shared memory.
    _file: Option<std::os::fd::OwnedFd>,
    /// Touch threads may still be blocked in the region: never unmap it under them.
    leak: std::cell::Cell<bool>,
}

impl Restore {
    /// Starts a page server with `workers` over `len` bytes of fresh anonymous memory.
    pub fn start(source: Arc<dyn PageSource>, len: usize, workers: usize) -> Restore {
        Restore::start_with(source, len, workers, None)
    }

    /// As [`start`](Self::start), with the server's fault-around block (`Some(0)`: one page
    /// per fault).
    pub fn start_with(
        source: Arc<dyn PageSource>,
        len: usize,
        workers: usize,
        fault_around: Option<usize>,
    ) -> Restore {
        Restore::start_on(Memory::Anonymous, source, len, workers, fault_around)
            .expect("anonymous memory")
    }

    /// A restore into `memory`; `None` (a skip notice printed, a failure in strict mode)
    /// when no huge pages are free.
    #[track_caller]
    pub fn start_on(
        memory: Memory,
        source: Arc<dyn PageSource>,
        len: usize,
        workers: usize,
        fault_around: Option<usize>,
    ) -> Option<Restore> {
        Restore::start_configured(memory, source, len, workers, |builder| {
            if let Some(bytes) = fault_around {
                builder.fault_around(bytes);
            }
        })
    }

    /// As [`start_on`](Self::start_on), with the server's options set by `configure` (the
    /// region and the workers are set before it).
    #[track_caller]
    pub fn start_configured(
        memory: Memory,
        source: Arc<dyn PageSource>,
        len: usize,
        workers: usize,
        configure: impl FnOnce(&mut userfaultfd::serve::ServerBuilder),
    ) -> Option<Restore> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use userfaultfd::FeatureFlags;
        let features = userfaultfd::serve::EVENTS
            | match memory {
                Memory::Anonymous => FeatureFlags::empty(),
                Memory::Shmem => FeatureFlags::MISSING_SHMEM,
                Memory::Hugetlb => FeatureFlags::MISSING_HUGETLBFS,
            };
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(features)
            .create()
            .expect("a userfaultfd with the page server's events (run as root, Linux 5.x+)");
        let file = match memory {
            Memory::Anonymous => None,
            Memory::Shmem | Memory::Hugetlb => {
                let flags = libc::MFD_CLOEXEC
                    | if memory == Memory::Hugetlb {
                        libc::MFD_HUGETLB
                    } else {
                        0
                    };
                // SAFETY: the name is NUL-terminated.
                let fd = unsafe { libc::memfd_create(c"objstore-test".as_ptr(), flags) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: a new descriptor that only we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: ftruncate only sizes the file.
                let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
                assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
                Some(fd)
            }
        };
        let (flags, fd) = match &file {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        };
        // SAFETY: a new mapping at an address of the kernel's choosing; nothing lives there.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            assert_eq!(
                memory,
                Memory::Hugetlb,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            super::machine_lacks("free 2 MiB huge pages (/proc/sys/vm/nr_hugepages)");
            return None;
        }
        if memory == Memory::Anonymous {
            // Base pages: with THP "always", a fault would otherwise be served 2 MiB at a time.
            // SAFETY: advice on our own mapping.
            unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        }
        let mut builder = Server::builder();
        builder
            .region(Region::new(addr, len).page_size(memory.page_size()))
            .workers(workers);
        configure(&mut builder);
        // SAFETY: the region holds no Rust object; it is unmapped only after the server stops.
        let server = unsafe {
            builder
                .start(uffd, source)
                .expect("starting the page server")
        };
        Some(Restore {
            addr: addr as usize,
            len,
            server: Some(server),
            _file: file,
            leak: std::cell::Cell::new(false),
        })
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Touches the pages in `order` from `threads` threads (interleaved); waits until all are
    /// touched, or the server stopped with an error (its text), or `limit` passed.
    pub fn touch(&self, order: &[usize], threads: usize, limit: Duration) -> Result<(), String> {
        let done = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(order.to_vec());
        for t in 0..threads {
            let (done, order, addr) = (done.clone(), order.clone(), self.addr);
            std::thread::spawn(move || {
                for &page in order.iter().skip(t).step_by(threads) {
                    // SAFETY: inside the mapping, which outlives the touches that succeed
                    // (the test waits for them before unmapping; a failed test leaks it).
                    unsafe { std::ptr::read_volatile((addr + page * PAGE) as *const u8) };
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let until = Instant::now() + limit;
        while done.load(Ordering::SeqCst) < threads {
            if let Some(Err(e)) = self.server().outcome() {
                self.leak.set(true);
                return Err(e);
            }
            if Instant::now() > until {
                self.leak.set(true);
                return Err(format!("the touches did not finish within {limit:?}"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }

    /// Checks every byte of the region against snapshot `version`; the pages that differ.
    pub fn mismatches(&self, version: u64) -> Vec<usize> {
        let mut want = vec![0u8; PAGE];
        let mut bad = Vec::new();
        for page in 0..self.len / PAGE {
            super::expected(version, (page * PAGE) as u64, &mut want);
            // SAFETY: inside the mapping; every page was touched, so reading faults nothing.
            let got =
                unsafe { std::slice::from_raw_parts((self.addr + page * PAGE) as *const u8, PAGE) };
            if got != want.as_slice() {
                bad.push(page);
            }
        }
        bad
    }

    /// Stops the server; the memory stays mapped until drop.
    pub fn stop(&mut self) -> userfaultfd::serve::Finished {
        self.server.take().unwrap().stop()
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            drop(s.stop());
        }
        if self.leak.get() {
            return;
        }
        // SAFETY: our mapping; every touch thread has finished.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A permutation of `0..n` (deterministic).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}
