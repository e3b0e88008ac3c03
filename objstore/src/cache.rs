//! The disk cache: chunks kept across restores in a cache directory, per object version.
//!
//! Each object version (its name, ETag, length, and the chunk size) has two files, named
//! `<object hash>-<version hash>`: `.data`, a sparse file of the object's length holding the
//! chunks fetched so far at their offsets, and `.map`, a header and one byte per chunk (1:
//! present). A chunk is written to `.data` once all its bytes have arrived; `.map` is written
//! by [`DiskCache::persist`] after `fdatasync` of `.data`, so a chunk marked present is on
//! disk even after a crash (a crash before it loses only the marks: those chunks are fetched
//! again).
//!
//! Opening a version deletes the files of the object's other versions (a changed object
//! invalidates its cache), and the least recently opened objects' files while the directory
//! holds more than the budget. Chunks are read with `pread`, never mapped: a failing cache
//! disk gives an error (and the chunk comes from the network), never `SIGBUS`. An object
//! without an ETag is not cached on disk: nothing would tell a changed object from the one
//! cached. The cache relies on the file system for the integrity of what it reads back (a
//! data file of the wrong length is discarded; bit rot inside it is not detected).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::sigv4::sha256_hex;

const MAGIC: &[u8; 8] = b"UFOBJC01";

pub(crate) struct DiskCache {
    data: File,
    map_path: PathBuf,
    /// One byte per chunk: 1 when present on disk (written, and marked).
    present: Mutex<Vec<u8>>,
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
        let mut present = vec![0u8; chunks];
        if let (true, Ok(map)) = (intact, fs::read(&map_path)) {
            if map.len() == MAGIC.len() + chunks && map.starts_with(MAGIC) {
                present.copy_from_slice(&map[MAGIC.len()..]);
            }
        }
        let mine = present.iter().filter(|&&p| p == 1).count() as u64 * chunk_size;
        Ok(DiskCache {
            data,
            map_path,
            present: Mutex::new(present),
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
        !self.disabled.load(Ordering::Acquire)
            && self.present.lock().unwrap_or_else(PoisonError::into_inner)[chunk] == 1
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
        self.present.lock().unwrap_or_else(PoisonError::into_inner)[chunk] = 1;
    }

    /// Makes the chunks written so far durable, then marks them present on disk.
    pub(crate) fn persist(&self) {
        if self.disabled.load(Ordering::Acquire) {
            return;
        }
        let present = self.present.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.data.sync_data().and_then(|()| {
            let tmp = self.map_path.with_extension("map.tmp");
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&present);
            fs::write(&tmp, &bytes)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &self.map_path)
        });
        drop(present);
        if let Err(e) = result {
            self.fail(format!("persisting the cache map: {e}"));
        }
    }
}
