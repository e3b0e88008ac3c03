//! Where fetched bytes land: an anonymous mapping of the object's size (`MAP_NORESERVE`: only
//! what arrives takes memory), and the atomic bitmap of pages whose bytes have all arrived.
//!
//! The bitmap and the per-chunk state arrays are sized by the object's length, which the
//! store reports: a broken or hostile store can claim any length. They are allocated with
//! [`zeroed`], which can fail (an error from [`open`](crate::open) naming the object and its
//! length, never an abort) and writes nothing: zeroed memory from the allocator is fresh
//! pages from the kernel for large sizes (glibc's `calloc` maps them), so, like the buffer,
//! the bookkeeping takes memory only where chunks are fetched. (`Vec::try_reserve` and
//! filling with zeros would make every byte resident at `open`.)

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

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

/// Types whose all-zero bytes are a valid value, ready to use.
///
/// # Safety
///
/// Only for types for which all-zero bytes are a valid value.
pub(crate) unsafe trait Zeroable {}
// SAFETY: an atomic integer has the representation of the integer: zero bytes are 0.
unsafe impl Zeroable for AtomicU64 {}
// SAFETY: as above.
unsafe impl Zeroable for AtomicU8 {}
// SAFETY: as above.
unsafe impl Zeroable for AtomicU32 {}
// SAFETY: AtomicBool has the representation of bool: a zero byte is `false`.
unsafe impl Zeroable for AtomicBool {}

/// `n` zeroed values, allocated fallibly and without writing them (`alloc_zeroed`); `what`
/// names the array in the error.
pub(crate) fn zeroed<T: Zeroable>(n: usize, what: &str) -> io::Result<Box<[T]>> {
    let fail = |why: String| io::Error::new(io::ErrorKind::OutOfMemory, format!("{what}: {why}"));
    let layout = Layout::array::<T>(n)
        .map_err(|_| fail(format!("{n} entries do not fit the address space")))?;
    if layout.size() == 0 {
        return Ok(Box::default());
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(fail(format!("allocating {} bytes failed", layout.size())));
    }
    // SAFETY: `ptr` is a fresh allocation of `Layout::array::<T>(n)` (the layout `Box<[T]>`
    // frees with), holding `n` zeroed values, which are valid `T`s (Zeroable).
    Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) })
}

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

    /// Gives the memory of `[at, at + len)` back to the system (`MADV_DONTNEED`: it reads
    /// as zeros afterwards, and takes memory again only where written).
    ///
    /// # Safety
    ///
    /// The range lies in the buffer and no page of it is marked arrived: nobody reads it
    /// until it is written again.
    pub(crate) unsafe fn discard(&self, at: usize, len: usize) {
        debug_assert!(at + len <= self.len);
        // SAFETY: advice on a range of our own mapping that holds no value anyone reads.
        unsafe { libc::madvise(self.base.as_ptr().add(at).cast(), len, libc::MADV_DONTNEED) };
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

/// One atomic bit per page: the pages whose bytes have arrived (cleared when their chunk is
/// dropped), and the pages the page server reported placed.
pub(crate) struct PageBits {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl PageBits {
    pub(crate) fn new(pages: usize) -> io::Result<PageBits> {
        Ok(PageBits {
            words: zeroed(pages.div_ceil(64), "the page bitmap")?,
            pages,
        })
    }

    pub(crate) fn is_set(&self, page: usize) -> bool {
        self.words[page / 64].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Marks `[from, to)` arrived (Release: their bytes are visible to whoever sees a bit);
    /// returns how many of them were not marked before.
    pub(crate) fn set(&self, from: usize, to: usize) -> usize {
        let mut new = 0;
        for (word, bits) in words_of(from, to) {
            let old = self.words[word].fetch_or(bits, Ordering::AcqRel);
            new += (bits & !old).count_ones() as usize;
        }
        new
    }

    /// Unmarks `[from, to)`.
    pub(crate) fn clear(&self, from: usize, to: usize) {
        for (word, bits) in words_of(from, to) {
            self.words[word].fetch_and(!bits, Ordering::AcqRel);
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

/// The words of a page bitmap holding bits `[from, to)`, each with the mask of those bits.
fn words_of(from: usize, to: usize) -> impl Iterator<Item = (usize, u64)> {
    let mut i = from;
    std::iter::from_fn(move || {
        if i >= to {
            return None;
        }
        let word = i / 64;
        let hi = to.min((word + 1) * 64);
        let bits = if hi - i == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - i)) - 1) << (i % 64)
        };
        i = hi;
        Some((word, bits))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrived_runs() {
        let a = PageBits::new(200).unwrap();
        assert_eq!(a.run_end(0, 200), 0);
        a.set(3, 130);
        assert!(!a.is_set(2) && a.is_set(3) && a.is_set(129) && !a.is_set(130));
        assert_eq!(a.run_end(3, 200), 130);
        assert_eq!(a.run_end(64, 100), 100);
        assert_eq!(a.run_end(130, 200), 130);
        a.set(130, 200);
        assert_eq!(a.run_end(3, 500), 200);
        assert!(a.all(3, 200) && !a.all(0, 10));
        assert_eq!(a.set(0, 64), 3, "pages 0-2 were new");
        assert!(a.all(0, 64));
        a.clear(60, 131);
        assert!(a.all(0, 60) && !a.is_set(60) && !a.is_set(130) && a.is_set(131));
        assert_eq!(a.set(0, 200), 71);
    }

    #[test]
    fn zeroed_arrays() {
        let a: Box<[AtomicU8]> = zeroed(5000, "x").unwrap();
        assert!(a.iter().all(|v| v.load(Ordering::Relaxed) == 0));
        assert!(zeroed::<AtomicU64>(0, "x").unwrap().is_empty());
        // More than the address space: an error naming the array, not an abort.
        let e = zeroed::<AtomicU64>(usize::MAX / 4, "the page bitmap").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert!(e.to_string().starts_with("the page bitmap: "), "{e}");
        // Fits the address space, not the machine (4 PiB): refused by the allocator.
        let e = zeroed::<AtomicU64>(1 << 49, "the chunk states").unwrap_err();
        assert!(e.to_string().contains("allocating"), "{e}");
    }
}
