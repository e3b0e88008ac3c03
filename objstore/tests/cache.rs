//! The disk cache over a real nginx: a second restore reads nothing from the network; a
//! changed object invalidates it; the budget bounds it; a damaged cache falls back to the
//! network with every byte right.

mod support;

use std::time::Duration;

use support::nginx::Nginx;
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::{wait_until, write_snapshot, TempDir};
use userfaultfd_objstore::{open, ObjectSource, Options};

const MIB: u64 = 1 << 20;
const LEN: u64 = 16 * MIB;

fn options(cache: &TempDir) -> Options {
    let mut o = Options::default();
    o.chunk_size = 1 << 20;
    o.cache_dir = Some(cache.path().to_path_buf());
    o.hedge_after = None;
    o
}

/// A restore from `url`, every page touched in random order and checked against `version`;
/// the source's stats.
fn restore(url: &str, opts: &Options, version: u64) -> userfaultfd_objstore::Stats {
    let source = open(url, opts).unwrap();
    let r = Restore::start(source.clone(), LEN as usize, 2);
    r.touch(
        &shuffled(LEN as usize / PAGE, version),
        2,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.mismatches(version), Vec::<usize>::new());
    assert_eq!(source.cache_error(), None);
    source.stats()
}

fn cache_files(dir: &TempDir, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[test]
fn second_restore_reads_nothing_from_the_network() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    let path = nginx.www().join("mem");
    write_snapshot(&path, 1, LEN);
    let opts = options(&cache);
    let cold = restore(&nginx.url("mem"), &opts, 1);
    assert!(cold.requests >= 16 && cold.cache_reads == 0, "{cold:?}");
    let warm = restore(&nginx.url("mem"), &opts, 1);
    assert_eq!(warm.requests, 0, "{warm:?}");
    assert_eq!(warm.bytes_fetched, 0, "{warm:?}");
    assert!(warm.cache_bytes >= LEN, "{warm:?}");

    // The object changes: the cache of the old version is not used, and is deleted.
    std::thread::sleep(Duration::from_millis(1100));
    write_snapshot(&path, 2, LEN);
    let changed = restore(&nginx.url("mem"), &opts, 2);
    assert_eq!(changed.cache_reads, 0, "{changed:?}");
    assert_eq!(changed.bytes_fetched, LEN, "{changed:?}");
    assert_eq!(cache_files(&cache, "data").len(), 1);
    let again = restore(&nginx.url("mem"), &opts, 2);
    assert_eq!(again.requests, 0, "{again:?}");
}

#[test]
fn budget_bounds_the_cache() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    write_snapshot(&nginx.www().join("mem"), 3, LEN);
    let mut opts = options(&cache);
    opts.cache_budget = 4 * MIB;
    restore(&nginx.url("mem"), &opts, 3);
    let data = &cache_files(&cache, "data")[0];
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(data).unwrap());
    assert!(blocks * 512 <= 4 * MIB, "{} bytes on disk", blocks * 512);
    let warm = restore(&nginx.url("mem"), &opts, 3);
    assert!(warm.cache_bytes >= 4 * MIB, "{warm:?}");
    assert_eq!(warm.bytes_fetched, 12 * MIB, "{warm:?}");
}

/// The cache file loses its end while closed: its marks are void, everything comes from
/// the network. It loses its end under an open source (a failing disk): the short read turns
/// the cache off, the chunks come from the network. Every byte right in both.
#[test]
fn damaged_cache_falls_back_to_the_network() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    write_snapshot(&nginx.www().join("mem"), 4, LEN);
    let opts = options(&cache);
    restore(&nginx.url("mem"), &opts, 4);
    let data = &cache_files(&cache, "data")[0];
    let cut = |len| {
        let f = std::fs::OpenOptions::new().write(true).open(data).unwrap();
        f.set_len(len).unwrap();
    };
    cut(LEN / 2);
    let stats = restore(&nginx.url("mem"), &opts, 4);
    assert_eq!(stats.cache_reads, 0, "{stats:?}");
    assert_eq!(stats.bytes_fetched, LEN, "{stats:?}");

    // Now whole again (the restore above rewrote it); cut it under an open source.
    let source = open(&nginx.url("mem"), &opts).unwrap();
    cut(LEN / 2);
    let r = Restore::start(source.clone(), LEN as usize, 2);
    r.touch(
        &shuffled(LEN as usize / PAGE, 9),
        2,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.mismatches(4), Vec::<usize>::new());
    let error = source.cache_error().expect("a cache read error");
    assert!(error.contains("reading the cache"), "{error}");
    assert!(source.stats().bytes_fetched > 0, "{:?}", source.stats());
}

