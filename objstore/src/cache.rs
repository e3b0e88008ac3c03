//! The disk cache: chunks kept across restores in a cache directory, per object version.
//!
//! Each object version (its name, ETag, length, and the chunk size) has two files, named
//! `<object hash>-<version hash>`: `.data`, a sparse file of the object's length holding the
//! chunks fetched so far at their offsets, and `.map`, a header and, per chunk, the XXH64
//! checksum of its bytes ([`crate::checksum`]; 0: absent). A chunk is written to `.data`
//! once all its bytes have arrived; `.map` is written by [`DiskCache::persist`] after
//! `fdatasync` of `.data`, so a chunk marked present is on disk even after a crash (a crash
//! before it loses only the marks: those chunks are fetched again).
//!
//! A chunk is verified once per source, before it is first served: a thread started with
//! the source reads back every cached chunk ahead of the faults (the working set's first),
//! and a fault that reaches a chunk not yet checked checks it itself (the part it asked for
//! copied out on the way). Verifying reads the whole chunk (`pread`), hashes it, and compares
//! it with its checksum. A match marks it verified, and every later fault on it is answered
//! from a read-only mapping of `.data` ([`CacheMapping`]): the page server's `UFFDIO_COPY`
//! copies straight from the page cache, with no `pread` and no hashing (one `pread` of just
//! the pages asked for where the file could not be mapped). (Faults racing on a chunk's first
//! read each verify it: rare, and no bytes are served unverified.) A mismatch (bit rot, a torn write,
//! the file changed behind the cache's back) drops the chunk from the cache — it is fetched
//! again from the store, written again, and counted in
//! [`Stats::cache_discarded`](crate::Stats::cache_discarded) — and its bytes are never
//! served. Bytes of a verified chunk that rot later, while the source lives, are not
//! detected (the next source verifies them again).
//!
//! Opening a version deletes the files of the object's other versions (a changed object
//! invalidates its cache), and the least recently opened objects' files while the directory
//! holds more than the budget. A failing cache disk never fails a restore and never raises
//! `SIGBUS`: a `pread` error, or a copy from the mapping that the kernel cannot complete
//! (`EFAULT`, reported back through `PageSource::unreadable`), turns the cache off and the
//! chunks come from the network; Rust code never reads the mapping itself. An object
//! without an ETag is not cached on disk: nothing would tell a changed object from the one
//! cached. A data file of the wrong length is discarded whole.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::cache_mapping::CacheMapping;
use crate::checksum::{xxh64, Xxh64};
use crate::memory::zeroed;
use crate::sigv4::sha256_hex;

/// The map's header. (Version 01 had no checksums: its marks are void.)
const MAGIC: &[u8; 8] = b"UFOBJC02";

/// Bytes read and hashed at a time when a chunk is verified.
const VERIFY_STEP: usize = 256 << 10;

/// The checksum kept for a chunk's bytes: never 0, which means absent.
fn checksum(data: &[u8]) -> u64 {
    xxh64(data).max(1)
}

/// What reading a chunk back for the first time found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Its checksum matched: the bytes asked for are in the buffer given (`true` for the
    /// caller that marked it verified, which counts it).
    Intact(bool),
    /// It did not: the chunk was dropped from the cache (`true` for the caller that
    /// dropped it, which counts it).
    Corrupt(bool),
}

pub(crate) struct DiskCache {
    data: File,
    /// The data file mapped for the warm path (`None` if it could not be mapped: `pread`).
    mapping: Option<CacheMapping>,
    map_path: PathBuf,
    /// Per chunk: the checksum of its bytes on disk (written, and marked); 0 when absent.
    sums: Box<[AtomicU64]>,
    /// Per chunk: read back and found intact by this source (or written by it).
    verified: Box<[AtomicBool]>,
    /// Serializes writing the map.
    persisting: Mutex<()>,
    chunk_size: u64,
    len: u64,
    /// Bytes this object may still add to the directory.
    room: AtomicU64,
    disabled: AtomicBool,
    error: Mutex<Option<String>>,
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

impl DiskCache {
    /// Opens (or creates) the cache of this object version in `dir`.
    pub(crate) fn open(
        dir: &Path,
        object: &str,
        etag: &str,
        len: u64,
        chunk_size: u64,
        budget: u64,
        map: bool,
    ) -> io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        let object_hash = &sha256_hex(object.as_bytes())[..24];
        let version_hash = &sha256_hex(format!("{etag}\n{len}\n{chunk_size}").as_bytes())[..24];
        let stem = format!("{object_hash}-{version_hash}");
        let data_path = dir.join(format!("{stem}.data"));
        let map_path = dir.join(format!("{stem}.map"));
        let chunks = len.div_ceil(chunk_size) as usize;

