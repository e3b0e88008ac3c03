//! Plays Firecracker's side of the external page-fault handler protocol against
//! `examples/firecracker_handler` (its modules, run in this process): creates the userfaultfd
//! as Firecracker does, registers guest memory (anonymous, memfd, 2 MiB hugetlbfs), sends the
//! region list and the descriptor over a Unix socket, then faults every page from several
//! threads, discards ranges as a balloon does (MADV_DONTNEED / MADV_REMOVE), races discards
//! against faults, and checks every byte: the snapshot where not discarded, zeros where
//! discarded.

mod support;

#[path = "../examples/firecracker_handler/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Sends `json` with `fd` attached in one message, as Firecracker does.
fn send_with_fd(stream: &UnixStream, json: &[u8], fd: Option<RawFd>) {
    let mut iov = libc::iovec {
        iov_base: json.as_ptr() as *mut _,
        iov_len: json.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one cmsg of CMSG_SPACE(4) bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        }
    }
    // SAFETY: `msg` points at live buffers.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    assert_eq!(
        n as usize,
        json.len(),
        "{}",
        std::io::Error::last_os_error()
    );
}

#[path = "../examples/firecracker_handler/json.rs"]
#[allow(dead_code)]
mod json;

#[path = "../examples/firecracker_handler/handler.rs"]
#[allow(dead_code)]
mod handler;

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{privileged, MemoryType, Region};
use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};

/// The snapshot's byte at file offset `offset`: never zero, so zeros are told apart.
fn snapshot_byte(offset: usize) -> u8 {
    let page = offset >> 12;
    ((page.wrapping_mul(131) ^ (offset & 0xfff) ^ (offset >> 21)) % 251) as u8 + 1
}

/// Guest memory as Firecracker lays it out: one region per memory type.
struct Guest {
    regions: Vec<(Region, usize)>, // (mapping, offset in the snapshot file)
}

/// The userfaultfd Firecracker creates: non-blocking, close-on-exec, EVENT_REMOVE, able to
/// serve faults KVM takes in kernel mode (which needs root; unprivileged runs use a
/// user-mode-only one, enough for the faults this test makes).
fn firecracker_uffd() -> Uffd {
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(!privileged())
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .expect("creating the userfaultfd as Firecracker does")
}

/// Discards `pages` pages from page `first` of `region` the way Firecracker's balloon does:
/// `MADV_DONTNEED` on anonymous memory, `MADV_REMOVE` on shared memory.
fn balloon_discard(region: &Region, first: usize, pages: usize) {
    let advice = match region.memory() {
        MemoryType::Anonymous => libc::MADV_DONTNEED,
        _ => libc::MADV_REMOVE,
    };
    // SAFETY: pages of our test mapping, which holds no Rust object.
    let r = unsafe {
        libc::madvise(
            region.page(first).cast(),
            pages * region.page_size(),
            advice,
        )
    };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
}

