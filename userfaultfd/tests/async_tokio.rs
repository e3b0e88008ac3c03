//! `AsyncUffd` (cargo feature `tokio`): faults from several OS threads, served by one async
//! task inside a tokio runtime, on every memory type; every byte verified; a blocking
//! descriptor is refused and given back; a reactor error says so; reads cancelled while
//! faults arrive lose no event.

mod support;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use support::{join_timeout, pattern, spawn_named, MemoryType, Region, TIMEOUT};
use userfaultfd::{AsyncUffd, Error, Event, EventBuffer, FeatureFlags, UffdBuilder};

fn async_uffd() -> AsyncUffd {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .create()
        .unwrap();
    AsyncUffd::new(uffd).unwrap()
}

/// Serves `count` faults on `region` with pattern pages, reading batches when `batch`.
async fn serve(uffd: &AsyncUffd, region: &Region, count: usize, batch: bool) {
    let ps = region.page_size();
    let mut buf = EventBuffer::new(8);
    let mut served = 0;
    while served < count {
        let events: Vec<Event> = if batch {
            let events = uffd.read_events(&mut buf).await.unwrap();
            events.map(|e| e.unwrap()).collect()
        } else {
            vec![uffd.read_event().await.unwrap()]
        };
        for event in events {
            let Event::Pagefault { addr, .. } = event else {
                panic!("unexpected {event:?}");
            };
            let index = (addr as usize - region.ptr() as usize) / ps;
            let data = pattern(index, ps);
            // SAFETY: a missing page of the test mapping.
            unsafe { uffd.get_ref().copy(data.as_ptr().cast(), addr, ps, true) }.unwrap();
            served += 1;
        }
    }
}

/// Pages per region: fewer on hugetlbfs (2 MiB each, from the reserved pool); a multiple of
/// the four faulting threads.
fn pages_for(memory: MemoryType) -> usize {
    if memory == MemoryType::Hugetlb {
        4
    } else {
        16
    }
}

/// A faulting thread: it returns each page it read, with its index.
type Faulting = support::Waitable<Vec<(usize, Vec<u8>)>>;

/// Four OS threads, each reading its share of `region`'s pages (each read blocks in a fault
/// until served); they return what they read.
fn fault_from_threads(region: &Arc<Region>) -> Vec<Faulting> {
    let share = region.pages() / 4;
    (0..4)
        .map(|t| {
            let region = Arc::clone(region);
            spawn_named("faulting", move || {
                (t * share..(t + 1) * share)
                    .map(|p| (p, region.read_page(p)))
                    .collect::<Vec<_>>()
            })
        })
        .collect()
}

/// Every page the threads read holds its pattern.
fn verify(region: &Region, threads: Vec<Faulting>) {
    let mut seen = 0;
    for thread in threads {
        for (p, bytes) in join_timeout(thread) {
            assert!(
                bytes == pattern(p, region.page_size()),
                "{:?} page {p}",
                region.memory()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, region.pages());
}

fn check_faults_served(batch: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uffd = async_uffd();
        for memory in MemoryType::ALL {
            let Some(region) = Region::new(memory, pages_for(memory)) else {
                continue;
            };
            let region = Arc::new(region);
            uffd.get_ref()
                .register(region.addr(), region.len())
                .unwrap();
            let threads = fault_from_threads(&region);
            let served = serve(&uffd, &region, region.pages(), batch);
            tokio::time::timeout(TIMEOUT, served)
                .await
                .expect("faults served in time");
            verify(&region, threads);
        }
    });
}

#[test]
fn an_async_task_serves_faults_from_several_threads() {
    check_faults_served(false);
}

#[test]
fn batched_async_reads_serve_faults_from_several_threads() {
    check_faults_served(true);
}

/// A blocking descriptor is refused with the reason, and given back open: the refusal does
/// not close a descriptor the caller still needs.
#[test]
fn a_blocking_descriptor_is_refused_and_given_back() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let blocking = UffdBuilder::new()
            .close_on_exec(true)
            .require_features(FeatureFlags::THREAD_ID)
            .create()
            .unwrap();
        let fd = blocking.as_raw_fd();
        let rejected = AsyncUffd::new(blocking).unwrap_err();
        let err = rejected.error();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(err.to_string().contains("non_blocking(true)"), "{err}");
        assert_eq!(rejected.to_string(), err.to_string());
        let (uffd, _) = rejected.into_parts();
        assert_eq!(uffd.as_raw_fd(), fd, "the same descriptor");
        assert_eq!(uffd.features(), FeatureFlags::THREAD_ID);
        // SAFETY: F_GETFD only reads the descriptor flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "closed: {}", std::io::Error::last_os_error());
        // And `?` into a userfaultfd::Error keeps the reason.
        let converted: Error = AsyncUffd::new(uffd).unwrap_err().into();
        assert!(matches!(converted, Error::InvalidArgument { .. }));
    });
}

/// An error of the reactor (here: its runtime was shut down while the descriptor was
/// registered with it) names the reactor, not a read of the userfaultfd, and keeps tokio's
/// message.
#[test]
fn a_reactor_error_says_it_is_the_reactor() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uffd = first.block_on(async { async_uffd() });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = second
        .block_on(async { tokio::time::timeout(TIMEOUT, uffd.read_event()).await })
        .expect("the read must end with an error, not wait")
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("tokio reactor"), "{text}");
    assert!(!text.contains("read from the userfaultfd"), "{text}");
    let kind = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("tokio's io::Error is the source")
        .kind();
    assert_eq!(std::io::Error::from(err).kind(), kind, "kept as io::Error");
}

#[test]
fn cancelled_reads_lose_no_event() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uffd = async_uffd();
        for memory in MemoryType::ALL {
            let Some(region) = Region::new(memory, pages_for(memory)) else {
                continue;
            };
            let region = Arc::new(region);
            uffd.get_ref()
                .register(region.addr(), region.len())
                .unwrap();
            // Nothing pending yet: a read times out and is dropped.
            let early = tokio::time::timeout(Duration::from_millis(20), uffd.read_event()).await;
            assert!(early.is_err(), "no event was pending");

            // Faults arrive while reads are polled once and dropped: each read either returns
            // an event in that poll or is cancelled, and a cancelled read must leave its event
            // for the next one. Every fault must be served (a lost one would block its thread).
            let threads = fault_from_threads(&region);
            let ps = region.page_size();
            let (mut served, mut cancelled) = (0, 0);
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while served < region.pages() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "faults served in time"
                );
                let event = tokio::select! {
                    biased;
                    event = uffd.read_event() => event.unwrap(),
                    () = std::future::ready(()) => {
                        cancelled += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let Event::Pagefault { addr, .. } = event else {
                    panic!("unexpected {event:?}");
                };
                let data = pattern((addr as usize - region.ptr() as usize) / ps, ps);
                // SAFETY: a missing page of the test mapping.
                unsafe { uffd.get_ref().copy(data.as_ptr().cast(), addr, ps, true) }.unwrap();
                served += 1;
            }
            verify(&region, threads);
            assert!(cancelled > 0, "{memory:?}: no read was cancelled");
            eprintln!("{memory:?}: {served} faults served, {cancelled} reads cancelled");
        }
    });
}