        // Other versions of this object: invalid now.
        let mut others: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem_of) = name
                .strip_suffix(".data")
                .or_else(|| name.strip_suffix(".map"))
            else {
                continue;
            };
            if stem_of == stem {
                continue;
            }
            if stem_of.starts_with(object_hash) {
                let _ = fs::remove_file(&path);
            } else if name.ends_with(".data") {
                let used = fs::metadata(&path).and_then(|m| m.modified());
                if let Ok(when) = used {
                    others.push((when, path.clone(), allocated(&path)));
                }
            }
        }
        // Least recently opened first, until the others leave room for all of this one.
        others.sort();
        let mut others_bytes: u64 = others.iter().map(|o| o.2).sum();
        for (_, path, bytes) in &others {
            if others_bytes <= budget.saturating_sub(len) {
                break;
            }
            let _ = fs::remove_file(path);
            let _ = fs::remove_file(path.with_extension("map"));
            others_bytes -= bytes;
        }

        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)?;
        // A data file of another length was cut short or tampered with: its marks are void.
        let intact = data.metadata()?.len() == len;
        if !intact {
            data.set_len(0)?;
            data.set_len(len)?;
        }
        // Opened now: the most recently used (for eviction by others).
        let _ = data.set_modified(std::time::SystemTime::now());
        let sums: Box<[AtomicU64]> = zeroed(chunks, "the cache's chunk map")?;
        let verified = zeroed(chunks, "the cache's chunk map")?;
        if let (true, Ok(map)) = (intact, fs::read(&map_path)) {
            if map.len() == MAGIC.len() + 8 * chunks && map.starts_with(MAGIC) {
                for (sum, bytes) in sums.iter().zip(map[MAGIC.len()..].chunks_exact(8)) {
                    let value = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
                    sum.store(value, Ordering::Relaxed);
                }
            }
        }
        let present = sums
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count() as u64;
        let mine = present * chunk_size;
        let mapping = if map {
            CacheMapping::new(&data, len)
        } else {
            None
        };
        Ok(DiskCache {
            data,
            mapping,
            map_path,
            sums,
            verified,
            persisting: Mutex::new(()),
            chunk_size,
            len,
            room: AtomicU64::new(budget.saturating_sub(others_bytes).saturating_sub(mine)),
            disabled: AtomicBool::new(false),
            error: Mutex::new(None),
        })
    }

    fn fail(&self, what: String) {
        self.disabled.store(true, Ordering::Release);
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(what);
    }

    /// The first I/O error, after which the cache is no longer used.
    pub(crate) fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn has(&self, chunk: usize) -> bool {
        !self.disabled.load(Ordering::Acquire) && self.sums[chunk].load(Ordering::Acquire) != 0
    }

    /// Whether chunk `chunk` was found intact (or written) by this source.
    pub(crate) fn verified(&self, chunk: usize) -> bool {
        self.verified[chunk].load(Ordering::Acquire)
    }

    /// Reads chunk `chunk` (the object's bytes `span`) back whole, hashing it, and copies
    /// the bytes at `offset` (inside `span`) into `dst` on the way. A mismatch drops the
    /// chunk from the cache (fetched again, written again). A short read or an I/O error
    /// disables the cache.
    pub(crate) fn verify(
        &self,
        chunk: usize,
        span: Range<u64>,
        offset: u64,
        dst: &mut [u8],
    ) -> io::Result<Verified> {
        let want = self.sums[chunk].load(Ordering::Acquire);
        let mut hash = Xxh64::new();
        let mut piece = vec![0u8; VERIFY_STEP.min((span.end - span.start) as usize)];
        let mut at = span.start;
        while at < span.end {
            let n = piece.len().min((span.end - at) as usize);
            self.read(at, &mut piece[..n])?;
            hash.update(&piece[..n]);
            // The part of `[offset, offset + dst.len())` in this piece.
            let from = at.max(offset);
            let to = (at + n as u64).min(offset + dst.len() as u64);
            if from < to {
                dst[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&piece[(from - at) as usize..(to - at) as usize]);
            }
            at += n as u64;
        }
        if hash.finish().max(1) == want {
            let first = !self.verified[chunk].swap(true, Ordering::AcqRel);
            return Ok(Verified::Intact(first));
        }
        // Only the checksum that was checked is dropped (another thread may have dropped it
        // already, and the chunk been fetched and written again since).
        let dropped = self.sums[chunk]
            .compare_exchange(want, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if dropped {
            self.room.fetch_add(self.chunk_size, Ordering::AcqRel);
        }
        Ok(Verified::Corrupt(dropped))
    }

    /// Reads `dst.len()` bytes at `offset` of the object (inside a present chunk). A short
    /// read or an I/O error disables the cache.
    pub(crate) fn read(&self, offset: u64, dst: &mut [u8]) -> io::Result<()> {
        let r = self.data.read_exact_at(dst, offset);
        if let Err(e) = &r {
            self.fail(format!("reading the cache at {offset}: {e}"));
        }
        r
    }

    /// The bytes `[offset, offset + len)` of a verified chunk, for the kernel to copy from
    /// the mapping ([`CacheMapping`]); `None` when there is no mapping (read with
    /// [`read`](Self::read)) or the cache is off.
    pub(crate) fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        if self.disabled.load(Ordering::Acquire) {
            return None;
        }
        self.mapping.as_ref()?.bytes(offset, len)
    }

    /// The kernel could not read bytes at `offset` that [`mapped`](Self::mapped) handed out
    /// (a disk error, the file cut short): the cache is turned off, so the chunks come from
    /// the network. `false` when nothing was handed out from a mapping (the failure was not
    /// the cache's).
    pub(crate) fn unreadable(&self, offset: u64) -> bool {
        if self.mapping.is_none() {
            return false;
        }
        self.fail(format!(
            "reading the cache at {offset} (through its mapping): the kernel could not read it"
        ));
        true
    }

    /// Lets go of the mapping's pages of `[offset, offset + len)` (placed by the page server).
    pub(crate) fn forget(&self, offset: u64, len: usize) {
        if let Some(m) = &self.mapping {
            m.forget(offset, len);
        }
    }

    /// Writes chunk `chunk` (all its bytes, `src`) unless the budget is spent.
    pub(crate) fn store(&self, chunk: usize, src: &[u8]) {
        if self.disabled.load(Ordering::Acquire) {
            return;
        }
        let bytes = self.chunk_size;
        if self
            .room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                r.checked_sub(bytes)
            })
            .is_err()
        {
            return;
        }
        let offset = chunk as u64 * self.chunk_size;
        debug_assert!(offset + src.len() as u64 <= self.len);
        if let Err(e) = self.data.write_all_at(src, offset) {
            self.fail(format!("writing the cache at {offset}: {e}"));
            return;
        }
        // Written by this source from bytes it fetched: verified.
        self.verified[chunk].store(true, Ordering::Release);
        self.sums[chunk].store(checksum(src), Ordering::Release);
    }

    /// Makes the chunks written so far durable, then marks them present on disk.
    pub(crate) fn persist(&self) {
        if self.disabled.load(Ordering::Acquire) {
            return;
        }
        let guard = self
            .persisting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The checksums are read before the data is synced: a chunk's bytes are written
        // before its checksum is set (Release/Acquire), so each one read here marks bytes
        // the sync makes durable.
        let mut bytes = MAGIC.to_vec();
        for sum in self.sums.iter() {
            bytes.extend_from_slice(&sum.load(Ordering::Acquire).to_le_bytes());
        }
        let result = self.data.sync_data().and_then(|()| {
            let tmp = self.map_path.with_extension("map.tmp");
            fs::write(&tmp, &bytes)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &self.map_path)
        });
        drop(guard);
        if let Err(e) = result {
            self.fail(format!("persisting the cache map: {e}"));
        }
    }
}
