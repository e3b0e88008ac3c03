//! HTTP range restores over a real nginx on 127.0.0.1: a `serve` restore with every byte
//! checked, single flight, page-granular readiness, injected failures, the store stopped
//! and started again, the object replaced mid-restore, refusals and the deadline.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::nginx::Nginx;
use support::proxy::{Proxy, Rates};
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::{expected, write_snapshot};
use userfaultfd::serve::{Chunk, PageSource};
use userfaultfd_objstore::{open, Cause, FetchError, Options};

const MIB: u64 = 1 << 20;

fn options(chunk: usize) -> Options {
    let mut o = Options::default();
    o.chunk_size = chunk;
    o.parallelism = 4;
    o.request_timeout = Duration::from_secs(1);
    o.hedge_after = Some(Duration::from_millis(300));
    o.backoff_initial = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(200);
    o.deadline = Duration::from_secs(60);
    o
}

fn fetch_error(e: &std::io::Error) -> &FetchError {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<FetchError>())
        .unwrap_or_else(|| panic!("not a FetchError: {e}"))
}

/// A restore of a 32 MiB snapshot from nginx, touched in random order by 4 threads with 2
/// workers: every byte right; at most two requests per chunk (the part from the first
/// faulting page, and the part before it) however many faults hit a chunk.
#[test]
fn restore_over_nginx_checks_every_byte() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 32 * MIB;
    write_snapshot(&nginx.www().join("mem"), 1, len);
    let mut opts = options(1 << 20);
    opts.hedge_after = None;
    let source = open(&nginx.url("mem"), &opts).unwrap();
    assert_eq!(source.len(), len);
    let restore = Restore::start(source.clone(), len as usize, 2);
    let pages = len as usize / PAGE;
    restore
        .touch(&shuffled(pages, 7), 4, Duration::from_secs(60))
        .unwrap();
    assert_eq!(restore.mismatches(1), Vec::<usize>::new());
    let stats = source.stats();
    let chunks = len / MIB;
    assert!(
        stats.requests <= 2 * chunks,
        "{} requests for {chunks} chunks",
        stats.requests
    );
    assert!(stats.bytes_fetched <= len, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert!(source.complete());
}

/// Sequential touch: one request per chunk (each fault at a chunk's start), read-ahead.
#[test]
fn sequential_restore_one_request_per_chunk() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 2, len);
    let mut opts = options(1 << 20);
    opts.hedge_after = None;
    let source = open(&nginx.url("mem"), &opts).unwrap();
    let restore = Restore::start(source.clone(), len as usize, 1);
    let order: Vec<usize> = (0..len as usize / PAGE).collect();
    restore.touch(&order, 1, Duration::from_secs(60)).unwrap();
    assert_eq!(restore.mismatches(2), Vec::<usize>::new());
    assert_eq!(source.stats().requests, len / MIB, "{:?}", source.stats());
}

