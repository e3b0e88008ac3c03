//! Mappings of the three memory types userfaultfd handles, for the tests (not 0.9 code).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::c_void;

/// A kind of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`; discarded with `MADV_DONTNEED`.
    Anonymous,
    /// A memfd, `MAP_SHARED`; discarded with `MADV_REMOVE` (a balloon on shared memory).
    Shmem,
    /// A hugetlbfs memfd (2 MiB pages), `MAP_SHARED`; discarded with `MADV_REMOVE`.
    Hugetlb,
}

impl Memory {
    /// All three.
    pub const ALL: [Memory; 3] = [Memory::Anonymous, Memory::Shmem, Memory::Hugetlb];

    /// Its page size.
    pub fn page_size(self) -> usize {
        match self {
            Memory::Hugetlb => 2 << 20,
            // SAFETY: sysconf has no memory effects.
            _ => (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize,
        }
    }

    /// The `madvise` advice that discards pages of this memory so that they read as zeros.
    pub fn discard_advice(self) -> libc::c_int {
        match self {
            Memory::Anonymous => libc::MADV_DONTNEED,
            _ => libc::MADV_REMOVE,
        }
    }
}

/// A mapping of `pages` pages, unmapped on drop.
pub struct Mapping {
    addr: *mut c_void,
    len: usize,
    memory: Memory,
    _file: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory; the struct only holds its address.
unsafe impl Send for Mapping {}
// SAFETY: as above; no interior state.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `pages` pages of `memory`. `None` (with the reason printed) when this machine
    /// cannot: no huge pages reserved. Under `UFFD_TEST_STRICT=1` that is a failure instead.
    pub fn new(memory: Memory, pages: usize) -> Option<Mapping> {
        let len = pages * memory.page_size();
        let (flags, file) = match memory {
            Memory::Anonymous => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None),
            Memory::Shmem | Memory::Hugetlb => {
                let mfd_flags = libc::MFD_CLOEXEC
                    | if memory == Memory::Hugetlb {
                        libc::MFD_HUGETLB
                    } else {
                        0
                    };
                // SAFETY: a valid NUL-terminated name; no memory effects.
                let fd = unsafe { libc::memfd_create(c"compat".as_ptr(), mfd_flags) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: `fd` was just created and is owned by nothing else.
                let file = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: ftruncate on our own descriptor.
                let r = unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) };
                assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
                (libc::MAP_SHARED, Some(file))
            }
        };
        let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a new mapping chosen by the kernel; nothing else refers to it.
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
            let err = std::io::Error::last_os_error();
            let why = format!("{memory:?} mapping of {pages} pages: {err} (huge pages reserved?)");
            assert!(
                std::env::var_os("UFFD_TEST_STRICT").is_none_or(|v| v != "1"),
                "UFFD_TEST_STRICT=1 and this machine lacks {why}"
            );
            eprintln!("SKIPPED: machine lacks {why}");
            return None;
        }
        Some(Mapping {
            addr,
            len,
            memory,
            _file: file,
        })
    }

    /// Its start.
    pub fn addr(&self) -> *mut c_void {
        self.addr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: mappings have at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its memory type.
    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// Discards `pages` pages from page `first` the way a balloon does.
    pub fn discard(&self, first: usize, pages: usize) {
        let ps = self.memory.page_size();
        // SAFETY: the range is inside our mapping, which holds no Rust object.
        let r = unsafe {
            libc::madvise(
                self.addr.cast::<u8>().add(first * ps).cast(),
                pages * ps,
                self.memory.discard_advice(),
            )
        };
        assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
    }

    /// Reads byte `offset` (a volatile read: it may fault).
    pub fn read(&self, offset: usize) -> u8 {
        assert!(offset < self.len);
        // SAFETY: inside our mapping; a volatile read of plain memory.
        unsafe { self.addr.cast::<u8>().add(offset).read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The snapshot's byte at `offset`: never zero, so that a zero page is told apart.
pub fn snapshot_byte(offset: usize) -> u8 {
    let page = offset >> 12;
    ((page.wrapping_mul(31) ^ (offset & 0xfff)) % 251) as u8 + 1
}
