//! The page server on hugetlbfs with exactly one free huge page: a fault on a page that has
//! no reservation (a `MAP_NORESERVE` mapping, or a hole punched by `MADV_REMOVE`) is served,
//! from a source mapping not yet touched and from the zero mapping. A `COPY` whose source
//! faults inside the kernel takes a temporary huge page to copy into outside its lock, then
//! allocates the destination's: with one free page, the temporary takes it and the copy fails
//! with `ENOMEM`. The server maps what it copies from first.
//!
//! The temporary page comes from the global pool's free pages (a hugetlbfs mount's `size=`
//! limit does not count it), so the test brings the pool's unreserved free pages down to one:
//! it reserves the others itself (a hugetlb mapping, never touched) for the few milliseconds
//! of each fault. Its own test binary, so that no other test of this suite runs meanwhile.

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::serve::{serve_uffd, snapshot, zero_page};
use support::{machine_lacks, spawn_named, MemoryType};
use userfaultfd::serve::{MappedFile, Region as Served, Server};
use userfaultfd::RegisterMode;

const HUGE: usize = 2 << 20;

fn meminfo(key: &str) -> i64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/meminfo"))
}

/// Free huge pages that no mapping has reserved: what a temporary huge page is taken from.
fn unreserved_free() -> i64 {
    meminfo("HugePages_Free:") - meminfo("HugePages_Rsvd:")
}

/// A shared hugetlb mapping of `pages` pages, never touched: reserves them from the pool.
struct Hog {
    ptr: *mut libc::c_void,
    len: usize,
    _file: OwnedFd,
}

impl Hog {
    fn new(pages: usize) -> Option<Hog> {
        Hog::map(pages, libc::PROT_READ, 0)
    }

    /// `pages` huge pages of a new hugetlb memfd, mapped shared with `prot` and `flags`.
    fn map(pages: usize, prot: libc::c_int, flags: libc::c_int) -> Option<Hog> {
        let len = pages * HUGE;
        // SAFETY: the name is NUL-terminated.
        let fd = unsafe { libc::memfd_create(c"hog".as_ptr(), libc::MFD_HUGETLB) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor only we own.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate sizes our file.
        assert_eq!(unsafe { libc::ftruncate(fd, len as libc::off_t) }, 0);
        // SAFETY: a new mapping at an address of the kernel's choosing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | flags,
                fd,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Hog {
            ptr,
            len,
            _file: file,
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Reserves the unreserved free huge pages but one (others allocate and free meanwhile:
/// tries a few times); `None` if the pool would not settle at one.
fn leave_one_free() -> Option<Vec<Hog>> {
    let mut hogs = Vec::new();
    for _ in 0..50 {
        let spare = unreserved_free();
        if spare == 1 {
            return Some(hogs);
        }
        if spare > 1 {
            hogs.extend(Hog::new(spare as usize - 1));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    None
}

/// A memfd holding the snapshot's data pages (its zero pages are holes: served from the zero
/// mapping).
fn snapshot_file(expected: &[u8], ps: usize) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"snapshot".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor only we own.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(expected.len() as u64).unwrap();
    for (i, page) in expected.chunks(ps).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(page, (i * ps) as u64).unwrap();
        }
    }
    file
}

/// Serves page `page` of `region` while the pool has one unreserved free huge page; returns
/// what it read.
fn fault_with_one_free_page(server: &Server, region: usize, page: usize) -> Vec<u8> {
    let Some(hogs) = leave_one_free() else {
        panic!("the huge page pool did not settle at one free page (others allocating)");
    };
    let faults = server.stats().faults;
    let toucher = spawn_named("faulting", move || {
        // SAFETY: a page of the test's mapping, served by the server.
        unsafe { std::slice::from_raw_parts((region + page * HUGE) as *const u8, HUGE) }.to_vec()
    });
    // Give the pages back as soon as the fault is served or the server gave up.
    let deadline = Instant::now() + support::TIMEOUT;
    while server.stats().faults == faults && !server.is_stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(hogs);
    // Before the fix: "placing pages (UFFDIO_COPY) ... ENOMEM".
    let outcome = server.outcome();
    assert!(
        outcome.is_none(),
        "page {page}: the server stopped: {outcome:?}"
    );
    support::join_timeout(toucher)
}

#[test]
fn refault_with_one_free_huge_page() {
    let overcommit = std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .map_or(0, |s| s.trim().parse::<u64>().unwrap_or(0));
    if overcommit > 0 {
        // Surplus pages would be allocated for the destination: nothing to show.
        machine_lacks("vm.nr_overcommit_hugepages = 0 (surplus huge pages are allowed)");
        return;
    }
    let memory = MemoryType::Hugetlb;
    let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
        return;
    };
    if unreserved_free() < 3 {
        machine_lacks("3 free huge pages (echo 128 > /proc/sys/vm/nr_hugepages)");
        return;
    }
    // No reservations: each fault needs a free page of the pool.
    let region = Hog::map(4, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_NORESERVE)
        .expect("mapping 4 huge pages without reservation");
    let addr = region.ptr as usize;
    let expected = snapshot(4, HUGE);
    assert!(zero_page(3) && !zero_page(1));
    let file = snapshot_file(&expected, HUGE);
    // SAFETY: the test region holds no Rust object; the snapshot file (MappedFile::new's
    // contract) is the test's own, neither truncated nor written while mapped.
    let server = unsafe {
        Server::builder()
            .fault_around(HUGE) // one page per fault
            .region(Served::new(region.ptr, region.len).page_size(HUGE))
            .start(uffd, Arc::new(MappedFile::new(&file).unwrap()))
    }
    .unwrap();
    // Page 1 from the file's mapping, never touched by this process.
    let one = fault_with_one_free_page(&server, addr, 1);
    assert!(one == expected[HUGE..2 * HUGE], "page 1 differs");
    // A hole punched in page 1 (its page back in the pool), refaulted: zeros, from the zero
    // mapping.
    // SAFETY: discards a page of the test's mapping.
    let r = unsafe { libc::madvise((addr + HUGE) as *mut libc::c_void, HUGE, libc::MADV_REMOVE) };
    assert_eq!(r, 0, "MADV_REMOVE: {}", std::io::Error::last_os_error());
    let again = fault_with_one_free_page(&server, addr, 1);
    assert!(
        again.iter().all(|&b| b == 0),
        "the refaulted hole is not zeros"
    );
    let finished = server.stop();
    assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
    drop(finished);
    drop(region);
    eprintln!("snapshot fd {}", file.as_raw_fd());
}
