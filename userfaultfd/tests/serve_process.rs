//! The page server's edges: bad input is a clear error at build time; a source error or a
//! worker panic follows the error policy (report and stop: faulting threads stay blocked;
//! fail closed: they get SIGBUS, never zero pages); serving another process whose descriptor
//! arrives over a Unix socket (SCM_RIGHTS), which stops the server when it exits (pidfd, or
//! ESRCH from a placement).

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use support::serve::{mismatches, serve_uffd, snapshot, Gate, TestSource};
use support::{blocked_in_userfault, gettid, join_timeout, spawn_child, spawn_named};
use support::{wait_blocked_in_userfault, MemoryType, Region};
use userfaultfd::serve::{
    Backend, ErrorPolicy, Exit, Region as Served, ServeError, Server, ServerBuilder, Zeros,
};
use userfaultfd::{FeatureFlags, RegisterMode, UffdBuilder};

/// Starts a server for `regions` over a fresh descriptor and returns its error, checking
/// that the descriptor comes back as it was given (the same descriptor, blocking).
fn start_error(builder: &mut ServerBuilder, source_len: u64) -> ServeError {
    let uffd = serve_uffd(MemoryType::Anonymous, RegisterMode::MISSING).unwrap();
    let fd = uffd.as_raw_fd();
    uffd.set_non_blocking(false).unwrap();
    // SAFETY: the regions hold no Rust object (and most are refused before registering).
    match unsafe { builder.start(uffd, Arc::new(Zeros::new(source_len))) } {
        Ok(server) => panic!("started: {server:?}"),
        Err(rejected) => {
            let (uffd, e) = rejected.into_parts();
            assert_eq!(uffd.as_raw_fd(), fd, "{e}");
            assert!(!uffd.is_non_blocking().unwrap(), "{e}");
            e
        }
    }
}

#[track_caller]
fn assert_mentions(e: &ServeError, words: &[&str]) {
    let shown = e.to_string();
    for w in words {
        assert!(shown.contains(w), "{shown:?} does not mention {w:?}");
    }
}

