//! Where fetched bytes land: an anonymous mapping of the object's size (`MAP_NORESERVE`: only
//! what arrives takes memory), and the atomic bitmap of pages whose bytes have all arrived.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// An anonymous, private, read-write mapping of `len` bytes, unmapped on drop.
pub(crate) struct Buffer {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by the value. Its bytes are written only by the
// fetch of the range that holds them (one at a time: single flight) before their pages are
// marked arrived, and read only after (the bitmap's Release/Acquire orders the two).
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Buffer {
    pub(crate) fn new(len: usize) -> io::Result<Buffer> {
        // SAFETY: a new mapping at an address of the kernel's choosing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Transparent huge pages where the system allows them on request: a fetch then
        // faults in 2 MiB at a time instead of 4 KiB (advice only; failure changes nothing).
        // SAFETY: advice on our own new mapping.
        unsafe { libc::madvise(base, len.max(1), libc::MADV_HUGEPAGE) };
        Ok(Buffer {
            base: NonNull::new(base.cast()).expect("mmap returned a non-null mapping"),
            len,
        })
    }

    /// The bytes `[at, at + len)` to write into.
    ///
    /// # Safety
    ///
    /// The range lies in the buffer, no page of it is marked arrived, and no other writer
    /// holds any of it (the caller owns the range's fetch).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn write_slice(&self, at: usize, len: usize) -> &mut [u8] {
        debug_assert!(at + len <= self.len);
        // SAFETY: in bounds, and exclusive, per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(at), len) }
    }

    /// The bytes `[at, at + len)` to read.
    ///
    /// # Safety
    ///
    /// The range lies in the buffer and every page of it is marked arrived (so nobody
    /// writes it any more).
    pub(crate) unsafe fn read_slice(&self, at: usize, len: usize) -> &[u8] {
        debug_assert!(at + len <= self.len);
        // SAFETY: in bounds, and immutable from now on, per the contract.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at), len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused from now on.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len.max(1)) };
    }
}

/// One bit per page: set once the page's bytes have all arrived; never cleared.
pub(crate) struct Arrived {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl Arrived {
    pub(crate) fn new(pages: usize) -> Arrived {
        Arrived {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    pub(crate) fn is_set(&self, page: usize) -> bool {
        self.words[page / 64].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Marks `[from, to)` arrived (Release: their bytes are visible to whoever sees a bit).
    pub(crate) fn set(&self, from: usize, to: usize) {
        let mut i = from;
        while i < to {
            let word = i / 64;
            let hi = to.min((word + 1) * 64);
            let bits = if hi - i == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - i)) - 1) << (i % 64)
            };
            self.words[word].fetch_or(bits, Ordering::Release);
            i = hi;
        }
    }

    /// The end of the run of arrived pages starting at `from`, at most `to`.
    pub(crate) fn run_end(&self, from: usize, to: usize) -> usize {
        let to = to.min(self.pages);
        let mut i = from;
        while i < to {
            let word = self.words[i / 64].load(Ordering::Acquire) >> (i % 64);
            let ones = (!word).trailing_zeros() as usize;
            let ones = ones.min(64 - i % 64);
            if ones == 0 {
                return i;
            }
            i += ones;
        }
        to
    }

    /// Whether every page of `[from, to)` has arrived.
    pub(crate) fn all(&self, from: usize, to: usize) -> bool {
        self.run_end(from, to) >= to.min(self.pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrived_runs() {
        let a = Arrived::new(200);
        assert_eq!(a.run_end(0, 200), 0);
        a.set(3, 130);
        assert!(!a.is_set(2) && a.is_set(3) && a.is_set(129) && !a.is_set(130));
        assert_eq!(a.run_end(3, 200), 130);
        assert_eq!(a.run_end(64, 100), 100);
        assert_eq!(a.run_end(130, 200), 130);
        a.set(130, 200);
        assert_eq!(a.run_end(3, 500), 200);
        assert!(a.all(3, 200) && !a.all(0, 10));
        a.set(0, 64);
        assert!(a.all(0, 64));
    }
}
