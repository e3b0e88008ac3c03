//! Serving page faults from a tokio task: OS threads fault on a lazily populated region, and
//! one async task reads the events with `.await` and fills each page.
//!
//! Run: `cargo run --example async_server --features tokio`

use std::sync::Arc;

use userfaultfd::{AsyncUffd, Event, UffdBuilder};

const PAGES: usize = 8;
const THREADS: usize = 4;

#[tokio::main(flavor = "current_thread")]
async fn main() -> userfaultfd::Result<()> {
    // SAFETY: sysconf has no memory effects.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize;
    let len = PAGES * page;
    // SAFETY: a fresh private anonymous mapping; only raw pointers access it.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap");
    let uffd = Arc::new(AsyncUffd::new(
        UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .create()?,
    )?);
    uffd.get_ref().register(mem, len)?;

    // The faulting side: plain OS threads, each reading two pages.
    let base = mem as usize;
    let readers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (0..PAGES / THREADS)
                    .map(|i| {
                        let p = t * (PAGES / THREADS) + i;
                        // SAFETY: inside the mapping; blocks until the server fills the page.
                        unsafe { ((base + p * page) as *const u8).read_volatile() }
                    })
                    .collect::<Vec<u8>>()
            })
        })
        .collect();

    // The serving side: one task, never blocking the runtime.
    for served in 1..=PAGES {
        let Event::Pagefault { addr, .. } = uffd.read_event().await? else {
            continue;
        };
        let index = (addr as usize - base) / page;
        let fill = vec![b'a' + index as u8; page];
        // SAFETY: `addr` is a missing page of our mapping, which holds no Rust object.
        unsafe {
            uffd.get_ref()
                .copy(fill.as_ptr().cast(), addr, page, true)?
        };
        println!("served fault {served}: page {index} at {addr:?}");
    }
    for (t, reader) in readers.into_iter().enumerate() {
        let bytes = reader.join().expect("reader thread");
        println!("thread {t} read {:?}", String::from_utf8_lossy(&bytes));
    }
    // SAFETY: the mapping made above; the readers have finished.
    unsafe { libc::munmap(mem, len) };
    Ok(())
}