#[test]
fn bad_input_is_a_clear_error_at_build_time() {
    let region = Region::new(MemoryType::Anonymous, 16).unwrap();
    let ps = region.page_size();
    let (addr, len) = (region.addr(), region.len());
    let at = |p: usize| region.page(p).cast::<libc::c_void>();
    let source = len as u64;
    let hex_addr = format!("{:#x}", addr as usize);
    let register_words = ["registering the region", "region 0", &hex_addr, "EINVAL"];
    let cases: Vec<(ServerBuilder, u64, &[&str])> = vec![
        (Server::builder(), source, &["no region"]),
        (
            Server::builder()
                .workers(0)
                .region(Served::new(addr, len))
                .clone(),
            source,
            &["zero workers"],
        ),
        (
            Server::builder()
                .region(Served::new(at(0).wrapping_byte_add(100), ps))
                .clone(),
            source,
            &["region 0", "multiples of the page size"],
        ),
        (
            Server::builder().region(Served::new(addr, ps + 1)).clone(),
            source,
            &["region 0", "multiples of the page size"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, ps).offset(5))
                .clone(),
            source,
            &["region 0", "multiples of the page size"],
        ),
        (
            Server::builder().region(Served::new(addr, 0)).clone(),
            source,
            &["region 0", "length is 0"],
        ),
        (
            Server::builder().region(Served::new(addr, len)).clone(),
            source - ps as u64,
            &["region 0", "outside the source"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, ps).offset(source))
                .clone(),
            source,
            &["region 0", "outside the source"],
        ),
        (
            Server::builder()
                .region(Served::new(at(0), 4 * ps))
                .region(Served::new(at(3), 4 * ps))
                .clone(),
            source,
            &["region 1", "overlaps region 0"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len).page_size(3000))
                .clone(),
            source,
            &["region 0", "page size"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len).backend(Backend::Continue { private: false }))
                .clone(),
            source,
            &register_words,
        ),
        // Settings whose value would abort the process or allocate without bound (a 32 TiB
        // buffer per worker, a million threads, a deadline past the clock's end): refused
        // before anything is mapped or registered.
        (
            Server::builder()
                .region(Served::new(addr, len))
                .fault_around(1 << 45)
                .clone(),
            source,
            &["fault_around", "at most"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len))
                .workers(1 << 20)
                .clone(),
            source,
            &["workers", "at most"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len))
                .busy_poll(Duration::MAX)
                .clone(),
            source,
            &["busy_poll", "at most"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len))
                .peer_process(0)
                .clone(),
            source,
            &["peer_process(0)", "process id"],
        ),
        (
            Server::builder()
                .region(Served::new(addr, len).page_size(1 << 45))
                .clone(),
            source,
            &["region 0", "page size", "1 GiB"],
        ),
        // A region of 2^44 pages at a valid address: its page state (4 TiB) cannot be had.
        (
            Server::builder()
                .region(Served::new(addr, ps << 44))
                .clone(),
            u64::MAX,
            &["region 0", "page state", "allocation failed"],
        ),
    ];
    for (mut builder, source_len, words) in cases {
        let e = start_error(&mut builder, source_len);
        eprintln!("as expected: {e}");
        assert_mentions(&e, words);
    }
    // A descriptor without EVENT_REMOVE is refused: discarded pages would get stale data.
    let plain = UffdBuilder::new().create().unwrap();
    // SAFETY: refused before registering.
    let e = unsafe {
        Server::builder()
            .region(Served::new(addr, len))
            .start(plain, Arc::new(Zeros::new(source)))
    }
    .unwrap_err()
    .into_parts()
    .1;
    assert_mentions(&e, &["EVENT_REMOVE"]);
    // EVENT_FORK is refused (documented: forked children are not served).
    if support::privileged() && support::kernel_lacks(FeatureFlags::EVENT_FORK).is_none() {
        let forking = UffdBuilder::new()
            .require_features(userfaultfd::serve::EVENTS | FeatureFlags::EVENT_FORK)
            .create()
            .unwrap();
        // SAFETY: refused before registering.
        let e = unsafe {
            Server::builder()
                .region(Served::new(addr, len))
                .start(forking, Arc::new(Zeros::new(source)))
        }
        .unwrap_err()
        .into_parts()
        .1;
        assert_mentions(&e, &["EVENT_FORK"]);
    }
}

/// A thread that reads page `page` of `region`, returning its first byte and its thread id
/// through a channel first.
fn blocked_reader(region: &Arc<Region>, page: usize) -> (libc::pid_t, support::Waitable<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let region = Arc::clone(region);
    let reader = spawn_named("faulting", move || {
        tx.send(gettid()).unwrap();
        // SAFETY: a byte of our own mapping.
        unsafe { region.page(page).read_volatile() }
    });
    (rx.recv().unwrap(), reader)
}

/// Report and stop: the error is reported, the faulting thread stays blocked (it does not
/// run on a zero page) until the owner acts on the returned descriptor, where its fault is
/// pending again (the server read it: it hands it back, instead of losing it).
fn report_and_stop(source: TestSource, expect: &[&str]) {
    // A reader and two fetch workers (the test source may block).
    report_and_stop_with(Arc::new(source), 2, expect);
}

fn report_and_stop_with(
    source: Arc<dyn userfaultfd::serve::PageSource>,
    workers: usize,
    expect: &[&str],
) {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 64).unwrap());
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(workers)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, source)
    }
    .unwrap();
    let (tid, reader) = blocked_reader(&region, 10);
    assert!(
        server.wait_stopped(support::TIMEOUT),
        "the server did not stop"
    );
    let reported = server.outcome().unwrap().unwrap_err();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        blocked_in_userfault(tid),
        "the faulting thread must stay blocked"
    );
    let finished = server.stop();
    let e = finished.outcome.unwrap_err();
    assert_eq!(e.to_string(), reported);
    assert_mentions(&e, expect);
    wait_blocked_in_userfault(tid);
    // Before the fix, the fault read by the server was lost: nothing was pending here.
    match support::wait_event(&finished.uffd) {
        userfaultfd::Event::Pagefault { addr, .. } => {
            assert_eq!(addr as usize, region.page(10) as usize)
        }
        other => panic!("expected the fault handed back, got {other:?}"),
    }
    assert!(
        blocked_in_userfault(tid),
        "the thread must still be blocked"
    );
    // The owner decides: here, unregistering gives the kernel's default (a zero page).
    finished
        .uffd
        .unregister(region.addr(), region.len())
        .unwrap();
    assert_eq!(join_timeout(reader), 0);
}

