//! A lazy snapshot-restore page-fault handler in the shape of Firecracker's example handlers,
//! written as a userfaultfd 0.9 user writes it: a non-blocking descriptor with
//! `EVENT_REMOVE`, one page per fault copied from the snapshot, pages removed by the balloon
//! served as zeros, and a fault deferred when its copy meets a pending event. The deferral arm
//! is the one 0.9 handlers carry for 0.9's bug #91 (`PartiallyCopied((-EAGAIN) as usize)`):
//! `Err(Error::PartiallyCopied(n)) if n == 0 || n == (-libc::EAGAIN) as usize`. With a
//! different variant for that case, this handler compiles and then panics whenever a
//! `REMOVE` races a fault.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_void;
use userfaultfd::{Error, Event, FaultKind, ReadWrite, Uffd};

/// The handler's state: the descriptor, the snapshot, and the pages the balloon removed.
pub struct SnapshotHandler {
    uffd: Uffd,
    snapshot: Vec<u8>,
    start: usize,
    page_size: usize,
    hugetlb: bool,
    zeros: Vec<u8>,
    removed: HashSet<usize>,
    /// Faults deferred because their copy met a pending event.
    pub deferred: usize,
    /// Faults served.
    pub served: usize,
}

impl SnapshotHandler {
    /// A handler for the region at `start` holding `snapshot`, in pages of `page_size`.
    pub fn new(uffd: Uffd, start: *mut c_void, snapshot: Vec<u8>, page_size: usize) -> Self {
        SnapshotHandler {
            uffd,
            snapshot,
            start: start as usize,
            page_size,
            hugetlb: page_size > 4096,
            zeros: vec![0; page_size],
            removed: HashSet::new(),
            deferred: 0,
            served: 0,
        }
    }

    /// Serves a fault at `addr`; `false` when it must be retried after the pending events.
    pub fn serve_pf(&mut self, addr: *mut u8) -> bool {
        let page = addr as usize & !(self.page_size - 1);
        let done = if self.removed.contains(&page) {
            self.zero_out(page)
        } else {
            self.populate_from_file(page)
        };
        if done {
            self.served += 1;
        }
        done
    }

    fn populate_from_file(&self, dst: usize) -> bool {
        let offset = dst - self.start;
        let src = self.snapshot[offset..offset + self.page_size].as_ptr();
        // SAFETY: `dst` is a page of the registered guest region, which holds no Rust object.
        match unsafe {
            self.uffd
                .copy(src.cast(), dst as *mut c_void, self.page_size, true)
        } {
            Ok(_) => true,
            // A REMOVE (or another non-cooperative event) is pending: read it first.
            Err(Error::PartiallyCopied(n)) if n == 0 || n == (-libc::EAGAIN) as usize => false,
            // Another fault on the same page already got it: make sure the thread wakes.
            Err(Error::CopyFailed(errno))
                if std::io::Error::from(errno).raw_os_error() == Some(libc::EEXIST) =>
            {
                self.uffd
                    .wake(dst as *mut c_void, self.page_size)
                    .expect("wake");
                true
            }
            Err(e) => panic!("Uffd copy failed: {e:?}"),
        }
    }

    fn zero_out(&self, dst: usize) -> bool {
        let result = if self.hugetlb {
            // hugetlbfs has no zero page: copy one.
            // SAFETY: as in populate_from_file.
            unsafe {
                self.uffd.copy(
                    self.zeros.as_ptr().cast(),
                    dst as *mut c_void,
                    self.page_size,
                    true,
                )
            }
        } else {
            // SAFETY: as in populate_from_file.
            unsafe { self.uffd.zeropage(dst as *mut c_void, self.page_size, true) }
        };
        match result {
            Ok(_) => true,
            Err(Error::ZeropageFailed(errno)) if errno as i32 == libc::EAGAIN => false,
            Err(Error::PartiallyCopied(n)) if n == 0 || n == (-libc::EAGAIN) as usize => false,
            Err(Error::ZeropageFailed(errno)) | Err(Error::CopyFailed(errno))
                if errno as i32 == libc::EEXIST =>
            {
                self.uffd
                    .wake(dst as *mut c_void, self.page_size)
                    .expect("wake");
                true
            }
            Err(e) => panic!("Uffd zeropage failed: {e:?}"),
        }
    }

    /// Serves events until `stop` is set: faults, and balloon removals, retrying deferred
    /// faults once the pending events are read.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut deferred: Vec<*mut u8> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let mut pollfd = libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pollfd, 1, 10) };
            loop {
                let event = match self.uffd.read_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(e) => panic!("read_event failed: {e:?}"),
                };
                // An exhaustive match, as 0.9 code writes it.
                match event {
                    Event::Pagefault { kind, rw, addr, .. } => {
                        match kind {
                            FaultKind::Missing => {}
                            FaultKind::WriteProtected | FaultKind::Minor => {
                                panic!("unexpected {kind:?} fault")
                            }
                        }
                        match rw {
                            ReadWrite::Read | ReadWrite::Write => {}
                        }
                        if !self.serve_pf(addr.cast()) {
                            self.deferred += 1;
                            deferred.push(addr.cast());
                        }
                    }
                    Event::Remove { start, end } => {
                        let mut page = start as usize;
                        while page < end as usize {
                            self.removed.insert(page);
                            page += self.page_size;
                        }
                    }
                    Event::Fork { .. } | Event::Remap { .. } | Event::Unmap { .. } => {
                        panic!("unexpected event {event:?}")
                    }
                }
            }
            let mut still = Vec::new();
            for addr in deferred.drain(..) {
                if !self.serve_pf(addr) {
                    still.push(addr);
                }
            }
            deferred = still;
        }
    }
}