/// Read-ahead keeps going while faults land on read-ahead chunks: a fault in chunk 0 reads
/// chunks 1-4 ahead; once they have arrived, a fault in chunk 1 (no wait: its page is there)
/// queues chunk 5, and so on, without any fault missing. Before the fix, read-ahead looked at
/// missing pages only: faults on arrived chunks queued nothing, so the first fault past the
/// window waited for its chunk (two chunks in six of a sequential restore).
#[test]
fn read_ahead_follows_faults_on_arrived_chunks() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 5, len);
    let mut opts = options(1 << 20);
    opts.hedge_after = None;
    let source = open(&nginx.url("mem"), &opts).unwrap();
    let mut scratch = vec![0u8; PAGE];
    let wait_arrived = |chunks: std::ops::Range<u64>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !chunks
            .clone()
            .all(|k| source.arrived(k * MIB + MIB - PAGE as u64))
        {
            assert!(
                Instant::now() < deadline,
                "chunks {chunks:?} did not arrive"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    source.fetch(0, PAGE, &mut scratch).unwrap();
    wait_arrived(0..5);
    for k in 1..8u64 {
        // Chunk k has arrived (read ahead): the fault does not wait, and chunk k + 4 follows.
        assert!(source.arrived(k * MIB), "chunk {k} was not read ahead");
        let waits = source.stats().waits;
        source.fetch(k * MIB, PAGE, &mut scratch).unwrap();
        assert_eq!(source.stats().waits, waits, "the fault in chunk {k} waited");
        wait_arrived(k..k + 5);
    }
    assert_eq!(source.stats().requests, 1 + 4 + 7, "{:?}", source.stats());
}

/// Many threads faulting into one chunk send one request; a page is answered before its
/// chunk has arrived (the body stalls after its first bytes), as a prefix of what was asked.
#[test]
fn single_flight_and_page_readiness() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 8 * MIB;
    write_snapshot(&nginx.www().join("mem"), 3, len);
    let proxy = Proxy::start(nginx.port, Rates::default(), Duration::from_secs(10), 1);
    let mut opts = options(4 << 20);
    opts.hedge_after = None;
    opts.request_timeout = Duration::from_secs(30);
    let source = open(&proxy.url("mem"), &opts).unwrap();
    // Every request from now on stalls in the middle of its body.
    proxy.set_rates(Rates {
        stall: 1.0,
        ..Rates::default()
    });
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let source = source.clone();
            std::thread::spawn(move || {
                let mut scratch = vec![0u8; 1 << 20];
                match source.fetch(0, 1 << 20, &mut scratch).unwrap() {
                    Chunk::Data(d) => {
                        let mut want = vec![0u8; d.len()];
                        expected(3, 0, &mut want);
                        assert!(d == want.as_slice(), "wrong bytes");
                        d.len()
                    }
                    Chunk::Zeros(_) => panic!("zeros"),
                }
            })
        })
        .collect();
    for t in threads {
        let got = t.join().unwrap();
        assert!(got >= PAGE && got % PAGE == 0, "{got}");
    }
    // Answered while the chunk's body was stalled: before the stall ended, and the chunk is
    // not complete yet.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(!source.complete());
    // One request for chunk 0 however many threads fault into it, and one for chunk 1, read
    // ahead on the first fault in chunk 0.
    assert_eq!(source.stats().requests, 2, "{:?}", source.stats());
}

/// Under 10% 503s, 5% resets, 2% 5-second stalls and 1% truncated bodies, every page of a
/// restore verifies; each kind of fault was injected.
#[test]
fn restore_under_injected_failures() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 32 * MIB;
    write_snapshot(&nginx.www().join("mem"), 4, len);
    let rates = Rates {
        status_503: 0.10,
        reset: 0.05,
        stall: 0.02,
        truncate: 0.01,
    };
    let proxy = Proxy::start(nginx.port, rates, Duration::from_secs(5), 42);
    let opts = options(64 << 10);
    let source = open(&proxy.url("mem"), &opts).unwrap();
    let restore = Restore::start(source.clone(), len as usize, 2);
    let pages = len as usize / PAGE;
    restore
        .touch(&shuffled(pages, 11), 4, Duration::from_secs(90))
        .unwrap();
    assert_eq!(restore.mismatches(4), Vec::<usize>::new());
    let i = proxy.injected();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "requests {} 503 {} resets {} stalls {} truncated {}; {}",
        n(&i.requests),
        n(&i.status_503),
        n(&i.resets),
        n(&i.stalls),
        n(&i.truncations),
        source.progress_line()
    );
    assert!(n(&i.status_503) > 0 && n(&i.resets) > 0 && n(&i.stalls) > 0);
    assert!(n(&i.truncations) > 0);
    let stats = source.stats();
    assert!(stats.retries > 0, "{stats:?}");
}

