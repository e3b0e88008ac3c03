//! A real `serve` restore on private anonymous memory, from any page source, with every byte
//! checked against the snapshot version it must hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::serve::{PageSource, Region, Server};
use userfaultfd::UffdBuilder;

pub const PAGE: usize = 4096;

pub struct Restore {
    addr: usize,
    len: usize,
    server: Option<Server>,
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
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(userfaultfd::serve::EVENTS)
            .create()
            .expect("a userfaultfd with the page server's events (run as root, Linux 5.x+)");
        // SAFETY: a new private anonymous mapping; nothing else lives there.
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
        // Base pages: with THP "always", a fault would otherwise be served 2 MiB at a time.
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        let mut builder = Server::builder();
        builder.region(Region::new(addr, len)).workers(workers);
        if let Some(bytes) = fault_around {
            builder.fault_around(bytes);
        }
        // SAFETY: the region holds no Rust object; it is unmapped only after the server stops.
        let server = unsafe {
            builder
                .start(uffd, source)
                .expect("starting the page server")
        };
        Restore {
            addr: addr as usize,
            len,
            server: Some(server),
            leak: std::cell::Cell::new(false),
        }
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