/// A byte of one cached chunk is flipped between two restores: the second restore verifies
/// each chunk on its first read, drops that one, fetches exactly it again (1 request, 1 MiB)
/// (in one or two requests, 1 MiB) and serves every byte right; the third reads nothing from the network (the chunk was
/// written again). Each chunk is verified once per restore, however many reads it serves.
#[test]
fn corrupted_chunk_is_fetched_again() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    write_snapshot(&nginx.www().join("mem"), 5, LEN);
    let opts = options(&cache);
    restore(&nginx.url("mem"), &opts, 5);
    let data = &cache_files(&cache, "data")[0];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(data)
            .unwrap();
        let at = 5 * MIB + 12_345;
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).unwrap();
        byte[0] ^= 0x20;
        f.write_all_at(&byte, at).unwrap();
    }
    let second = restore(&nginx.url("mem"), &opts, 5);
    assert_eq!(second.cache_discarded, 1, "{second:?}");
    assert_eq!(second.chunks_fetched, 1, "{second:?}");
    assert_eq!(second.bytes_fetched, MIB, "{second:?}");
    // One request, or two when the first fault was inside the chunk (from the page, and
    // the part before it).
    assert!(second.requests <= 2, "{second:?}");
    assert_eq!(second.cache_verified, 15, "{second:?}");
    let third = restore(&nginx.url("mem"), &opts, 5);
    assert_eq!(third.requests, 0, "{third:?}");
    assert_eq!(third.cache_discarded, 0, "{third:?}");
    assert_eq!(third.cache_verified, 16, "{third:?}");
    assert!(third.cache_reads > 16, "{third:?}");
}

/// A restore of `version` into `memory` from `source`, every page touched in random order and
/// checked; `None` (skipped, or failed in strict mode) when the memory type is unavailable.
fn restore_into(memory: Memory, source: &std::sync::Arc<ObjectSource>, version: u64) -> Option<()> {
    let r = Restore::start_on(memory, source.clone(), LEN as usize, 2, None)?;
    r.touch(
        &shuffled(LEN as usize / PAGE, version),
        2,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
    assert_eq!(r.mismatches(version), Vec::<usize>::new(), "{memory:?}");
    Some(())
}

/// Waits until the source has checked all `chunks` cached chunks (its verify thread).
fn wait_verified(source: &ObjectSource, chunks: u64) {
    wait_until(
        || source.stats().cache_verified >= chunks,
        || format!("{:?}", source.stats()),
    );
}

/// [`options`] for a restore into `memory`: its page size, chunks at least a page.
fn options_for(cache: &TempDir, memory: Memory) -> Options {
    let mut o = options(cache);
    o.page_size = memory.page_size();
    o.chunk_size = o.chunk_size.max(memory.page_size());
    o
}

/// A warm restore, its chunks all verified, copies them straight from the cache file's
/// mapping: nothing from the network, every byte right. Then the file loses its second half
/// under an open source whose chunks are all verified (a failing disk): the kernel's copies
/// from the lost half fail with `EFAULT`, the page server tells the source, which turns the
/// cache off and fetches from the network; every byte right, never `SIGBUS`. The same with
/// `Options::cache_mapping` off, where the failure is `pread`'s. On every memory type
/// (hugetlbfs: 2 MiB pages and chunks).
#[test]
fn warm_restores_copy_from_the_cache_mapping_and_survive_losing_it() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    write_snapshot(&nginx.www().join("mem"), 6, LEN);
    for memory in Memory::ALL {
        for mapping in [true, false] {
            let mut opts = options_for(&cache, memory);
            opts.cache_mapping = mapping;
            let chunks = LEN / opts.chunk_size as u64;
            // Fill the cache (after the previous round cut it, or with other chunks).
            let source = open(&nginx.url("mem"), &opts).unwrap();
            if restore_into(memory, &source, 6).is_none() {
                break;
            }
            drop(source);

            let source = open(&nginx.url("mem"), &opts).unwrap();
            wait_verified(&source, chunks);
            restore_into(memory, &source, 6).unwrap();
            let warm = source.stats();
            let what = format!("{memory:?}, mapping {mapping}");
            assert_eq!(
                (warm.requests, warm.bytes_fetched),
                (0, 0),
                "{what}: {warm:?}"
            );
            assert_eq!(source.cache_error(), None, "{what}");
            drop(source);

            let source = open(&nginx.url("mem"), &opts).unwrap();
            wait_verified(&source, chunks);
            let data = &cache_files(&cache, "data")[0];
            let f = std::fs::OpenOptions::new().write(true).open(data).unwrap();
            f.set_len(LEN / 2).unwrap();
            restore_into(memory, &source, 6).unwrap();
            let error = source
                .cache_error()
                .expect("the failure turns the cache off");
            // (Without the mapping, a short `pread`.)
            assert_eq!(
                error.contains("through its mapping"),
                mapping,
                "{what}: {error}"
            );
            assert!(error.contains("reading the cache at"), "{what}: {error}");
            let stats = source.stats();
            assert!(stats.bytes_fetched >= LEN / 2, "{what}: {stats:?}");
        }
    }
}

