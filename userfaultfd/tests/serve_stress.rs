//! A stress run of the page server, on every memory type: threads fault on random pages while
//! another discards some of them (REMOVE) over and over and the background fill runs; the
//! server is stopped while the fill is still going. Every page read is checked: a page never
//! discarded holds the source's bytes; a discarded one holds them or zeros, never a mix; and
//! after a final discard, it reads as zeros. Bounded by time: `SERVE_STRESS_SECS` per memory
//! type (default 1; ci/test runs 3); 0 mismatches, and every thread joins (no hang).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::dirty::Rng;
use support::serve::{serve_uffd, snapshot, TestSource};
use support::{join_timeout, spawn_named, MemoryType, Region};
use userfaultfd::serve::{Region as Served, Server};
use userfaultfd::RegisterMode;

/// Pages discarded by the discarding thread.
fn discardable(page: usize) -> bool {
    page % 5 == 2
}

fn seconds() -> f64 {
    std::env::var("SERVE_STRESS_SECS")
        .map(|v| v.parse().expect("SERVE_STRESS_SECS: a number of seconds"))
        .unwrap_or(1.0)
}

/// Checks page `p` as read now: the source's bytes, or (if discardable) all zeros.
fn check(region: &Region, expected: &[u8], p: usize) -> Result<(), String> {
    let ps = region.page_size();
    // SAFETY: a page of our own served mapping.
    let got = unsafe { std::slice::from_raw_parts(region.page(p), ps) };
    let want = &expected[p * ps..(p + 1) * ps];
    if got == want || (discardable(p) && got.iter().all(|&b| b == 0)) {
        return Ok(());
    }
    Err(format!(
        "page {p}: neither the source's bytes nor (discarded) zeros"
    ))
}

fn stress(memory: MemoryType, pages: usize, secs: f64) {
    let Some(uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
        return;
    };
    let Some(region) = Region::new(memory, pages) else {
        return;
    };
    let region = Arc::new(region);
    let ps = region.page_size();
    let expected = Arc::new(snapshot(pages, ps));
    let advice = if memory == MemoryType::Anonymous {
        libc::MADV_DONTNEED
    } else {
        libc::MADV_REMOVE
    };
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut uffd = Some(uffd);
    while Instant::now() < deadline || rounds == 0 {
        rounds += 1;
        let uffd = match uffd.take() {
            Some(u) => u,
            None => serve_uffd(memory, RegisterMode::MISSING).unwrap(),
        };
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .workers(1 + rounds % 3)
                .fault_around(
                    ([0, 4, 64][rounds % 3] * ps).min(userfaultfd::serve::MAX_FAULT_AROUND),
                )
                .background_fill(rounds % 2 == 0)
                .region(Served::new(region.addr(), region.len()).page_size(ps))
                .start(uffd, Arc::new(TestSource::new(expected.to_vec(), ps)))
        }
        .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|t| {
                let (region, expected) = (Arc::clone(&region), Arc::clone(&expected));
                spawn_named(&format!("reader-{t}"), move || {
                    let mut rng = Rng(0x9e37_79b9 + (rounds * 3 + t) as u64);
                    for _ in 0..pages {
                        check(&region, &expected, rng.next() as usize % pages)?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        let discarder = {
            let (region, done) = (Arc::clone(&region), Arc::clone(&done));
            spawn_named("discarder", move || {
                let mut rng = Rng(rounds as u64 + 1);
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    let p = (rng.next() as usize % (pages / 5)) * 5 + 2;
                    // SAFETY: discards a page of our own mapping.
                    let r = unsafe { libc::madvise(region.page(p).cast(), ps, advice) };
                    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
                    n += 1;
                    // A storm of discards, with room for the faults to be served: while a
                    // discard's event is pending the kernel refuses every placement, so a
                    // discarder that never pauses can starve the faults (Linux 6.1 does not
                    // leave the server a window between two back-to-back discards; 6.12 does).
                    std::thread::sleep(Duration::from_micros(50));
                }
                n
            })
        };
        let results: Vec<_> = readers.into_iter().map(join_timeout).collect();
        done.store(true, Ordering::Relaxed);
        let discards = join_timeout(discarder);
        // The final discard: afterwards discardable pages read zeros, the rest the source.
        for p in (0..pages).filter(|&p| discardable(p)) {
            // SAFETY: discards a page of our own mapping.
            let r = unsafe { libc::madvise(region.page(p).cast(), ps, advice) };
            assert_eq!(r, 0);
        }
        let mut mismatches: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        for p in 0..pages {
            // SAFETY: a page of our own served mapping.
            let got = unsafe { std::slice::from_raw_parts(region.page(p), ps) };
            let ok = if discardable(p) {
                got.iter().all(|&b| b == 0)
            } else {
                got == &expected[p * ps..(p + 1) * ps]
            };
            if !ok {
                mismatches.push(format!("page {p} after the final discard"));
            }
        }
        // Stopped while the background fill may still run.
        let finished = server.stop();
        assert!(finished.outcome.is_ok(), "{:?}", finished.outcome);
        assert!(
            mismatches.is_empty(),
            "{memory:?} round {rounds}: {mismatches:?}; {} discards; {:?}",
            discards,
            finished.stats
        );
        drop(finished.uffd);
        // SAFETY: empties our own mapping for the next round (no descriptor is open).
        let r = unsafe { libc::madvise(region.addr(), region.len(), advice) };
        assert_eq!(r, 0);
    }
    eprintln!("{memory:?}: {rounds} rounds, 0 mismatches");
}

#[test]
fn serve_stress() {
    let secs = seconds();
    for memory in MemoryType::ALL {
        let pages = if memory == MemoryType::Hugetlb {
            10
        } else {
            2048
        };
        stress(memory, pages, secs);
    }
}
