//! A read-only shared mapping of the disk cache's data file: the warm path hands the page
//! server its verified chunks' bytes from here, so the kernel copies them from the page cache
//! straight into the guest (no `pread` into a buffer first, no system call per fault).
//!
//! Only the kernel reads this mapping, inside the page server's `UFFDIO_COPY`; no Rust code
//! dereferences it. That is what makes a failing disk (or a file cut short behind the cache's
//! back) harmless: a read the kernel cannot complete fails that copy with `EFAULT` where a
//! load in the process would raise `SIGBUS`, and the page server then tells the source
//! ([`PageSource::unreadable`](userfaultfd::serve::PageSource::unreadable)), which turns the
//! cache off and fetches the chunks from the network. (One exception: on huge pages, before
//! Linux 5.14, the page server maps a copy's source by reading a byte per page, since the
//! kernel lacks `MADV_POPULATE_READ`; a disk error there is a `SIGBUS`: `Options::cache_mapping`
//! turns the mapping off.)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use crate::options::base_page_size;

/// `MAP_SHARED`, `PROT_READ`, of a whole file; unmapped on drop.
pub(crate) struct CacheMapping {
    base: NonNull<u8>,
    /// The file's length rounded up to whole base pages: past the end of the file inside its
    /// last page, the mapping reads zeros.
    len: usize,
}

// SAFETY: a read-only mapping owned by the value; Rust code never reads through it (see the
// module docs), it only hands out its addresses.
unsafe impl Send for CacheMapping {}
// SAFETY: as above.
unsafe impl Sync for CacheMapping {}

impl CacheMapping {
    /// Maps the first `len` bytes of `file` (its length); `None` if empty or the mapping
    /// fails (the cache is then read with `pread`).
    pub(crate) fn new(file: &File, len: u64) -> Option<CacheMapping> {
        let page = base_page_size();
        let len = usize::try_from(len).ok()?.checked_next_multiple_of(page)?;
        if len == 0 || len > isize::MAX as usize {
            return None;
        }
        // SAFETY: a new mapping at an address of the kernel's choosing, of a file we hold
        // open; it aliases nothing of ours.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(CacheMapping {
            base: NonNull::new(base.cast())?,
            len,
        })
    }

    /// Bytes `[offset, offset + len)` of the file, for the kernel to copy from; `None` when
    /// they are not all inside the mapping.
    pub(crate) fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        if start.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: inside the mapping, which lives as long as `self`. The slice is only handed
        // to the page server, which passes its address to `UFFDIO_COPY`: the kernel reads it,
        // and reports a read it cannot complete as `EFAULT` (module docs). The bytes of a
        // verified chunk are not written while the source lives (another restore of the
        // same object version writes only identical bytes, to chunks it lacks).
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) })
    }

    /// Drops this process's page-table entries for `[offset, offset + len)`, once the page
    /// server has placed those bytes: the file's pages stay in the page cache, and the
    /// process's resident size does not grow by the cached object's. A later copy from there
    /// maps them again.
    pub(crate) fn forget(&self, offset: u64, len: usize) {
        let page = base_page_size() as u64;
        let start = offset.next_multiple_of(page);
        let end = (offset + len as u64).min(self.len as u64) / page * page;
        if start >= end {
            return;
        }
        // SAFETY: advice on whole pages inside our own read-only file mapping; `MADV_DONTNEED`
        // on a shared file mapping drops only the mappings, never the file's contents.
        unsafe {
            libc::madvise(
                self.base.as_ptr().add(start as usize).cast(),
                (end - start) as usize,
                libc::MADV_DONTNEED,
            );
        }
    }
}

impl Drop for CacheMapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; no slice of it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
