//! For the page-server tests: a snapshot with recognisable and zero pages, a page source
//! over it that can be made to fail, panic, hold a fetch or be slow, and checks of every
//! byte.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use userfaultfd::serve::{Chunk, PageSource};
use userfaultfd::{FeatureFlags, RegisterMode, Uffd};

use super::{pattern, uffd_for, MemoryType, Region};

/// Whether page `i` of a test snapshot is all zeros (every 7th page).
pub fn zero_page(i: usize) -> bool {
    i % 7 == 3
}

/// The test snapshot: page `i` is `pattern(i)`, or zeros where [`zero_page`].
pub fn snapshot(pages: usize, page_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * page_size);
    for i in 0..pages {
        if zero_page(i) {
            out.resize(out.len() + page_size, 0);
        } else {
            out.extend(pattern(i, page_size));
        }
    }
    out
}

/// A gate: the first fetch announces itself and waits until opened.
#[derive(Default)]
pub struct Gate {
    state: Mutex<(bool, bool)>, // (entered, open)
    cv: Condvar,
}

impl Gate {
    /// Waits until a fetch is held at the gate.
    pub fn wait_entered(&self) {
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            let (g, t) = self.cv.wait_timeout(s, super::TIMEOUT).unwrap();
            assert!(!t.timed_out(), "no fetch reached the gate");
            s = g;
        }
    }

    /// Lets the held fetch go on (and every later one).
    pub fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.cv.notify_all();
        while !s.1 {
            s = self.cv.wait(s).unwrap();
        }
    }
}

/// A page source over a snapshot in memory: runs of zero pages are answered as zeros (so the
/// server maps zero pages), the rest as data. It can fail or panic at one page, hold its
/// first fetch at a gate, or be slow sometimes.
pub struct TestSource {
    pub bytes: Vec<u8>,
    pub page_size: usize,
    pub fail_at: Option<usize>,
    pub panic_at: Option<usize>,
    pub gate: Option<Arc<Gate>>,
    /// `(n, d)`: every `n`-th fetch sleeps `d` first (a remote source's occasional slow read).
    pub delay: Option<(usize, Duration)>,
    /// What [`PageSource::never_blocks`] answers (default `false`): `true` makes the server
    /// read messages and fetch on the same threads.
    pub never_blocks: bool,
    pub fetches: AtomicUsize,
    /// Per page: how many times [`PageSource::placed`] reported it.
    pub placed: Vec<AtomicUsize>,
    /// Reports of bytes outside the source or not whole pages (must stay 0).
    pub bad_reports: AtomicUsize,
    /// How many times [`PageSource::unreadable`] was called (it answers `true`, so a server
    /// that asked about memory that is readable would ask for ever: tests check it is 0).
    pub unreadable: AtomicUsize,
}

impl TestSource {
    pub fn new(bytes: Vec<u8>, page_size: usize) -> TestSource {
        TestSource {
            page_size,
            fail_at: None,
            panic_at: None,
            gate: None,
            delay: None,
            never_blocks: false,
            fetches: AtomicUsize::new(0),
            placed: (0..bytes.len() / page_size)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            bad_reports: AtomicUsize::new(0),
            unreadable: AtomicUsize::new(0),
            bytes,
        }
    }

    /// The pages [`PageSource::placed`] reported, in order, each once.
    pub fn reported(&self) -> Vec<usize> {
        (0..self.placed.len())
            .filter(|&p| self.placed[p].load(Ordering::Relaxed) > 0)
            .collect()
    }
}

impl PageSource for TestSource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn never_blocks(&self) -> bool {
        self.never_blocks
    }

    fn placed(&self, offset: u64, len: usize) {
        let ps = self.page_size as u64;
        let end = offset.checked_add(len as u64);
        if offset % ps != 0
            || len as u64 % ps != 0
            || len == 0
            || end.is_none_or(|e| e > self.bytes.len() as u64)
        {
            self.bad_reports.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for p in offset / ps..(offset + len as u64) / ps {
            self.placed[p as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unreadable(&self, _: u64, _: usize) -> bool {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn fetch<'a>(&'a self, offset: u64, len: usize, _: &'a mut [u8]) -> io::Result<Chunk<'a>> {
        let n = self.fetches.fetch_add(1, Ordering::Relaxed);
        if let Some((every, pause)) = self.delay {
            if n % every == every - 1 {
                std::thread::sleep(pause);
            }
        }
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        let ps = self.page_size;
        let first = offset as usize / ps;
        let pages = len / ps;
        if self
            .fail_at
            .is_some_and(|p| (first..first + pages).contains(&p))
        {
            return Err(io::Error::other("injected read error"));
        }
        if self
            .panic_at
            .is_some_and(|p| (first..first + pages).contains(&p))
        {
            panic!("injected panic in the page source");
        }
        let is_zero = |p: usize| self.bytes[p * ps..(p + 1) * ps].iter().all(|&b| b == 0);
        let zero = is_zero(first);
        let run = (first..first + pages)
            .take_while(|&p| is_zero(p) == zero)
            .count();
        if zero {
            Ok(Chunk::Zeros(run * ps))
        } else {
            Ok(Chunk::Data(
                &self.bytes[offset as usize..offset as usize + run * ps],
            ))
        }
    }
}

/// A descriptor for serving `memory` in `mode`, with the server's events; `None` to skip.
#[track_caller]
pub fn serve_uffd(memory: MemoryType, mode: RegisterMode) -> Option<Uffd> {
    uffd_for(
        memory,
        mode,
        userfaultfd::serve::EVENTS | FeatureFlags::empty(),
    )
}

/// The pages of `region` that differ from `expected` (page-sized slices), read through the
/// region (faulting them in).
pub fn mismatches(
    region: &Region,
    expected: &[u8],
    pages: impl Iterator<Item = usize>,
) -> Vec<usize> {
    let ps = region.page_size();
    pages
        .filter(|&i| {
            // SAFETY: a page of our own mapping, served by the server under test.
            let got = unsafe { std::slice::from_raw_parts(region.page(i), ps) };
            got != &expected[i * ps..(i + 1) * ps]
        })
        .collect()
}

/// How a page read compares with the source's page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRead {
    /// Exactly the source's bytes.
    Source,
    /// All zeros (and the source's page is not).
    Zeros,
    /// The source's bytes up to offset `k`, zeros from there: the page was discarded while
    /// it was being read.
    Torn(usize),
    /// Anything else: byte `k` is the first that is neither.
    Wrong(usize),
}

/// Compares a page as read with the source's page, every byte.
pub fn compare_page(got: &[u8], want: &[u8]) -> PageRead {
    assert_eq!(got.len(), want.len());
    if got == want {
        return PageRead::Source;
    }
    let k = got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(0);
    if got[k..].iter().all(|&b| b == 0) {
        if got[..k].iter().all(|&b| b == 0) {
            PageRead::Zeros
        } else {
            PageRead::Torn(k)
        }
    } else {
        PageRead::Wrong(k)
    }
}

/// Discard `n` pages from `first` (anonymous: `DONTNEED`; shared: `REMOVE`, a hole).
pub fn discard(region: &Region, first: usize, n: usize) {
    let advice = if region.memory() == MemoryType::Anonymous {
        libc::MADV_DONTNEED
    } else {
        libc::MADV_REMOVE
    };
    // SAFETY: discards pages of our own test mapping.
    let r = unsafe { libc::madvise(region.page(first).cast(), n * region.page_size(), advice) };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
}
