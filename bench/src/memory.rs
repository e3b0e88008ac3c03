//! Mappings for the scenarios.

use std::ptr;

use libc::c_void;

pub const PAGE: usize = 4096;
pub const HUGE: usize = 2 << 20;

/// A private anonymous mapping (hugetlb if `huge`), unmapped on drop.
pub struct Mapping {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: plain memory whose address is shared between the faulting and serving threads on
// purpose; accesses are synchronised by the fault protocol.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(len: usize, huge: bool) -> Mapping {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if huge {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: a fresh mapping at an address of the kernel's choice.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap (huge {huge}): {} (reserve huge pages: echo 128 > /proc/sys/vm/nr_hugepages)",
            std::io::Error::last_os_error()
        );
        Mapping { ptr: p.cast(), len }
    }

    /// A mapping with every page present (written once).
    pub fn populated(len: usize, huge: bool) -> Mapping {
        let m = Mapping::new(len, huge);
        // SAFETY: our own mapping.
        unsafe { ptr::write_bytes(m.ptr, 0x5a, len) };
        m
    }

    pub fn addr(&self) -> *mut c_void {
        self.ptr.cast()
    }

    pub fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset < self.len);
        // SAFETY: inside the mapping.
        unsafe { self.ptr.add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