#[test]
fn source_error_reports_and_stops() {
    let ps = MemoryType::Anonymous.page_size();
    let mut source = TestSource::new(snapshot(64, ps), ps);
    source.fail_at = Some(10);
    report_and_stop(source, &["reading the page source", "injected read error"]);
}

/// The same with a worker that reads and serves itself (a source that never blocks).
#[test]
fn source_error_reports_and_stops_inline() {
    let ps = MemoryType::Anonymous.page_size();
    let mut source = TestSource::new(snapshot(64, ps), ps);
    source.fail_at = Some(10);
    source.never_blocks = true;
    report_and_stop_with(
        Arc::new(source),
        1,
        &["reading the page source", "injected read error"],
    );
}

#[test]
fn worker_panic_reports_and_stops() {
    let ps = MemoryType::Anonymous.page_size();
    let mut source = TestSource::new(snapshot(64, ps), ps);
    source.panic_at = Some(10);
    report_and_stop(source, &["worker panicked", "injected panic"]);
}

/// Fail closed: after a source error, every page not placed raises SIGBUS — the blocked
/// thread's and later ones — while placed pages keep their contents.
#[test]
fn fail_closed_raises_sigbus_instead_of_zero_pages() {
    if support::kernel_lacks(FeatureFlags::POISON).is_some() {
        return;
    }
    let outcome = support::run_in_child(|report| {
        let memory = MemoryType::Anonymous;
        let uffd = serve_uffd(memory, RegisterMode::MISSING).ok_or("no uffd")?;
        let region = Arc::new(Region::new(memory, 64).ok_or("no region")?);
        let ps = region.page_size();
        let expected = snapshot(64, ps);
        let mut source = TestSource::new(expected.clone(), ps);
        source.fail_at = Some(40);
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(8 * ps)
                .error_policy(ErrorPolicy::FailClosed)
                .region(Served::new(region.addr(), region.len()))
                .start(uffd, Arc::new(source))
        }
        .map_err(|e| e.to_string())?;
        if !mismatches(&region, &expected, 0..8).is_empty() {
            return Err("placed pages differ".into());
        }
        report.note("first block served");
        let (_, reader) = blocked_reader(&region, 40);
        if !server.wait_stopped(support::TIMEOUT) {
            return Err("the server did not stop".into());
        }
        report.note(&format!("stopped: {:?}", server.outcome()));
        join_timeout(reader); // SIGBUS ends the process here
        Err("the access to a page the server failed to place returned".into())
    });
    outcome.assert_killed_by(libc::SIGBUS);
    assert!(
        outcome.report.contains("first block served"),
        "{}",
        outcome.report
    );
}

