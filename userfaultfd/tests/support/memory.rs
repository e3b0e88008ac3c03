//! The three memory types userfaultfd handles, and mappings of them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use libc::c_void;
use userfaultfd::{FeatureFlags, RegisterMode};

use super::skip::machine_lacks;

/// A kind of memory a range can be registered on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    Anonymous,
    /// A memfd (shmem), `MAP_SHARED`.
    Shmem,
    /// A hugetlbfs memfd (`MFD_HUGETLB`, 2 MiB pages), `MAP_SHARED`.
    Hugetlb,
}

impl MemoryType {
    /// All three, in the order tests run them.
    pub const ALL: [MemoryType; 3] = [
        MemoryType::Anonymous,
        MemoryType::Shmem,
        MemoryType::Hugetlb,
    ];

    /// The page size of this memory type.
    pub fn page_size(self) -> usize {
        match self {
            MemoryType::Hugetlb => 2 << 20,
            // SAFETY: sysconf has no memory effects.
            _ => (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize,
        }
    }

    /// The features a descriptor needs to register this memory type in `mode`.
    pub fn features_for(self, mode: RegisterMode) -> FeatureFlags {
        let mut f = FeatureFlags::empty();
        if mode.contains(RegisterMode::MISSING) {
            f |= match self {
                MemoryType::Anonymous => FeatureFlags::empty(),
                MemoryType::Shmem => FeatureFlags::MISSING_SHMEM,
                MemoryType::Hugetlb => FeatureFlags::MISSING_HUGETLBFS,
            };
        }
        if mode.contains(RegisterMode::WRITE_PROTECT) {
            f |= FeatureFlags::PAGEFAULT_FLAG_WP;
            if self != MemoryType::Anonymous {
                f |= FeatureFlags::WP_HUGETLBFS_SHMEM;
            }
        }
        if mode.contains(RegisterMode::MINOR) {
            f |= match self {
                MemoryType::Anonymous => FeatureFlags::empty(),
                MemoryType::Shmem => FeatureFlags::MINOR_SHMEM,
                MemoryType::Hugetlb => FeatureFlags::MINOR_HUGETLBFS,
            };
        }
        f
    }

    /// Whether the kernel can register this memory type in `mode` at all (MINOR needs a
    /// page cache: shmem or hugetlbfs).
    pub fn supports(self, mode: RegisterMode) -> bool {
        !(mode.contains(RegisterMode::MINOR) && self == MemoryType::Anonymous)
    }
}

/// A mapping of `pages` pages of a memory type, unmapped on drop. Shared types keep their
/// memfd, so that a second view of the same pages can be mapped (for minor faults).
pub struct Region {
    ptr: *mut u8,
    len: usize,
    memory: MemoryType,
    file: Option<OwnedFd>,
}

// SAFETY: the region is plain memory; tests share its address between threads on purpose and
// synchronise access themselves.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `pages` pages of `memory`; `None` (after reporting a machine skip, which fails in
    /// strict mode) when huge pages are not available.
    #[track_caller]
    pub fn new(memory: MemoryType, pages: usize) -> Option<Region> {
        let len = pages * memory.page_size();
        let file = match memory {
            MemoryType::Anonymous => None,
            MemoryType::Shmem | MemoryType::Hugetlb => {
                let flags = libc::MFD_CLOEXEC
                    | if memory == MemoryType::Hugetlb {
                        libc::MFD_HUGETLB
                    } else {
                        0
                    };
                // SAFETY: the name is NUL-terminated.
                let fd = unsafe { libc::memfd_create(c"uffd-test".as_ptr(), flags) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: `fd` is a new descriptor that only we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: ftruncate only sizes the file.
                let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
                assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
                Some(fd)
            }
        };
        let mut region = Region {
            ptr: ptr::null_mut(),
            len,
            memory,
            file,
        };
        region.ptr = region.map_view(false)?;
        Some(region)
    }

    /// A private anonymous mapping of `pages` pages of `memory`, without a file: for
    /// hugetlbfs `MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB` (what [`Region::new`] gives
    /// for anonymous memory). `None` (after reporting a machine skip) when huge pages are not
    /// available.
    #[track_caller]
    pub fn anonymous(memory: MemoryType, pages: usize) -> Option<Region> {
        let mut region = Region {
            ptr: ptr::null_mut(),
            len: pages * memory.page_size(),
            memory,
            file: None,
        };
        region.ptr = region.map_view(false)?;
        Some(region)
    }

    /// Maps the region's pages, or for a shared type another view of the same file
    /// (`MAP_SHARED`, or `MAP_PRIVATE` if `private`).
    #[track_caller]
    fn map_view(&self, private: bool) -> Option<*mut u8> {
        let (flags, fd) = match &self.file {
            None if self.memory == MemoryType::Hugetlb => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
            ),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            Some(fd) if private => (libc::MAP_PRIVATE, fd.as_raw_fd()),
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        };
        // SAFETY: a new mapping at an address of the kernel's choosing; nothing lives there.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            if self.memory == MemoryType::Hugetlb {
                machine_lacks(&format!(
                    "free huge pages ({err}); reserve them: echo 128 > /proc/sys/vm/nr_hugepages"
                ));
                return None;
            }
            panic!("mmap {:?}: {err}", self.memory);
        }
        if self.memory == MemoryType::Anonymous {
            // Base pages only: with transparent huge pages enabled "always" (Debian's cloud
            // kernels), one write before serving would populate the whole 2 MiB around it,
            // and tests count and check pages one by one.
            // SAFETY: advice on the mapping just made; it changes no contents.
            let r = unsafe { libc::madvise(ptr, self.len, libc::MADV_NOHUGEPAGE) };
            assert_eq!(r, 0, "MADV_NOHUGEPAGE: {}", std::io::Error::last_os_error());
        }
        Some(ptr.cast())
    }

    /// A second mapping of the same pages (shared types only), for populating the page cache
    /// without faulting through the registered view.
    pub fn second_view(&self) -> Region {
        assert!(self.file.is_some(), "only shared memory has a second view");
        let ptr = self
            .map_view(false)
            .expect("second view of a mapped region");
        self.view_at(ptr)
    }

    /// A private mapping (`MAP_PRIVATE`) of the same file (shared types only): it reads the
    /// file's pages until written or discarded. `None` (after reporting a machine skip) when
    /// huge pages for its reservation are not available.
    #[track_caller]
    pub fn private_view(&self) -> Option<Region> {
        assert!(self.file.is_some(), "only shared memory has a private view");
        let ptr = self.map_view(true)?;
        Some(self.view_at(ptr))
    }

    fn view_at(&self, ptr: *mut u8) -> Region {
        Region {
            ptr,
            len: self.len,
            memory: self.memory,
            file: self
                .file
                .as_ref()
                .map(|f| f.try_clone().expect("dup memfd")),
        }
    }

    /// The memfd behind a shared type (`None` for anonymous memory).
    pub fn file(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// Start of the region.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Start of the region, as the crate's methods take it.
    pub fn addr(&self) -> *mut c_void {
        self.ptr.cast()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The memory type.
    pub fn memory(&self) -> MemoryType {
        self.memory
    }

    /// Page size of the region.
    pub fn page_size(&self) -> usize {
        self.memory.page_size()
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len / self.page_size()
    }

    /// Address of page `i`.
    pub fn page(&self, i: usize) -> *mut u8 {
        assert!(i < self.pages());
        // SAFETY: `i` is within the region.
        unsafe { self.ptr.add(i * self.page_size()) }
    }
}

impl Region {
    /// Stops owning the mapping, because the test unmapped or moved it itself (the memfd of a
    /// shared type is still closed on drop).
    pub fn forget_mapping(&mut self) {
        self.ptr = ptr::null_mut();
    }

    /// A copy of page `i` (a registered missing page blocks the caller until resolved).
    pub fn read_page(&self, i: usize) -> Vec<u8> {
        // SAFETY: the page is mapped and readable; tests read it only once it is populated
        // or from a thread whose fault they resolve.
        unsafe { std::slice::from_raw_parts(self.page(i), self.page_size()) }.to_vec()
    }

    /// Fills page `i` with `bytes` (a view that is not registered, or a populated page).
    pub fn write_page(&self, i: usize, bytes: &[u8]) {
        assert_eq!(bytes.len(), self.page_size());
        // SAFETY: the page is mapped writable and `bytes` has its length.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.page(i), bytes.len()) };
    }
}

/// A recognisable page: byte `j` is `(seed * 31 + j * 7 + 1) as u8`, never all zero.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    // The bytes repeat every 256 (7 is odd): one period, then copies of it, so that a huge
    // page's pattern costs memory copies, not a loop per byte (debug builds, under qemu).
    let period: Vec<u8> = (0..256).map(|j| (seed * 31 + j * 7 + 1) as u8).collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(period.len());
        out.extend_from_slice(&period[..n]);
    }
    debug_assert!(out
        .iter()
        .take(1024)
        .enumerate()
        .all(|(j, &b)| b == (seed * 31 + j * 7 + 1) as u8));
    out
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.ptr.is_null() {
            return; // never mapped
        }
        // SAFETY: the region is our mapping of `len` bytes.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
