//! The demo of the userfaultfd(2) man page, in Rust: a mapping whose pages are filled lazily
//! by a handler thread. The main thread reads through the mapping; each first touch of a page
//! blocks, the handler (which waits with `poll(2)` on the non-blocking descriptor) prints the
//! fault and serves the page filled with a character that changes from fault to fault, and
//! the read returns that character.
//!
//! Run: `cargo run --example manpage [PAGES]` (default 4 pages). It ends by itself once every
//! page has been read.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::thread;

use userfaultfd::{Event, Uffd, UffdBuilder};

fn main() {
    let pages: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 4,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: manpage [PAGES]  (a positive number of pages)");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(pages) {
        eprintln!("manpage: {e}");
        std::process::exit(1);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn run(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let page_size = page_size();
    let len = pages * page_size;

    // Non-blocking, so that the handler can wait for events with poll(2).
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .create()?;

    // SAFETY: a new private anonymous mapping; no Rust object lives in it, and it is only
    // accessed through raw reads below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
    }
    println!("Address returned by mmap() = {addr:p}");
    uffd.register(addr, len)?;

    let stop = event_fd()?;
    let handler = {
        let stop = stop.try_clone()?;
        thread::Builder::new()
            .name("fault-handler".into())
            .spawn(move || serve_faults(&uffd, &stop, page_size))?
    };

    // Read a byte of each page, twice: the first read of a page faults, the second does not.
    // Pages are touched in order, so page `i` holds the `i`-th character.
    let base = addr as *const u8;
    let mut wrong = 0;
    for round in 0..2 {
        for (i, offset) in (0..len).step_by(page_size).enumerate() {
            let at = offset + 0x0f;
            // SAFETY: `at` is inside the mapping; a missing page is served by the handler.
            let byte = unsafe { base.add(at).read_volatile() };
            println!(
                "Read address {:p} in main() (round {round}): {}",
                base.wrapping_add(at),
                byte as char
            );
            if byte != b'A' + (i % 20) as u8 {
                wrong += 1;
            }
        }
    }

    signal(&stop)?;
    let faults = handler
        .join()
        .map_err(|_| "the handler thread panicked")??;
    println!("{faults} faults served for {pages} pages");
    // SAFETY: unmaps our mapping; nothing refers to it any more.
    unsafe { libc::munmap(addr, len) };
    if faults != pages || wrong != 0 {
        return Err(
            format!("expected {pages} faults, served {faults}; {wrong} wrong bytes").into(),
        );
    }
    Ok(())
}

/// Waits for faults with poll(2) until `stop` is signalled; serves each with a page of the
/// next character of 'A'..='T'. Returns the number of faults served.
fn serve_faults(uffd: &Uffd, stop: &OwnedFd, page_size: usize) -> Result<usize, String> {
    let mut page = vec![0u8; page_size];
    let mut faults = 0;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {err}"));
        }
        println!(
            "\nfault_handler_thread():\n    poll() returns: nready = {ready}; POLLIN = {}; POLLERR = {}",
            fds[0].revents & libc::POLLIN != 0,
            fds[0].revents & libc::POLLERR != 0
        );
        if fds[1].revents & libc::POLLIN != 0 {
            return Ok(faults);
        }
        // Non-blocking: `None` if another reader took the event first.
        let Some(event) = uffd.read_event().map_err(|e| e.to_string())? else {
            continue;
        };
        let Event::Pagefault { kind, rw, addr, .. } = event else {
            return Err(format!("unexpected event {event:?}"));
        };
        println!("    UFFD_EVENT_PAGEFAULT event: {kind:?} {rw:?} fault; address = {addr:p}");

        page.fill(b'A' + (faults % 20) as u8);
        faults += 1;
        let start = (addr as usize & !(page_size - 1)) as *mut libc::c_void;
        // SAFETY: `start` is the missing page of the registered mapping, which holds no Rust
        // object; `page` is readable for `page_size` bytes.
        let copied = unsafe { uffd.copy(page.as_ptr().cast(), start, page_size, true) }
            .map_err(|e| e.to_string())?;
        println!("        (uffdio_copy.copy returned {copied})");
    }
}

/// An eventfd that tells the handler to stop.
fn event_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(stop: &OwnedFd) -> std::io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one` to our eventfd.
    let n = unsafe { libc::write(stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if n != 8 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
