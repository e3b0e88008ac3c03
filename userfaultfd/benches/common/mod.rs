//! What the benchmarks share: settings from the environment, medians, and mappings.
#![allow(dead_code)] // each benchmark uses part of it

use std::time::Duration;

/// The whole number in environment variable `name`, or `default`; a malformed value is an
/// error, not the default.
pub fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A readable, writable mapping, unmapped on drop.
pub struct Map {
    /// Its start.
    pub ptr: *mut u8,
    /// Its length.
    pub len: usize,
}

// SAFETY: plain memory, shared by the touching threads on purpose.
unsafe impl Send for Map {}
// SAFETY: as above.
unsafe impl Sync for Map {}

impl Map {
    /// Maps `len` bytes with `flags` (of `fd`, or -1).
    pub fn new(len: usize, flags: libc::c_int, fd: libc::c_int) -> Map {
        // SAFETY: a new mapping at an address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Map {
            ptr: ptr.cast(),
            len,
        }
    }

    /// A private anonymous mapping that reserves no swap.
    pub fn anon(len: usize) -> Map {
        Map::new(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