/// The store stops mid-restore (nginx killed) and starts again a few seconds later: faults
/// wait, the restore completes, every byte right.
#[test]
fn store_stopped_and_started_mid_restore() {
    let Some(mut nginx) = Nginx::start() else {
        return;
    };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 5, len);
    let source = open(&nginx.url("mem"), &options(1 << 20)).unwrap();
    let restore = Restore::start(source.clone(), len as usize, 2);
    let pages = len as usize / PAGE;
    let order = shuffled(pages, 5);
    // The first quarter of the object first (16 chunks: read-ahead reaches chunk 7 at most).
    let first: Vec<usize> = order.iter().copied().filter(|&p| p < pages / 4).collect();
    restore.touch(&first, 2, Duration::from_secs(60)).unwrap();
    nginx.stop();
    let waiting = {
        let source = source.clone();
        std::thread::spawn(move || {
            let mut scratch = vec![0u8; PAGE];
            let started = Instant::now();
            // A page of a chunk nobody fetched yet.
            let r = source.fetch(len - 2 * MIB, PAGE, &mut scratch).map(|_| ());
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(source.stats().retries > 0, "{:?}", source.stats());
    nginx.restart();
    let (r, waited) = waiting.join().unwrap();
    r.unwrap();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    restore.touch(&order, 2, Duration::from_secs(60)).unwrap();
    assert_eq!(restore.mismatches(5), Vec::<usize>::new());
}

/// The object is replaced mid-restore: the fetches after it fail with `Changed`, naming the
/// object and the range; no page of the new version is ever served.
#[test]
fn object_replaced_mid_restore() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 8 * MIB;
    let path = nginx.www().join("mem");
    write_snapshot(&path, 6, len);
    let source = open(&nginx.url("mem"), &options(1 << 20)).unwrap();
    let mut scratch = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    // The first chunk arrives.
    let Chunk::Data(d) = source.fetch(0, PAGE, &mut scratch).unwrap() else {
        panic!()
    };
    expected(6, 0, &mut want[..PAGE]);
    assert_eq!(d, &want[..PAGE]);
    // A new version: another ETag (nginx's is mtime and length; the mtime moves on).
    std::thread::sleep(Duration::from_millis(1100));
    write_snapshot(&path, 7, len);
    let mut errors = 0;
    for chunk in 1..8u64 {
        match source.fetch(chunk * MIB, PAGE, &mut scratch) {
            Ok(Chunk::Data(d)) => {
                // Only bytes of the version opened, never of the new one.
                expected(6, chunk * MIB, &mut want[..d.len()]);
                assert_eq!(
                    d,
                    &want[..d.len()],
                    "chunk {chunk}: bytes of another version"
                );
            }
            Ok(Chunk::Zeros(_)) => panic!("zeros served"),
            Err(e) => {
                errors += 1;
                let f = fetch_error(&e);
                assert!(matches!(f.cause, Cause::Changed(_)), "{f}");
                assert_eq!(f.object, nginx.url("mem"));
                let text = e.to_string();
                assert!(
                    text.contains(&nginx.url("mem")) && text.contains("changed"),
                    "{text}"
                );
                assert!(text.contains(&format!("bytes {}-", chunk * MIB)), "{text}");
            }
        }
    }
    assert!(errors > 0);
    // A restore of the replaced object stops with the error: its server reports it.
    let source = open(&nginx.url("mem"), &options(1 << 20)).unwrap();
    let restore = Restore::start(source, len as usize, 1);
    std::thread::sleep(Duration::from_millis(1100));
    write_snapshot(&path, 8, len);
    let e = restore
        .touch(&[(len as usize / PAGE) - 1], 1, Duration::from_secs(30))
        .unwrap_err();
    assert!(e.contains("changed") && e.contains("/mem"), "{e}");
}

/// A 404 fails at once, naming the object and the status; a store that never answers fails
/// when the deadline passes, naming the last failure.
#[test]
fn refusal_and_deadline() {
    let Some(nginx) = Nginx::start() else { return };
    let e = open(&nginx.url("absent"), &options(1 << 20)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("404") && text.contains("/absent"), "{text}");

    let port = support::free_port();
    let mut opts = options(1 << 20);
    opts.deadline = Duration::from_secs(1);
    let started = Instant::now();
    let e = open(&format!("http://127.0.0.1:{port}/mem"), &opts).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("deadline passed"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));

    assert!(open("ftp://x/y", &opts)
        .unwrap_err()
        .to_string()
        .contains("not an http"));
    assert!(open("s3://bucket", &opts).is_err());
    let _ = Arc::new(0);
}

