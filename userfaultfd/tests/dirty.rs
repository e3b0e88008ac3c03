//! Dirty-page tracking (`WP_ASYNC` + `PAGEMAP_SCAN`): what is reported, on every memory type.
//! The pages written are reported exactly, merged, and re-armed; reads are not (except the
//! documented first access of a hugetlbfs page unpopulated when armed); writes produce no
//! events; bounded batches lose nothing; `MADV_DONTNEED`, and changes made other than through
//! the tracked mapping, behave as the module docs say; a transparent huge page is reported per base page.

mod support;

use std::os::fd::AsRawFd;

use support::dirty::{collect, merged, peek, touch, tracker, Rng};
use support::{machine_lacks, MemoryType, Region};
use userfaultfd::Errno;

/// Pages per test region: fewer on hugetlbfs (2 MiB each, from the reserved pool).
fn pages_for(memory: MemoryType) -> usize {
    if memory == MemoryType::Hugetlb {
        8
    } else {
        256
    }
}

#[test]
fn written_pages_are_reported_exactly_and_rearmed() {
    for memory in MemoryType::ALL {
        let Some(mut tracker) = tracker(512) else {
            return;
        };
        let pages = pages_for(memory);
        let Some(region) = Region::new(memory, pages) else {
            continue;
        };
        // Half the pages populated before tracking starts: both kinds must start clean.
        let mut populated = vec![false; pages];
        for p in (0..pages).step_by(2) {
            touch(&region, p, 1);
            populated[p] = true;
        }
        tracker.track(region.addr(), region.len()).unwrap();
        assert_eq!(
            collect(&mut tracker, &region),
            [],
            "{memory:?}: clean after track"
        );

        let mut rng = Rng(0x0d1e_2026 + pages as u64);
        for round in 0..4 {
            let written = rng.subset(pages, 3);
            let read = rng.subset(pages, 3);
            for &p in &read {
                peek(&region, p);
            }
            for &p in &written {
                touch(&region, p, round as u8 + 2);
            }
            // Reads are not writes; on hugetlbfs the first access to a huge page that was not
            // populated when armed is reported too (the kernel cannot protect a hole there).
            let mut expected: Vec<usize> = written.clone();
            if memory == MemoryType::Hugetlb {
                expected.extend(read.iter().filter(|&&p| !populated[p]));
                expected.sort_unstable();
                expected.dedup();
            }
            for &p in written.iter().chain(&read) {
                populated[p] = true;
            }
            assert_eq!(
                collect(&mut tracker, &region),
                merged(&region, &expected),
                "{memory:?}: round {round}, wrote {written:?}, read {read:?}"
            );
            assert_eq!(collect(&mut tracker, &region), [], "{memory:?}: re-armed");
        }
        // The writes were resolved in the kernel: nothing to read on the descriptor.
        assert!(tracker.uffd().read_event().unwrap().is_none(), "{memory:?}");
    }
}

#[test]
fn a_batch_smaller_than_the_ranges_still_reports_every_range() {
    for memory in MemoryType::ALL {
        // Three ranges per kernel call; the walk resumes from where each call stopped.
        let Some(mut tracker) = tracker(3) else {
            return;
        };
        let Some(region) = Region::new(memory, pages_for(memory)) else {
            continue;
        };
        tracker.track(region.addr(), region.len()).unwrap();
        // Every other page: pages/2 separate ranges (4 on hugetlbfs, 128 otherwise).
        let written: Vec<usize> = (0..region.pages()).step_by(2).collect();
        for &p in &written {
            touch(&region, p, 9);
        }
        assert_eq!(
            collect(&mut tracker, &region),
            merged(&region, &written),
            "{memory:?}"
        );
        assert_eq!(collect(&mut tracker, &region), [], "{memory:?}: re-armed");
    }
}

/// A collect over a range whose second half is not tracked fails (`EPERM` at the first
/// untracked page), but the kernel has re-armed the written pages of the tracked half before
/// it stopped: they must be in `out`, or those writes are lost (a later collect would not
/// see them). With batches of one range too, where the failure comes in a later call.
#[test]
fn a_collect_that_fails_part_way_reports_what_it_rearmed() {
    for memory in MemoryType::ALL {
        for batch in [64, 1] {
            let Some(mut tracker) = tracker(batch) else {
                return;
            };
            let Some(region) = Region::new(memory, 8) else {
                continue;
            };
            let half = 4 * region.page_size();
            tracker.track(region.addr(), half).unwrap();
            touch(&region, 0, 5);
            touch(&region, 2, 5);
            touch(&region, 6, 5); // untracked
            let mut out = Vec::new();
            let err = tracker
                .collect_written(region.addr(), region.len(), &mut out)
                .unwrap_err();
            assert_eq!(err.errno(), Some(Errno::EPERM), "{memory:?}: {err}");
            assert_eq!(
                out,
                merged(&region, &[0, 2]),
                "{memory:?}, batch {batch}: the writes re-armed before the failure"
            );
            // They were re-armed: the tracked half is clean, and a new write shows.
            let mut again = Vec::new();
            tracker
                .collect_written(region.addr(), half, &mut again)
                .unwrap();
            assert_eq!(again, [], "{memory:?}, batch {batch}: re-armed");
            touch(&region, 3, 6);
            tracker
                .collect_written(region.addr(), half, &mut again)
                .unwrap();
            assert_eq!(again, merged(&region, &[3]), "{memory:?}, batch {batch}");
        }
    }
}

