//! The two areas the pages bounce between: how each memory type maps them (with a second,
//! "alias" view for shared memory), how their pages are released, and where a page keeps its
//! mutex and counter.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

/// The memory types of the command line (`shmem-private` maps shmem shared all the same,
/// as the kernel's program does: only hugetlbfs has a private variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Private anonymous memory.
    Anon,
    /// A memfd (shmem), mapped shared, with an alias view.
    Shmem,
    /// A hugetlbfs memfd; mapped shared (with an alias view) or private.
    Hugetlb,
}

/// What the areas are made of and how big they are.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub kind: Kind,
    /// `MAP_SHARED` for hugetlb (shmem is always shared).
    pub shared: bool,
    pub page_size: usize,
    pub nr_pages: usize,
}

/// One area: its main mapping and, for shared memory, a second mapping of the same pages.
/// Both are unmapped on drop.
pub struct Area {
    pub base: *mut u8,
    pub alias: Option<*mut u8>,
    len: usize,
}

// SAFETY: an Area is two addresses and a length; the memory behind them is only accessed
// through raw pointers by code that synchronises itself (see `Bounce`).
unsafe impl Send for Area {}
// SAFETY: as above; an Area has no interior state.
unsafe impl Sync for Area {}

impl Drop for Area {
    fn drop(&mut self) {
        for ptr in std::iter::once(self.base).chain(self.alias) {
            // SAFETY: a mapping this Area made, of `len` bytes; nothing uses it any more.
            unsafe { libc::munmap(ptr.cast(), self.len) };
        }
    }
}

/// Shared memory is placed from 1 GiB up, source below destination, each view followed by a
/// gap of one PMD so that no two mappings merge (a hint only: elsewhere works the same).
const SHMEM_BASE: usize = 1 << 30;

impl Memory {
    /// Bytes in one area.
    pub fn bytes(&self) -> usize {
        self.nr_pages * self.page_size
    }

    /// Maps the source area (`is_src`) or the destination area. Each area has its own file
    /// of twice its size; the source uses the first half, the destination the second, and
    /// the destination of hugetlb reserves no huge pages up front (`MAP_NORESERVE`).
    pub fn allocate(&self, is_src: bool) -> io::Result<Area> {
        let len = self.bytes();
        let offset = if is_src { 0 } else { len };
        let mut area = Area {
            base: ptr::null_mut(),
            alias: None,
            len,
        };
        match self.kind {
            Kind::Anon => {
                area.base = map(0, len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None, 0)?;
            }
            Kind::Shmem => {
                let file = memfd(2 * len, false)?;
                let gap = pmd_size();
                let base = SHMEM_BASE + if is_src { 0 } else { 2 * (len + gap) };
                area.base = map(base, len, libc::MAP_SHARED, Some(&file), offset)?;
                area.alias = Some(map(
                    base + len + gap,
                    len,
                    libc::MAP_SHARED,
                    Some(&file),
                    offset,
                )?);
            }
            Kind::Hugetlb => {
                let file = memfd(2 * len, true)?;
                let flags = if self.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } | if is_src { 0 } else { libc::MAP_NORESERVE };
                area.base = map(0, len, flags, Some(&file), offset)?;
                if self.shared {
                    area.alias = Some(map(0, len, libc::MAP_SHARED, Some(&file), offset)?);
                }
            }
        }
        Ok(area)
    }

    /// Drops every page of `area` (its next access faults as missing): `MADV_DONTNEED` for
    /// private memory, `MADV_REMOVE` (punching the file) for shared memory.
    pub fn release(&self, area: &Area) -> io::Result<()> {
        let advice = match self.kind {
            Kind::Anon => libc::MADV_DONTNEED,
            Kind::Shmem => libc::MADV_REMOVE,
            Kind::Hugetlb if self.shared => libc::MADV_REMOVE,
            Kind::Hugetlb => libc::MADV_DONTNEED,
        };
        // SAFETY: `area` is our mapping of `bytes()` bytes; its contents are only ever
        // accessed through raw pointers, which read the dropped pages as missing.
        if unsafe { libc::madvise(area.base.cast(), self.bytes(), advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The per-page mutex: at the start of page `nr`.
    pub fn mutex(&self, area: *mut u8, nr: usize) -> *mut libc::pthread_mutex_t {
        area.wrapping_add(nr * self.page_size).cast()
    }

    /// The per-page counter: right after the mutex, 8-byte aligned. The word after it is a
    /// constant 1 (a non-zero marker, as in the kernel's program).
    pub fn count(&self, area: *mut u8, nr: usize) -> *mut u64 {
        const OFFSET: usize = (size_of::<libc::pthread_mutex_t>() + 7) & !7;
        area.wrapping_add(nr * self.page_size + OFFSET).cast()
    }
}

/// `mmap(hint, len, RW, flags, file, offset)`.
fn map(
    hint: usize,
    len: usize,
    flags: libc::c_int,
    file: Option<&OwnedFd>,
    offset: usize,
) -> io::Result<*mut u8> {
    let fd = file.map_or(-1, |f| f.as_raw_fd());
    // SAFETY: a new mapping; without MAP_FIXED the hint never replaces an existing one.
    let ptr = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

/// A memfd of `len` bytes (hugetlbfs if `hugetlb`), with no page allocated.
fn memfd(len: usize, hugetlb: bool) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | if hugetlb { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"uffd-stress".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that only we own.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate only sizes the file.
    if unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The PMD size (the gap between shared views); 2 MiB when the kernel does not say.
fn pmd_size() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2 << 20)
}