/// The cache file cut at a moment during a warm restore whose chunks are all verified
/// (three workers, two touching threads): copies from the mapping race with the failure and
/// with each other, several may fail at once. Every round completes with every byte right,
/// and the cache turned off by the mapping's failure (unless the restore was over before
/// the cut). On every memory type, at several moments.
///
/// Each round first fills the cache with a restore and drops its source: every chunk whose
/// bytes all arrived must then be in the cache, even one whose last read returned just as
/// the source closed (before the fix, that chunk was dropped as unfinished: the hugetlbfs
/// rounds, one page per chunk, found 7 of 8 chunks cached in 3 runs of 8).
#[test]
fn cache_cut_during_a_warm_restore() {
    let Some(nginx) = Nginx::start() else { return };
    let cache = TempDir::new("cache");
    write_snapshot(&nginx.www().join("mem"), 7, LEN);
    for memory in Memory::ALL {
        let opts = options_for(&cache, memory);
        for (round, delay_us) in [0u64, 300, 1000, 3000].into_iter().enumerate() {
            // Fill the cache again (the previous round cut it).
            let source = open(&nginx.url("mem"), &opts).unwrap();
            if restore_into(memory, &source, 7).is_none() {
                return;
            }
            drop(source);

            let what = format!("{memory:?}, cut after {delay_us} us");
            let source = open(&nginx.url("mem"), &opts).unwrap();
            // Every chunk verified first: the cut then fails copies from the mapping.
            wait_verified(&source, LEN / opts.chunk_size as u64);
            let r = Restore::start_on(memory, source.clone(), LEN as usize, 3, None).unwrap();
            let data = cache_files(&cache, "data")[0].clone();
            let cutter = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(delay_us));
                let f = std::fs::OpenOptions::new().write(true).open(data).unwrap();
                f.set_len(LEN / 3).unwrap();
            });
            r.touch(
                &shuffled(LEN as usize / PAGE, 10 + round as u64),
                2,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            cutter.join().unwrap();
            assert_eq!(r.mismatches(7), Vec::<usize>::new(), "{what}");
            // Turned off, unless the restore finished before the cut reached anything.
            if let Some(error) = source.cache_error() {
                assert!(error.contains("through its mapping"), "{what}: {error}");
            }
        }
    }
}