/// When the untracked part comes first, the collect fails before reaching the tracked pages:
/// nothing is reported and nothing re-armed, so their writes are still there to collect.
#[test]
fn a_collect_that_fails_first_leaves_the_writes_pending() {
    for memory in MemoryType::ALL {
        let Some(mut tracker) = tracker(64) else {
            return;
        };
        let Some(region) = Region::new(memory, 8) else {
            continue;
        };
        let half = 4 * region.page_size();
        tracker.track(region.page(4).cast(), half).unwrap();
        touch(&region, 5, 5);
        let mut out = Vec::new();
        let err = tracker
            .collect_written(region.addr(), region.len(), &mut out)
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EPERM), "{memory:?}: {err}");
        assert_eq!(out, [], "{memory:?}");
        tracker
            .collect_written(region.page(4).cast(), half, &mut out)
            .unwrap();
        assert_eq!(out, merged(&region, &[5]), "{memory:?}: still pending");
    }
}

#[test]
fn dontneed_is_reported_where_it_loses_data() {
    for memory in MemoryType::ALL {
        let Some(mut tracker) = tracker(64) else {
            return;
        };
        let Some(region) = Region::new(memory, 8) else {
            continue;
        };
        for p in 0..8 {
            touch(&region, p, 7);
        }
        tracker.track(region.addr(), region.len()).unwrap();
        // SAFETY: drops pages 2 and 3 of our own mapping (nothing Rust-owned lives there).
        let r = unsafe {
            libc::madvise(
                region.page(2).cast(),
                2 * region.page_size(),
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(r, 0, "{memory:?}: {}", std::io::Error::last_os_error());
        let reported = collect(&mut tracker, &region);
        if memory == MemoryType::Anonymous {
            // The private pages are gone: they read as zero now, a change to report.
            assert_eq!(reported, merged(&region, &[2, 3]), "{memory:?}");
            assert_eq!(peek(&region, 2), 0);
        } else {
            // The data stays in the file and the protection in the page table: unchanged.
            assert_eq!(reported, [], "{memory:?}");
            assert_eq!(peek(&region, 2), 7, "{memory:?}");
        }
        assert_eq!(collect(&mut tracker, &region), [], "{memory:?}: re-armed");
    }
}

#[test]
fn changes_not_made_through_the_tracked_mapping_are_not_reported() {
    for memory in [MemoryType::Shmem, MemoryType::Hugetlb] {
        let Some(mut tracker) = tracker(64) else {
            return;
        };
        let Some(region) = Region::new(memory, 4) else {
            continue;
        };
        for p in 0..4 {
            touch(&region, p, 1);
        }
        tracker.track(region.addr(), region.len()).unwrap();
        // A write through another mapping of the same file.
        let other = region.second_view();
        touch(&other, 1, 2);
        assert_eq!(peek(&region, 1), 2, "{memory:?}: the tracked view sees it");
        // write(2) to the file (shmem only: hugetlbfs files have no write(2)).
        if memory == MemoryType::Shmem {
            let fd = region.file().unwrap().as_raw_fd();
            let offset = (2 * region.page_size() + 17) as libc::off_t;
            // SAFETY: writes one byte from a local to our own memfd.
            let n = unsafe { libc::pwrite(fd, [3u8].as_ptr().cast(), 1, offset) };
            assert_eq!(n, 1, "{}", std::io::Error::last_os_error());
            assert_eq!(peek(&region, 2), 3, "{memory:?}: the tracked view sees it");
        }
        // Punching a hole (page 0 reads as zero afterwards).
        // SAFETY: frees page 0 of our own memfd; nothing Rust-owned lives there.
        let r =
            unsafe { libc::madvise(region.page(0).cast(), region.page_size(), libc::MADV_REMOVE) };
        assert_eq!(r, 0, "{memory:?}: {}", std::io::Error::last_os_error());
        assert_eq!(peek(&region, 0), 0, "{memory:?}: the hole reads as zero");
        // None went through the tracked page table.
        assert_eq!(collect(&mut tracker, &region), [], "{memory:?}");
        touch(&region, 3, 3);
        assert_eq!(
            collect(&mut tracker, &region),
            merged(&region, &[3]),
            "{memory:?}"
        );
    }
}

/// The anonymous huge pages in the mapping that contains `addr`, from /proc/self/smaps.
fn anon_huge_kib(addr: usize) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading /proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = head.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    0
}

#[test]
fn a_transparent_huge_page_is_reported_per_base_page() {
    let Some(mut tracker) = tracker(64) else {
        return;
    };
    // A PMD maps 2 MiB with 4 KiB base pages (x86-64, and arm64 with 4 KiB pages).
    const HUGE: usize = 2 << 20;
    let region = Region::new(MemoryType::Anonymous, 3 * HUGE / 4096).unwrap();
    assert_eq!(
        region.page_size(),
        4096,
        "this test assumes 4 KiB base pages"
    );
    let aligned = (region.ptr() as usize).next_multiple_of(HUGE);
    // SAFETY: asks for huge pages on the 2 MiB-aligned middle of our own mapping.
    let r = unsafe { libc::madvise(aligned as *mut libc::c_void, HUGE, libc::MADV_HUGEPAGE) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    for offset in (0..HUGE).step_by(4096) {
        // SAFETY: inside the mapping.
        unsafe { ((aligned + offset) as *mut u8).write_volatile(1) };
    }
    if anon_huge_kib(aligned) < 2048 {
        machine_lacks("a transparent huge page (THP disabled, or memory too fragmented)");
        return;
    }
    tracker.track(aligned as *mut libc::c_void, HUGE).unwrap();
    let byte = aligned + 5 * 4096 + 123;
    // SAFETY: inside the mapping.
    unsafe { (byte as *mut u8).write_volatile(2) };
    let mut out = Vec::new();
    tracker
        .collect_written(aligned as *mut libc::c_void, HUGE, &mut out)
        .unwrap();
    let page = aligned + 5 * 4096;
    assert_eq!(
        out,
        vec![page..page + 4096],
        "one base page, not the huge page"
    );
}
