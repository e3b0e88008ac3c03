//! The background fill's CPU priority: its threads at nice 19, the fetch threads faults
//! wait for at the opener's. Its own test binary: it counts the threads of the process by
//! name, which another test's source running beside it would add to.

mod support;

use std::time::{Duration, Instant};

use support::nginx::Nginx;
use support::proxy::{Proxy, Rates};
use support::restore::{shuffled, Restore, PAGE};
use support::{expected, write_snapshot};
use userfaultfd::serve::{Chunk, PageSource};
use userfaultfd_objstore::{open, Options};

const MIB: u64 = 1 << 20;

fn options(chunk: usize) -> Options {
    let mut o = Options::default();
    o.chunk_size = chunk;
    o.backoff_initial = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(200);
    o.deadline = Duration::from_secs(60);
    o
}

/// The nice value of each thread of this process whose name starts with `prefix`.
fn nice_of_threads(prefix: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread exited meanwhile
        };
        if comm.trim_end().starts_with(prefix) {
            // Fields after the name in parentheses: state is the 3rd field, nice the 19th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    found
}

/// The calling thread's nice value.
fn own_nice() -> i32 {
    // SAFETY: gettid and getpriority have no memory effects.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
}

/// The background fill runs on threads of its own at nice 19, while the fetch threads (the
/// ones faults wait for) keep the nice value of the thread that opened the object; a fault
/// on a chunk the fill is fetching takes the rest of it over at that priority. Every byte
/// right.
#[test]
fn background_fill_at_nice_19_faults_at_the_callers_priority() {
    let Some(nginx) = Nginx::start() else { return };
    let len = 4 * MIB;
    write_snapshot(&nginx.www().join("mem"), 13, len);
    let proxy = Proxy::start(nginx.port, Rates::default(), Duration::from_secs(5), 1);
    // 2 MiB chunks at 16 KiB per 10 ms: a chunk takes at least 1.28 s to arrive.
    proxy.set_trickle(Some(Duration::from_millis(10)));
    let mut opts = options(2 << 20);
    opts.hedge_after = None;
    opts.request_timeout = Duration::from_secs(30);
    opts.parallelism = 2;
    opts.background = true;
    let url = proxy.url("mem");
    // Opened from a thread at a nice value of its own, which the fetch threads inherit.
    let (source, caller) = std::thread::spawn(move || {
        let caller = (own_nice() + 3).min(18);
        // SAFETY: setpriority changes only this thread's scheduling priority.
        let r =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, caller) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        (open(&url, &opts).unwrap(), caller)
    })
    .join()
    .unwrap();
    // The fill has started chunk 0 (its first bytes are in).
    let until = Instant::now() + Duration::from_secs(30);
    while !source.arrived(0) {
        assert!(Instant::now() < until, "the background fill did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    let background = nice_of_threads("objstore-bg");
    let fetch = nice_of_threads("objstore-fetch");
    assert_eq!(background, vec![19], "background threads' nice values");
    assert_eq!(fetch, vec![caller, caller], "fetch threads' nice values");
    // A fault on the last page of chunk 0, which the fill is fetching: handed over.
    let mut scratch = vec![0u8; PAGE];
    let mut want = vec![0u8; PAGE];
    let last = 2 * MIB - PAGE as u64;
    let Chunk::Data(d) = source.fetch(last, PAGE, &mut scratch).unwrap() else {
        panic!("zeros")
    };
    expected(13, last, &mut want);
    assert_eq!(d, want.as_slice());
    let stats = source.stats();
    assert_eq!(stats.handoffs, 1, "{stats:?}");
    // The fill completes the object; every byte right.
    let until = Instant::now() + Duration::from_secs(60);
    while !source.complete() {
        assert!(Instant::now() < until, "the fill did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let restore = Restore::start(source.clone(), len as usize, 1);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 13),
            2,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(restore.mismatches(13), Vec::<usize>::new());
    assert_eq!(source.stats().bytes_fetched, len, "{:?}", source.stats());
}