/// A store that trickles its bytes, every piece inside the request timeout, fails the range
/// at the deadline rather than holding the fault until the range is done: 4 MiB at 16 KiB
/// per 100 ms would take some 26 s; the deadline is 1 s.
#[test]
fn a_trickling_store_fails_at_the_deadline() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 4 * MIB;
    write_snapshot(&nginx.www().join("mem"), 17, len);
    let proxy = Proxy::start(nginx.port, Rates::default(), Duration::from_secs(5), 1);
    let mut opts = options(len as usize);
    opts.hedge_after = None;
    opts.request_timeout = Duration::from_secs(10);
    opts.deadline = Duration::from_secs(1);
    let source = open(&proxy.url("mem"), &opts).unwrap();
    proxy.set_trickle(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut scratch = vec![0u8; PAGE];
    // The first page arrives with the first piece (pages are served as their bytes come);
    // the last one waits on the same trickling response.
    assert!(source.fetch(0, PAGE, &mut scratch).is_ok());
    let e = source
        .fetch(len - PAGE as u64, PAGE, &mut scratch)
        .map(|_| ())
        .unwrap_err();
    let took = started.elapsed();
    let f = fetch_error(&e);
    assert!(
        matches!(&f.cause, Cause::Deadline(last) if last.contains("short at the deadline")),
        "{f}"
    );
    assert!(f.to_string().contains("/mem"), "{f}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A recorded working set is fetched from the start, in order, before any fault; nothing
/// else without `background`; with it, the whole object, every byte right.
#[test]
fn working_set_prefetch_then_background() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 9, len);
    let mut opts = options(1 << 20);
    opts.hedge_after = None;
    let ws = [
        5 * MIB + 8192,
        2 * MIB,
        9 * MIB + 4096 * 100,
        2 * MIB + 4096,
    ];
    opts.working_set = ws.to_vec();
    let source = open(&nginx.url("mem"), &opts).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !ws.iter().all(|&o| source.arrived(o)) {
        assert!(Instant::now() < until, "the working set did not arrive");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let stats = source.stats();
    assert_eq!(stats.chunks_fetched, 3, "{stats:?}");
    assert_eq!(stats.waits, 0, "{stats:?}");
    assert!(!source.arrived(0) && !source.arrived(15 * MIB));
    drop(source);

    opts.background = true;
    let source = open(&nginx.url("mem"), &opts).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !source.complete() {
        assert!(
            Instant::now() < until,
            "the background fetch did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let restore = Restore::start(source.clone(), len as usize, 1);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 3),
            2,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(restore.mismatches(9), Vec::<usize>::new());
    let stats = source.stats();
    assert_eq!(stats.waits, 0, "{stats:?}");
    assert_eq!(stats.bytes_fetched, len, "{stats:?}");
}

/// The store goes down for good mid-restore: the faulting thread waits (no zeros), and when
/// the deadline passes the server stops with the error, which names the object, the range
/// and the last failure; the faulting thread is still blocked (ErrorPolicy::Stop).
#[test]
fn deadline_mid_restore_stops_the_server() {
    let Some(mut nginx) = Nginx::start() else {
        return;
    };
    let len = 8 * MIB;
    write_snapshot(&nginx.www().join("mem"), 10, len);
    let mut opts = options(1 << 20);
    opts.deadline = Duration::from_secs(2);
    let source = open(&nginx.url("mem"), &opts).unwrap();
    let restore = Restore::start(source.clone(), len as usize, 1);
    restore.touch(&[0], 1, Duration::from_secs(30)).unwrap();
    nginx.stop();
    let started = Instant::now();
    let e = restore
        .touch(&[(len as usize / PAGE) - 1], 1, Duration::from_secs(60))
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(2), "{e}");
    assert!(e.contains("deadline passed") && e.contains("/mem"), "{e}");
    // Chunk 7: the part from the faulting (last) page, or the part before it.
    let last = len - PAGE as u64;
    assert!(
        e.contains(&format!("bytes {last}-")) || e.contains(&format!("bytes {}-", 7 * MIB)),
        "{e}"
    );
    assert!(restore.server().is_stopped());
}

/// A request whose answer stalls gets a hedge after `hedge_after`: the fault is answered by
/// the second request, long before the first would have answered.
#[test]
fn slow_request_is_hedged() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 4 * MIB;
    write_snapshot(&nginx.www().join("mem"), 11, len);
    let proxy = Proxy::start(nginx.port, Rates::default(), Duration::from_secs(20), 1);
    let mut opts = options(1 << 20);
    opts.hedge_after = Some(Duration::from_millis(200));
    opts.request_timeout = Duration::from_secs(60);
    let source = open(&proxy.url("mem"), &opts).unwrap();
    proxy.stall_next(1);
    let started = Instant::now();
    let mut scratch = vec![0u8; PAGE];
    let mut want = vec![0u8; PAGE];
    let Chunk::Data(d) = source.fetch(MIB, PAGE, &mut scratch).unwrap() else {
        panic!("zeros")
    };
    expected(11, MIB, &mut want);
    assert_eq!(d, want.as_slice());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let stats = source.stats();
    assert_eq!((stats.hedges, stats.requests), (1, 2), "{stats:?}");
}

/// A restore into each memory type: private anonymous, shmem, and hugetlbfs (2 MiB pages:
/// `Options::page_size`, so that every answer is whole huge pages); every byte right.
#[test]
fn restore_on_every_memory_type() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 12, len);
    for memory in Memory::ALL {
        let mut opts = options(4 << 20);
        opts.page_size = memory.page_size();
        let source = open(&nginx.url("mem"), &opts).unwrap();
        let Some(restore) = Restore::start_on(memory, source, len as usize, 2, None) else {
            continue;
        };
        restore
            .touch(
                &shuffled(len as usize / PAGE, 12),
                2,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
        assert_eq!(restore.mismatches(12), Vec::<usize>::new(), "{memory:?}");
    }
}

