//! `AsyncUffd` (cargo feature `tokio`): faults from several OS threads, served by one async
//! task inside a tokio runtime; every byte verified; a blocking descriptor is refused; a read
//! cancelled by a timeout loses no event.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{join_timeout, pattern, spawn_named, MemoryType, Region, TIMEOUT};
use userfaultfd::{AsyncUffd, Error, Event, EventBuffer, UffdBuilder};

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

fn check_faults_served(batch: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uffd = async_uffd();
        for memory in [MemoryType::Anonymous, MemoryType::Shmem] {
            let region = Arc::new(Region::new(memory, 16).unwrap());
            uffd.get_ref()
                .register(region.addr(), region.len())
                .unwrap();
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let region = Arc::clone(&region);
                    spawn_named("faulting", move || {
                        (t * 4..t * 4 + 4)
                            .map(|p| (p, region.read_page(p)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let served = serve(&uffd, &region, region.pages(), batch);
            tokio::time::timeout(TIMEOUT, served)
                .await
                .expect("faults served in time");
            for thread in threads {
                for (p, bytes) in join_timeout(thread) {
                    assert!(
                        bytes == pattern(p, region.page_size()),
                        "{memory:?} page {p}"
                    );
                }
            }
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

#[test]
fn a_blocking_descriptor_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let blocking = UffdBuilder::new().close_on_exec(true).create().unwrap();
        let err = AsyncUffd::new(blocking).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(err.to_string().contains("non_blocking(true)"), "{err}");
    });
}

#[test]
fn a_cancelled_read_loses_no_event() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uffd = async_uffd();
        let region = Arc::new(Region::new(MemoryType::Anonymous, 1).unwrap());
        uffd.get_ref()
            .register(region.addr(), region.len())
            .unwrap();
        // Nothing pending: the read times out and is dropped.
        let early = tokio::time::timeout(Duration::from_millis(50), uffd.read_event()).await;
        assert!(early.is_err(), "no event was pending");
        // The next fault is still delivered to the next read.
        let reader = {
            let region = Arc::clone(&region);
            spawn_named("faulting", move || region.read_page(0))
        };
        tokio::time::timeout(TIMEOUT, serve(&uffd, &region, 1, false))
            .await
            .expect("the fault was delivered");
        assert!(join_timeout(reader) == pattern(0, region.page_size()));
    });
}
