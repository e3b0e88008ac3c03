//! Lazy restore with the page server: snapshot a region to a (sparse) file, then map a fresh
//! region and let `userfaultfd::serve` fill it from the file on demand, as a VM monitor
//! restores guest memory. Checks every byte, discards a page (it reads as zeros afterwards,
//! not as the snapshot), and prints the server's statistics.
//!
//! Run: `cargo run --example lazy_restore [MiB]` (default 64).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use userfaultfd::serve::{MappedFile, Region, Server};
use userfaultfd::UffdBuilder;

const PAGE: usize = 4096;

/// A fresh private anonymous mapping of `len` bytes.
fn map(len: usize) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks; nothing lives there.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

/// What page `i` holds: every fourth page is zeros (a hole in the snapshot file).
fn fill_page(i: usize, page: &mut [u8]) {
    if i % 4 == 3 {
        page.fill(0);
    } else {
        for (j, b) in page.iter_mut().enumerate() {
            *b = (i * 31 + j * 7 + 1) as u8;
        }
    }
}

/// Writes the region's non-zero pages to `file` at their offsets: zero pages stay holes.
fn snapshot(region: &[u8], file: &File) -> std::io::Result<()> {
    file.set_len(region.len() as u64)?;
    for (i, page) in region.chunks(PAGE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(page, (i * PAGE) as u64)?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(64), |a| a.parse())?;
    let len = mib << 20;

    // 1. The original memory, and its snapshot.
    let original = map(len);
    // SAFETY: our own mapping of `len` bytes, used as a byte slice only here.
    let original = unsafe { std::slice::from_raw_parts_mut(original, len) };
    for (i, page) in original.chunks_mut(PAGE).enumerate() {
        fill_page(i, page);
    }
    let path = std::env::temp_dir().join(format!("lazy-restore-{}.snap", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    snapshot(original, &file)?;
    std::fs::remove_file(&path)?; // the open file lives on
    println!("snapshot: {mib} MiB, every fourth page a hole");

    // 2. Restore: a fresh region served lazily from the snapshot.
    let restored = map(len);
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .require_features(userfaultfd::serve::EVENTS)
        .create()?;
    // SAFETY: the example's own snapshot file, neither truncated nor written while mapped.
    let source = Arc::new(unsafe { MappedFile::new(&file) }?);
    let start = Instant::now();
    // SAFETY: `restored` holds no Rust object: its pages are the snapshot's.
    let server = unsafe {
        Server::builder()
            .region(Region::new(restored.cast(), len))
            .start(uffd, source)?
    };

    // 3. The workload: touch everything (each fault brings in a 256 KiB block).
    // SAFETY: the restored mapping, filled by the server as it is read.
    let view = unsafe { std::slice::from_raw_parts(restored, len) };
    let same = view
        .chunks(PAGE)
        .zip(original.chunks(PAGE))
        .all(|(a, b)| a == b);
    let elapsed = start.elapsed();
    assert!(same, "the restored memory differs from the original");
    println!("restored and checked every byte in {elapsed:?}");

    // 4. A discarded page reads as zeros afterwards, never as the snapshot's stale contents.
    // SAFETY: discards one page of our own mapping.
    let r = unsafe { libc::madvise(restored.add(PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
    assert_eq!(r, 0);
    assert!(view[PAGE..2 * PAGE].iter().all(|&b| b == 0));
    println!("discarded page 1: reads as zeros");

    let finished = server.stop();
    finished.outcome?;
    let s = finished.stats;
    println!(
        "faults {}, pages copied {}, zero pages {}, around faults {}, EEXIST {}, EAGAIN retries {}, \
         pages removed {}",
        s.faults,
        s.pages_copied,
        s.pages_zeroed,
        s.fault_around_pages,
        s.eexist,
        s.eagain_retries,
        s.removed_pages
    );
    if let (Some(p50), Some(p99)) = (s.latency_quantile(0.5), s.latency_quantile(0.99)) {
        println!("fault latency (read to resolved): p50 < {p50:?}, p99 < {p99:?}");
    }
    drop(finished.uffd);
    // SAFETY: our own mappings, no longer used.
    unsafe {
        libc::munmap(original.as_mut_ptr().cast(), len);
        libc::munmap(restored.cast(), len);
    }
    Ok(())
}