/// A one-line store on 127.0.0.1: every request gets `answer`. Its URL (path `/mem`).
fn answering(answer: &'static [u8]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mem", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            // The request's head, then the answer whatever it asked.
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = conn.write_all(answer);
        }
    });
    url
}

/// A store that reports a length no address space can map (`Content-Range: bytes
/// 0-1/18446744073709551615`, from a broken or hostile server) is refused by `open` with an
/// error naming the object and the length: never an overflow panic or an allocation abort.
#[test]
fn a_length_beyond_the_address_space_is_refused() {
    let url = answering(
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/18446744073709551615\r\n\
          Content-Length: 2\r\nETag: \"x\"\r\nConnection: close\r\n\r\nab",
    );
    let mut o = options(4 << 20);
    o.deadline = Duration::from_secs(10);
    let e = match open(&url, &o) {
        Ok(_) => panic!("{url}: a length of 2^64-1 bytes was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&url) && e.contains("18446744073709551615") && e.contains("address space"),
        "{e}"
    );
}

/// A store answering every request with `Content-Range: bytes 0-0/{len}` and one byte.
fn claiming(len: u64) -> String {
    answering(
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/{len}\r\n\
             Content-Length: 1\r\nETag: \"x\"\r\nConnection: close\r\n\r\na"
        )
        .into_bytes()
        .leak(),
    )
}

/// Lengths this address space could name but no machine can hold (64 PiB, 1 PiB, 128 TiB):
/// `open` fails with an error naming the object and the length — the bookkeeping (page
/// bitmap, chunk states) is allocated fallibly, the buffer's mapping checked — never an
/// allocation abort.
#[test]
fn a_length_no_machine_can_hold_fails_open_naming_it() {
    for len in [1u64 << 56, 1 << 50, 1 << 47] {
        let url = claiming(len);
        let mut o = options(4 << 20);
        o.deadline = Duration::from_secs(10);
        let e = match open(&url, &o) {
            Ok(_) => panic!("{url}: a length of {len} bytes was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&url) && e.contains(&format!("an object of {len} bytes")),
            "{e}"
        );
        eprintln!("{e}");
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        << 10
}

/// An object of 64 TiB in 4 KiB chunks (16 Gi chunks: 50 GiB of bookkeeping if it were
/// written) either opens without making its bookkeeping resident — zeroed allocations are
/// fresh pages, untouched until chunks arrive — or, where the allocator refuses that much,
/// fails naming the object and its length. Never an abort, never an OOM kill.
#[test]
fn a_huge_object_opens_without_touching_its_bookkeeping() {
    let len = 64u64 << 40;
    let url = claiming(len);
    let mut o = options(PAGE);
    o.deadline = Duration::from_secs(10);
    let before = rss();
    match open(&url, &o) {
        Ok(source) => {
            assert_eq!(source.len(), len);
            let grown = rss().saturating_sub(before);
            // Other tests of this binary run meanwhile: a generous bound, far below 50 GiB.
            assert!(grown < 1 << 30, "{grown} bytes became resident");
            eprintln!("opened; {grown} bytes became resident");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains(&url) && e.contains(&format!("an object of {len} bytes")),
                "{e}"
            );
            eprintln!("refused: {e}");
        }
    }
}

/// `Duration::MAX` as the deadline and the progress period ("never") is accepted: nothing
/// overflows computing a deadline, when opening, fetching or printing progress.
#[test]
fn unbounded_durations_are_accepted() {
    let mut answer = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{}/{PAGE}\r\n\
         Content-Length: {PAGE}\r\nETag: \"x\"\r\nConnection: close\r\n\r\n",
        PAGE - 1
    )
    .into_bytes();
    answer.extend(std::iter::repeat_n(0x5a, PAGE));
    let url = answering(answer.leak());
    let mut o = options(PAGE);
    o.deadline = Duration::MAX;
    o.progress = Some(Duration::MAX);
    let source = open(&url, &o).unwrap_or_else(|e| panic!("{e}"));
    let mut scratch = vec![0u8; PAGE];
    match source.fetch(0, PAGE, &mut scratch) {
        Ok(Chunk::Data(d)) => assert!(d.len() == PAGE && d.iter().all(|&b| b == 0x5a)),
        Ok(_) => panic!("{url}: not the page's data"),
        Err(e) => panic!("{url}: {e}"),
    }
}