/// Sends `fd` and `words` over the Unix socket `sock` (SCM_RIGHTS).
fn send_fd(sock: RawFd, fd: RawFd, words: [u64; 2]) {
    let mut data = words;
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 16,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; its pointers are set below to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header with one descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` points to live buffers.
    let n = unsafe { libc::sendmsg(sock, &msg, 0) };
    assert_eq!(n, 16, "sendmsg: {}", std::io::Error::last_os_error());
}

/// Receives a descriptor and two words sent by [`send_fd`].
fn recv_fd(sock: RawFd) -> (OwnedFd, [u64; 2]) {
    let mut data = [0u64; 2];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 16,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in `send_fd`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to live buffers.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert_eq!(n, 16, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled the control buffer with one SCM_RIGHTS header.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS);
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())
    };
    // SAFETY: a descriptor just installed for us.
    (unsafe { OwnedFd::from_raw_fd(fd) }, data)
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: two new descriptors only we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

const CHILD_PAGES: usize = 512;

/// A child that maps memory, creates a userfaultfd and sends both to the parent, waits for
/// a byte, then (if `touch`) reads every page and checks it against the snapshot.
fn child_sending_its_uffd(touch: bool) -> (support::RunningChild, OwnedFd) {
    let (parent_end, child_end) = socketpair();
    let child = spawn_child(move |report| {
        let region = Region::new(MemoryType::Anonymous, CHILD_PAGES).ok_or("no region")?;
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .require_features(userfaultfd::serve::EVENTS)
            .create()
            .map_err(|e| e.to_string())?;
        let words = [region.addr() as u64, region.len() as u64];
        send_fd(child_end.as_raw_fd(), uffd.as_raw_fd(), words);
        drop(uffd); // the parent's copy serves us
        let mut go = [0u8; 1];
        // SAFETY: reads one byte into `go`.
        let n = unsafe { libc::read(child_end.as_raw_fd(), go.as_mut_ptr().cast(), 1) };
        if n != 1 {
            return Err("no go byte".into());
        }
        if touch {
            let expected = snapshot(CHILD_PAGES, region.page_size());
            let bad = mismatches(&region, &expected, (0..CHILD_PAGES).rev());
            if !bad.is_empty() {
                return Err(format!("pages {bad:?} differ"));
            }
            report.note("all pages served");
        }
        // Exit with the region mapped: an munmap would be an UNMAP event for the server.
        std::mem::forget(region);
        Ok(())
    });
    (child, parent_end)
}

fn go(sock: &OwnedFd) {
    let byte = [1u8];
    // SAFETY: writes one byte from `byte`.
    let n = unsafe { libc::write(sock.as_raw_fd(), byte.as_ptr().cast(), 1) };
    assert_eq!(n, 1);
}

/// As VMMs do: the process to serve sends its descriptor over a Unix socket; the server
/// registers its region (in that process's address space) and serves it, and stops when the
/// process exits (its pidfd).
#[test]
fn serves_another_process_over_scm_rights_and_stops_when_it_exits() {
    let (child, sock) = child_sending_its_uffd(true);
    let (fd, [addr, len]) = recv_fd(sock.as_raw_fd());
    let uffd = userfaultfd::Uffd::try_from(fd).expect("a userfaultfd");
    let ps = MemoryType::Anonymous.page_size();
    let source = Arc::new(TestSource::new(snapshot(CHILD_PAGES, ps), ps));
    // SAFETY: the child's region holds no Rust object (it is the child's test mapping).
    let server = unsafe {
        Server::builder()
            .peer_process(child.pid())
            .region(Served::new(addr as *mut libc::c_void, len as usize))
            .start(uffd, source)
    }
    .unwrap();
    go(&sock);
    let outcome = child.wait();
    outcome.assert_success();
    assert!(
        outcome.report.contains("all pages served"),
        "{}",
        outcome.report
    );
    assert!(
        server.wait_stopped(support::TIMEOUT),
        "the server did not notice the exit"
    );
    let finished = server.stop();
    assert!(
        matches!(finished.outcome, Ok(Exit::ProcessExited)),
        "{:?}",
        finished.outcome
    );
    assert!(finished.stats.faults >= 1, "{:?}", finished.stats);
}

/// Without a pidfd, the exit is noticed by the next placement (ESRCH): here the background
/// fill's, held at a gate until the child has exited.
#[test]
fn placement_after_the_process_exited_stops_the_server() {
    let (child, sock) = child_sending_its_uffd(false);
    let (fd, [addr, len]) = recv_fd(sock.as_raw_fd());
    let ps = MemoryType::Anonymous.page_size();
    let gate = Arc::new(Gate::default());
    let mut source = TestSource::new(snapshot(CHILD_PAGES, ps), ps);
    source.gate = Some(Arc::clone(&gate));
    // SAFETY: the child's region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .background_fill(true)
            .region(Served::new(addr as *mut libc::c_void, len as usize))
            .start(
                userfaultfd::Uffd::try_from(fd).expect("a userfaultfd"),
                Arc::new(source),
            )
    }
    .unwrap();
    gate.wait_entered();
    go(&sock);
    child.wait().assert_success();
    gate.open();
    assert!(
        server.wait_stopped(support::TIMEOUT),
        "the server did not notice the exit"
    );
    let finished = server.stop();
    assert!(
        matches!(finished.outcome, Ok(Exit::ProcessExited)),
        "{:?}",
        finished.outcome
    );
}

/// `stop()` while a thread is blocked in a fault whose page the source is still fetching,
/// and the fetch returns within `stop`'s grace: the worker finishes that page (the thread is
/// served), then every worker is joined. (A fetch that outlasts the grace: serve_slow.rs.)
#[test]
fn stop_while_a_fault_is_in_flight() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 64).unwrap());
    let ps = region.page_size();
    let expected = snapshot(64, ps);
    let gate = Arc::new(Gate::default());
    let mut source = TestSource::new(expected.clone(), ps);
    source.gate = Some(Arc::clone(&gate));
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .workers(2)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(source))
    }
    .unwrap();
    let (tid, reader) = blocked_reader(&region, 0);
    gate.wait_entered();
    wait_blocked_in_userfault(tid);
    let stopper = spawn_named("stopping", move || server.stop());
    gate.open();
    let finished = join_timeout(stopper);
    assert_eq!(join_timeout(reader), expected[0]);
    assert!(
        matches!(finished.outcome, Ok(Exit::Stopped)),
        "{:?}",
        finished.outcome
    );
    assert_eq!(finished.stats.faults, 1);
}

/// FORK is refused (no `EVENT_FORK`): a forked child does not inherit the registration and
/// sees the parent's memory as it is at the fork — placed pages hold the source's bytes, the
/// others are empty (zeros on anonymous memory). With `MADV_DONTFORK`, as the docs advise,
/// the child has no such mapping at all: a touch is a loud `SIGSEGV`, never a zero page.
#[test]
fn forked_children_are_not_served() {
    let memory = MemoryType::Anonymous;
    let uffd = serve_uffd(memory, RegisterMode::MISSING).unwrap();
    let region = Arc::new(Region::new(memory, 128).unwrap());
    let ps = region.page_size();
    let expected = snapshot(128, ps);
    // SAFETY: the test region holds no Rust object.
    let server = unsafe {
        Server::builder()
            .fault_around(ps)
            .region(Served::new(region.addr(), region.len()))
            .start(uffd, Arc::new(TestSource::new(expected.clone(), ps)))
    }
    .unwrap();
    assert!(mismatches(&region, &expected, 0..1).is_empty());
    let child = {
        let (region, expected) = (Arc::clone(&region), expected.clone());
        support::run_in_child(move |_| {
            if !mismatches(&region, &expected, 0..1).is_empty() {
                return Err("the placed page differs in the child".into());
            }
            // SAFETY: a byte of the child's copy of the mapping (not registered there).
            let unplaced = unsafe { region.page(100).add(9).read_volatile() };
            if unplaced != 0 {
                return Err(format!("unplaced page reads {unplaced}, not 0"));
            }
            Ok(())
        })
    };
    child.assert_success();
    // SAFETY: advice on our own mapping: not inherited by children.
    let r = unsafe { libc::madvise(region.addr(), region.len(), libc::MADV_DONTFORK) };
    assert_eq!(r, 0);
    let region_addr = region.page(100) as usize;
    let child = support::run_in_child(move |_| {
        // SAFETY: the child has no mapping here: the access raises SIGSEGV.
        let _ = unsafe { (region_addr as *const u8).read_volatile() };
        Err("the child read memory it does not have".into())
    });
    child.assert_killed_by(libc::SIGSEGV);
    let s = server.stop().stats;
    assert_eq!(
        s.faults, 1,
        "the children's accesses never reached the server: {s:?}"
    );
}

/// Reads the first byte of page `page` of `region` on another thread: returns whether it
/// finished within a second (a registered, empty page blocks the reader in the fault instead).
fn read_completes(region: &Arc<Region>, page: usize) -> (bool, support::Waitable<u8>) {
    let r = Arc::clone(region);
    let reader = spawn_named("reader", move || {
        // SAFETY: a page of the test's own mapping.
        unsafe { r.page(page).read_volatile() }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        if reader.is_finished() {
            return (true, reader);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (false, reader)
}

/// Resolves the fault `uffd` reports on page `page` of `region` with zeros (waking the
/// reader).
fn serve_zeros(uffd: &userfaultfd::Uffd, region: &Region, page: usize) {
    let at = region.page(page);
    match support::wait_event(uffd) {
        userfaultfd::Event::Pagefault { addr, .. } => {
            assert_eq!(addr as usize & !(region.page_size() - 1), at as usize);
        }
        other => panic!("{other:?}"),
    }
    let zeros = vec![0u8; region.page_size()];
    // SAFETY: a page of the test's mapping, which holds no Rust object; `zeros` is readable.
    unsafe { uffd.copy(zeros.as_ptr().cast(), at.cast(), region.page_size(), true) }.unwrap();
}

/// A start that fails after registering gives the descriptor back as it was: the region the
/// caller had registered stays registered (its faults reach the descriptor given back), the
/// region the failed start registered is unregistered again, the blocking mode is restored.
/// On every memory type, for a bad setting (refused before registering), a failure of the
/// kernel's registration (minor faults on anonymous memory) and, on hugetlbfs, for a memory type that refuses the backend's ioctls (a hugetlbfs
/// region declared with base pages: no `ZEROPAGE`), which used to unregister the caller's
/// registration.
#[test]
fn a_failed_start_gives_back_the_descriptor_and_the_callers_registration() {
    for memory in MemoryType::ALL {
        let Some(mut uffd) = serve_uffd(memory, RegisterMode::MISSING) else {
            continue;
        };
        let (Some(callers), Some(servers)) = (Region::new(memory, 3), Region::new(memory, 3))
        else {
            continue;
        };
        let (callers, servers) = (Arc::new(callers), Arc::new(servers));
        let ps = memory.page_size();
        uffd.register(callers.addr(), callers.len()).unwrap();
        // Minor faults on anonymous memory: the kernel refuses the registration (EINVAL).
        let anonymous = Region::new(MemoryType::Anonymous, 1).unwrap();
        let callers_served = Served::new(callers.addr(), callers.len()).page_size(ps);
        let servers_served = Served::new(servers.addr(), servers.len()).page_size(ps);
        // Minor faults on anonymous memory, after the other two: the kernel refuses the
        // registration (EINVAL).
        let mut failing = vec![
            // Refused before anything is registered.
            (
                "a bad setting",
                vec![
                    callers_served.clone(),
                    servers_served.clone().offset(!(ps as u64 - 1)),
                ],
            ),
            (
                "a registration the kernel refuses",
                vec![
                    callers_served.clone(),
                    servers_served.clone(),
                    Served::new(anonymous.addr(), anonymous.len())
                        .backend(Backend::Continue { private: true }),
                ],
            ),
        ];
        if memory == MemoryType::Hugetlb {
            // The caller's region declared with base pages: registered again, then refused
            // for lack of ZEROPAGE.
            failing.push((
                "a refused backend",
                vec![
                    servers_served.clone(),
                    Served::new(callers.addr(), callers.len()),
                ],
            ));
        }
        // Each case reads its own page: the pages read before are populated.
        for (page, (what, regions)) in failing.into_iter().enumerate() {
            let fd = uffd.as_raw_fd();
            let was_non_blocking = uffd.is_non_blocking().unwrap();
            let mut builder = Server::builder();
            for r in regions {
                builder.region(r);
            }
            // SAFETY: the regions hold no Rust object.
            let started = unsafe { builder.start(uffd, Arc::new(Zeros::new(1 << 40))) };
            let (back, e) = started.expect_err("the start must fail").into_parts();
            eprintln!("{memory:?}, {what}: as expected: {e}");
            assert_eq!(back.as_raw_fd(), fd, "the same descriptor, still open");
            assert_eq!(back.is_non_blocking().unwrap(), was_non_blocking);
            uffd = back;
            // The server's own registration is gone: the read is not held.
            let (done, reader) = read_completes(&servers, page);
            assert!(
                done,
                "{memory:?}, {what}: the failed start left its region registered"
            );
            assert_eq!(join_timeout(reader), 0);
            // The caller's is there: the read faults to the descriptor.
            let (done, reader) = read_completes(&callers, page);
            assert!(
                !done,
                "{memory:?}, {what}: the caller's registration is gone"
            );
            serve_zeros(&uffd, &callers, page);
            assert_eq!(join_timeout(reader), 0);
        }
        // Closed before the regions are unmapped (an unmap of a registered range waits for
        // its event to be read).
        drop(uffd);
    }
}

/// The range (start, end) whose SIGBUS the handler below reports by exiting with 42.
static MOVED: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    if (MOVED[0].load(Relaxed)..MOVED[1].load(Relaxed)).contains(&addr) {
        // SAFETY: async-signal-safe.
        unsafe { libc::_exit(42) };
    }
    // Another page's SIGBUS (the failed fault's): park this thread.
    loop {
        // SAFETY: async-signal-safe.
        unsafe { libc::pause() };
    }
}

/// Fail closed while an `mremap` of unplaced pages is pending: the poisoning reads the
/// `REMAP`, starts over on the new map, and poisons the moved pages at their new address (an
/// access there raises SIGBUS; before the fix it blocked forever: the poisoning went on over
/// the old map).
#[test]
fn fail_closed_poisons_pages_moved_during_the_poisoning() {
    if support::kernel_lacks(FeatureFlags::POISON).is_some() {
        return;
    }
    let outcome = support::run_in_child(|report| {
        let memory = MemoryType::Anonymous;
        let uffd = serve_uffd(memory, RegisterMode::MISSING).ok_or("no uffd")?;
        let watcher = uffd.try_clone().map_err(|e| e.to_string())?;
        let region = Arc::new(Region::new(memory, 64).ok_or("no region")?);
        let target = Region::new(memory, 16).ok_or("no target")?;
        let ps = region.page_size();
        let gate = Arc::new(Gate::default());
        let mut source = TestSource::new(snapshot(64, ps), ps);
        source.fail_at = Some(40);
        source.gate = Some(Arc::clone(&gate));
        // Said to never block, so the single worker reads and serves itself: held at the
        // gate, it leaves events pending.
        source.never_blocks = true;
        // SAFETY: installs a handler for SIGBUS in this child process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
        // SAFETY: the test region holds no Rust object.
        let server = unsafe {
            Server::builder()
                .fault_around(ps)
                .error_policy(ErrorPolicy::FailClosed)
                .region(Served::new(region.addr(), region.len()))
                .start(uffd, Arc::new(source))
        }
        .map_err(|e| e.to_string())?;
        // The only worker's fetch (page 40, which fails) is held...
        let _failing = blocked_reader(&region, 40);
        gate.wait_entered();
        // ... while pages 0..16 (unplaced) move: the mremap waits for its REMAP to be read.
        let (from, to) = (region.addr() as usize, target.addr() as usize);
        let _mover = spawn_named("moving", move || {
            // SAFETY: moves unplaced pages of our mapping over our other mapping.
            let moved = unsafe {
                libc::mremap(
                    from as *mut libc::c_void,
                    16 * ps,
                    16 * ps,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut libc::c_void,
                )
            };
            moved as usize
        });
        support::wait_readable(&watcher);
        drop(watcher);
        MOVED[0].store(to, std::sync::atomic::Ordering::Relaxed);
        MOVED[1].store(to + 16 * ps, std::sync::atomic::Ordering::Relaxed);
        report.note("REMAP pending, the fetch held");
        gate.open();
        if !server.wait_stopped(support::TIMEOUT) {
            return Err("the server did not stop".into());
        }
        report.note(&format!("stopped: {:?}", server.outcome()));
        // SAFETY: a moved page (unplaced): SIGBUS if poisoned, else it blocks.
        let _ = unsafe { ((to + 5 * ps) as *const u8).read_volatile() };
        Err("the access to a moved, unplaced page returned".into())
    });
    assert_eq!(
        outcome.exit,
        support::ChildExit::Exited(42),
        "the moved page must raise SIGBUS; the child's report:\n{}",
        outcome.report
    );
}