/// The region list as Firecracker writes it.
fn region_json(guest: &Guest) -> String {
    let items: Vec<String> = guest
        .regions
        .iter()
        .map(|(r, offset)| {
            format!(
                "{{\"base_host_virt_addr\":{},\"size\":{},\"offset\":{},\"page_size\":{},\"page_size_kib\":{}}}",
                r.addr() as usize,
                r.len(),
                offset,
                r.page_size(),
                r.page_size() / 1024
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Checks page `page` of `region` (at `offset` in the snapshot) byte by byte: the snapshot,
/// or zeros when `zero`.
fn check_page(region: &Region, offset: usize, page: usize, zero: bool) {
    let ps = region.page_size();
    let got = region.read_page(page);
    let base = offset + page * ps;
    let bad = got.iter().enumerate().find(|&(i, &b)| {
        let want = if zero { 0 } else { snapshot_byte(base + i) };
        b != want
    });
    if let Some((i, &b)) = bad {
        panic!(
            "{:?} page {page} byte {i}: {b:#x}, expected {}",
            region.memory(),
            if zero { "zero" } else { "the snapshot" }
        );
    }
}

#[test]
fn firecracker_restore_with_balloon_discards_serves_every_byte() {
    // Page counts: 2 MiB of each small-page type, 8 MiB of 2 MiB pages.
    let mut guest = Guest {
        regions: Vec::new(),
    };
    let mut file_len: usize = 0;
    for (memory, pages) in [
        (MemoryType::Anonymous, 512),
        (MemoryType::Shmem, 512),
        (MemoryType::Hugetlb, 4),
    ] {
        let Some(region) = Region::new(memory, pages) else {
            continue;
        };
        file_len = file_len.next_multiple_of(region.page_size());
        let offset = file_len;
        file_len += region.len();
        guest.regions.push((region, offset));
    }
    let dir = std::env::temp_dir().join(format!("uffd-firecracker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot_path = dir.join("memory.snap");
    let bytes: Vec<u8> = (0..file_len).map(snapshot_byte).collect();
    std::fs::write(&snapshot_path, &bytes).unwrap();
    drop(bytes);
    let socket = dir.join("uffd.sock");
    let listener = UnixListener::bind(&socket).unwrap();

    // The handler, as the example runs it.
    let snapshot = File::open(&snapshot_path).unwrap();
    let handler = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let options = handler::Options {
            workers: 2,
            background_fill: false,
            handshake_timeout: Duration::from_secs(10),
            log_every: None,
            record: None,
            replay: None,
        };
        handler::serve(&stream, &snapshot, &options)
    });

    // Firecracker: the descriptor, the registrations, the message.
    let uffd = firecracker_uffd();
    for (region, _) in &guest.regions {
        uffd.register(region.addr(), region.len()).unwrap();
    }
    let stream = UnixStream::connect(&socket).unwrap();
    send_with_fd(
        &stream,
        region_json(&guest).as_bytes(),
        Some(uffd.as_raw_fd()),
    );
    let guest = Arc::new(guest);

    // Every page, from four threads.
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let guest = guest.clone();
            thread::spawn(move || {
                for (region, offset) in &guest.regions {
                    for page in (t..region.pages()).step_by(4) {
                        check_page(region, *offset, page, false);
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("a reader saw a wrong byte");
    }

    // The balloon takes the first quarter of each region: zeros from now on.
    for (region, offset) in &guest.regions {
        let quarter = (region.pages() / 4).max(1);
        balloon_discard(region, 0, quarter);
        for page in 0..quarter {
            check_page(region, *offset, page, true);
        }
    }

    // Discards racing faults: odd pages past the first quarter are discarded over and over
    // while two threads read.
    let stop = Arc::new(AtomicBool::new(false));
    let discarder = {
        let (guest, stop) = (guest.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (region, _) in &guest.regions {
                    let quarter = (region.pages() / 4).max(1);
                    for page in (quarter..region.pages()).filter(|p| p % 2 == 1) {
                        balloon_discard(region, page, 1);
                    }
                }
            }
        })
    };
    let racers: Vec<_> = (0..2)
        .map(|seed| {
            let (guest, stop) = (guest.clone(), stop.clone());
            thread::spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ seed;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (region, offset) = &guest.regions[x as usize % guest.regions.len()];
                    let quarter = (region.pages() / 4).max(1);
                    let page = (x >> 16) as usize % region.pages();
                    let at = (x >> 40) as usize % region.page_size();
                    // SAFETY: inside our mapping; a volatile read of plain memory.
                    let got = unsafe { region.page(page).add(at).read_volatile() };
                    let want = snapshot_byte(offset + page * region.page_size() + at);
                    if page < quarter {
                        assert_eq!(got, 0, "{:?} page {page}", region.memory());
                    } else if page % 2 == 0 {
                        assert_eq!(got, want, "{:?} page {page}", region.memory());
                    } else {
                        assert!(got == want || got == 0, "{:?} page {page}", region.memory());
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    for r in racers {
        r.join().expect("a racing reader saw a wrong byte");
    }
    discarder.join().unwrap();

    // A last discard of the odd pages, then every byte of every page.
    for (region, offset) in &guest.regions {
        let quarter = (region.pages() / 4).max(1);
        for page in (quarter..region.pages()).filter(|p| p % 2 == 1) {
            balloon_discard(region, page, 1);
        }
        for page in 0..region.pages() {
            check_page(region, *offset, page, page < quarter || page % 2 == 1);
        }
    }

    // Firecracker goes away: the handler stops by itself.
    drop(stream);
    let finished = handler.join().unwrap().expect("the handler served");
    assert!(handler::ended_cleanly(&finished), "{:?}", finished.outcome);
    let s = finished.stats;
    eprintln!("{}", handler::stats_line(Duration::ZERO, &s));
    assert!(s.faults > 0 && s.removed_pages > 0, "{s:?}");
    drop(uffd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each malformed handshake is a clear error, and none hangs.
#[test]
fn malformed_handshakes_are_refused_clearly() {
    let file_len = 1 << 20;
    let region = r#"{"base_host_virt_addr":1073741824,"size":65536,"offset":0,"page_size":4096}"#;
    let eventfd = {
        // SAFETY: eventfd has no memory effects.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor that only we own.
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let uffd = UffdBuilder::new().create().unwrap();
    let cases: Vec<(String, Option<RawFd>, &str)> = vec![
        ("[{\"base_host_virt_addr\":".into(), Some(uffd.as_raw_fd()), "timed out"),
        ("{\"regions\":[]}".into(), Some(uffd.as_raw_fd()), "expected a JSON array"),
        ("[1,2,]".into(), Some(uffd.as_raw_fd()), "invalid JSON"),
        ("[]".into(), Some(uffd.as_raw_fd()), "no region"),
        (format!("[{region}]"), None, "no descriptor"),
        (format!("[{region}]"), Some(eventfd.as_raw_fd()), "not a userfaultfd"),
        (
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#.into(),
            Some(uffd.as_raw_fd()),
            "page_size is missing",
        ),
        (
            r#"[{"base_host_virt_addr":4096,"size":-1,"offset":0,"page_size":4096}]"#.into(),
            Some(uffd.as_raw_fd()),
            "size is not a non-negative integer",
        ),
        (
            r#"[{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}]"#.into(),
            Some(uffd.as_raw_fd()),
            "not a multiple of page_size",
        ),
        (
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":1048576,"page_size":4096}]"#
                .into(),
            Some(uffd.as_raw_fd()),
            "snapshot file, which is only",
        ),
        (
            format!(
                "[{region},{}]",
                r#"{"base_host_virt_addr":1073745920,"size":4096,"offset":65536,"page_size":4096}"#
            ),
            Some(uffd.as_raw_fd()),
            "overlap in memory",
        ),
        (
            format!(
                "[{region},{}]",
                r#"{"base_host_virt_addr":0,"size":8192,"offset":4096,"page_size":4096}"#
            ),
            Some(uffd.as_raw_fd()),
            "overlap in the snapshot file",
        ),
        (
            r#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096,"page_size_kib":8}]"#
                .into(),
            Some(uffd.as_raw_fd()),
            "disagree",
        ),
    ];
    for (json, fd, needle) in cases {
        let (firecracker, handler_end) = UnixStream::pair().unwrap();
        send_with_fd(&firecracker, json.as_bytes(), fd);
        let started = std::time::Instant::now();
        let err =
            protocol::receive(&handler_end, file_len, Duration::from_millis(300)).expect_err(&json);
        let shown = err.to_string();
        assert!(
            shown.contains(needle) || (needle == "timed out" && shown.contains("temporarily")),
            "{json}: {shown}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{json}: took too long"
        );
    }
    // The region list accepted whole, and split across two sends.
    let whole = format!("[{region}]");
    let (firecracker, handler_end) = UnixStream::pair().unwrap();
    send_with_fd(
        &firecracker,
        &whole.as_bytes()[..10],
        Some(uffd.as_raw_fd()),
    );
    (&firecracker).write_all(&whole.as_bytes()[10..]).unwrap();
    let handshake = protocol::receive(&handler_end, file_len, Duration::from_secs(5)).unwrap();
    assert_eq!(handshake.regions.len(), 1);
    assert_eq!(handshake.regions[0].size, 65536);
}

/// The JSON reader: every prefix of a valid text is "truncated", never "invalid".
#[test]
fn json_prefixes_are_truncated_not_invalid() {
    let text = br#" [ {"a": 1, "b": [true, false, null], "c": "x\"\u00e9\ud83d\ude00", "d": -2.5e3}, 18446744073709551615 ] "#;
    let value = json::parse(text).unwrap();
    let json::Value::Array(items) = &value else {
        panic!("{value:?}")
    };
    assert_eq!(items[1], json::Value::Unsigned(u64::MAX));
    for n in 0..text.len() - 2 {
        assert_eq!(
            json::parse(&text[..n]),
            Err(json::JsonError::Truncated),
            "prefix {n}: {:?}",
            std::str::from_utf8(&text[..n])
        );
    }
    for bad in [
        &b"[1 2]"[..],
        b"[01]",
        b"{1:2}",
        b"[\"\x01\"]",
        b"[tru]",
        b"[1]x",
    ] {
        assert!(
            matches!(json::parse(bad), Err(json::JsonError::Invalid { .. })),
            "{:?}",
            std::str::from_utf8(bad)
        );
    }
    let deep = "[".repeat(100);
    assert!(matches!(
        json::parse(deep.as_bytes()),
        Err(json::JsonError::Invalid { .. })
    ));
}

/// `--record` then `--replay` through the handler: the second restore of the same snapshot
/// finds the pages the first one touched already placed (few demand faults), every byte right;
/// a record is refused for another memory file.
#[test]
fn record_then_replay_through_the_handler() {
    let memory = MemoryType::Anonymous;
    let pages = 1024;
    let ps = memory.page_size();
    let dir = std::env::temp_dir().join(format!("uffd-fc-replay-{}", std::process::id()));
    let dir = if std::fs::create_dir_all(&dir).is_ok() {
        dir
    } else {
        // As uid 65534 the temporary directory may not be writable.
        let dir =
            std::path::PathBuf::from(format!("/dev/shm/uffd-fc-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let snapshot_path = dir.join("memory.snap");
    let bytes: Vec<u8> = (0..pages * ps).map(snapshot_byte).collect();
    std::fs::write(&snapshot_path, &bytes).unwrap();
    let record = dir.join("working.set");
    // Every seventh page, backwards: an order fault-around would not guess.
    let touched: Vec<usize> = (0..pages).rev().filter(|p| p % 7 == 0).collect();

    let run = |record_to: Option<&std::path::Path>,
               replay_from: Option<&std::path::Path>,
               touch: bool| {
        let region = Region::new(memory, pages).unwrap();
        let uffd = firecracker_uffd();
        uffd.register(region.addr(), region.len()).unwrap();
        let (firecracker, handler_end) = UnixStream::pair().unwrap();
        let snapshot = File::open(&snapshot_path).unwrap();
        let options = handler::Options {
            workers: 1,
            background_fill: false,
            handshake_timeout: Duration::from_secs(10),
            log_every: None,
            record: record_to.map(Into::into),
            replay: replay_from.map(Into::into),
        };
        let handler = thread::spawn(move || handler::serve(&handler_end, &snapshot, &options));
        let guest = Guest {
            regions: vec![(region, 0)],
        };
        send_with_fd(
            &firecracker,
            region_json(&guest).as_bytes(),
            Some(uffd.as_raw_fd()),
        );
        if replay_from.is_some() {
            // Let the replay run ahead, as a guest's boot would.
            thread::sleep(Duration::from_millis(200));
        }
        if touch {
            for &page in &touched {
                check_page(&guest.regions[0].0, 0, page, false);
            }
        }
        drop(firecracker);
        let finished = handler.join().unwrap();
        drop(uffd);
        finished
    };

    let first = run(Some(&record), None, true).expect("the recording run");
    assert!(handler::ended_cleanly(&first), "{:?}", first.outcome);
    assert_eq!(
        first.stats.faults,
        touched.len() as u64,
        "{:?}",
        first.stats
    );
    let second = run(None, Some(&record), true).expect("the replaying run");
    assert!(handler::ended_cleanly(&second), "{:?}", second.outcome);
    assert_eq!(
        second.stats.replay_pages,
        touched.len() as u64,
        "{:?}",
        second.stats
    );
    assert!(
        second.stats.faults * 10 < touched.len() as u64,
        "replay left {} demand faults of {}",
        second.stats.faults,
        touched.len()
    );

    // The record does not apply to another memory file of the same size.
    let other: Vec<u8> = bytes.iter().map(|b| b ^ 0x55).collect();
    std::fs::write(&snapshot_path, &other).unwrap();
    // (Nothing is touched: the handler refuses before serving.)
    let err = run(None, Some(&record), false).expect_err("a record of another snapshot");
    assert!(
        err.contains("snapshot") || err.contains("working set"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
