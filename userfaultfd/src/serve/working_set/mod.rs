//! Working sets: the pages a run of the server served on demand, in the order they were first
//! touched, tied to the snapshot they were recorded on; saved to and loaded from a compact
//! file, merged across runs, and replayed (prefetched in that order) by a later server.
//!
//! A working set counts pages of the *source* (source offset / page size), not addresses: a
//! record stays valid when the regions are mapped elsewhere by the next restore.

mod file;
mod merge;
mod record;

use std::fmt;
use std::io;
use std::path::Path;

pub use merge::merge;
pub(crate) use record::Recorder;

use super::source::{Chunk, PageSource};

/// What a working set was recorded on: the snapshot's length and an identity tag.
///
/// The tag is either supplied by the user (a build id, a content hash the snapshot tool
/// already computed: [`SnapshotId::new`]) or computed cheaply from the contents
/// ([`SnapshotId::sample`]). A record is applied only to a source whose identity is equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The snapshot's length in bytes.
    pub len: u64,
    /// The identity tag.
    pub tag: u64,
}

/// How many pages [`SnapshotId::sample`] hashes (plus the first and last).
const SAMPLES: u64 = 64;
/// How many bytes each sample hashes.
const SAMPLE_BYTES: usize = 4096;

impl SnapshotId {
    /// A snapshot of `len` bytes with a tag of the user's choosing.
    pub fn new(len: u64, tag: u64) -> SnapshotId {
        SnapshotId { len, tag }
    }

    /// An identity computed from `source`: its length and a 64-bit hash of 66 samples of 4 KiB
    /// (the first, the last, and 64 spread evenly). Cheap (about 264 KiB read, whatever the
    /// size), and it tells apart different snapshots in practice; two snapshots differing only
    /// outside the samples get the same identity: supply a real content hash with
    /// [`SnapshotId::new`] when that matters.
    ///
    /// # Errors
    ///
    /// The source's read error.
    pub fn sample(source: &dyn PageSource) -> io::Result<SnapshotId> {
        let len = source.len();
        let mut h = Fnv::new();
        h.write(&len.to_le_bytes());
        let mut scratch = vec![0u8; SAMPLE_BYTES];
        let last = len.saturating_sub(SAMPLE_BYTES as u64) & !(SAMPLE_BYTES as u64 - 1);
        let offsets = (0..SAMPLES)
            .map(|k| (len / SAMPLES * k) & !(SAMPLE_BYTES as u64 - 1))
            .chain([last]);
        for offset in offsets {
            let want = (len - offset).min(SAMPLE_BYTES as u64) as usize;
            if want < SAMPLE_BYTES {
                // A source shorter than a sample: hash its length only (sources serve whole
                // pages).
                continue;
            }
            h.write(&offset.to_le_bytes());
            match source.fetch(offset, want, &mut scratch)? {
                Chunk::Data(bytes) => h.write(bytes),
                Chunk::Zeros(n) => {
                    h.write(b"zeros");
                    h.write(&(n as u64).to_le_bytes());
                }
            }
        }
        Ok(SnapshotId {
            len,
            tag: h.finish(),
        })
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, tag {:#018x}", self.len, self.tag)
    }
}

/// FNV-1a, 64 bits: the file's checksum and the sampled identity (not cryptographic: it
/// detects corruption and mix-ups, not forgery).
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The pages touched on demand by one or more runs, in the order of first touch.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkingSet {
    snapshot: SnapshotId,
    page_size: u64,
    /// Source page numbers (offset / page size), each once, in first-touch order.
    order: Vec<u64>,
}

impl WorkingSet {
    /// A working set of `snapshot` in pages of `page_size` bytes, in the order given.
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Invalid`]: the page size is not a power of two of at least 4 KiB, the
    /// snapshot is longer than [`MAX_SNAPSHOT_LEN`], a page lies outside the snapshot, or a
    /// page is listed twice. Checking costs memory in proportion to `order`, never to the
    /// snapshot's length.
    pub fn new(
        snapshot: SnapshotId,
        page_size: u64,
        order: Vec<u64>,
    ) -> Result<WorkingSet, WorkingSetError> {
        check_page_size(page_size)?;
        check_snapshot_len(snapshot.len).map_err(WorkingSetError::Invalid)?;
        let pages = snapshot.len.div_ceil(page_size);
        if let Some(&p) = order.iter().find(|&&p| p >= pages) {
            return Err(WorkingSetError::Invalid(format!(
                "page {p} is outside the snapshot ({pages} pages)"
            )));
        }
        // Duplicates found by sorting a copy: memory in proportion to the list, never to the
        // length the snapshot's identity claims (a bitmap of 2^64 bytes of snapshot would be
        // 2^49 bytes).
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(WorkingSetError::Invalid(format!(
                "page {} is listed twice",
                pair[0]
            )));
        }
        Ok(WorkingSet {
            snapshot,
            page_size,
            order,
        })
    }

    /// The snapshot it was recorded on.
    pub fn snapshot(&self) -> SnapshotId {
        self.snapshot
    }

    /// Its page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The source page numbers (source offset / page size), in first-touch order.
    pub fn order(&self) -> &[u64] {
        &self.order
    }

    /// The number of pages.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no page was recorded.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Refuses to apply this record to `snapshot` served in pages of `page_size` unless it was
    /// recorded on that very snapshot with that page size.
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::OtherSnapshot`] or [`WorkingSetError::PageSize`].
    pub fn check_applies_to(
        &self,
        snapshot: SnapshotId,
        page_size: u64,
    ) -> Result<(), WorkingSetError> {
        if self.snapshot != snapshot {
            return Err(WorkingSetError::OtherSnapshot {
                recorded: self.snapshot,
                current: snapshot,
            });
        }
        if self.page_size != page_size {
            return Err(WorkingSetError::PageSize {
                recorded: self.page_size,
                current: page_size,
            });
        }
        Ok(())
    }

    /// The file contents (see [`WorkingSet::decode`] for the format).
    pub fn encode(&self) -> Vec<u8> {
        file::encode(self)
    }

    /// Parses file contents. Format (little-endian): the magic `UFFDWSET`, a `u32` version
    /// (1) and a `u32` of flags (0), the snapshot's length and tag (`u64` each), the page size
    /// (`u64`), the number of recorded pages (`u64`), a bitmap of the snapshot's pages (one
    /// bit per page, rounded up to bytes), the order list (each page's difference from the
    /// previous one, zigzag-encoded as a LEB128 varint: a working set of 10% of a 64 GiB
    /// snapshot in 4 KiB pages takes about 2 MiB of bitmap and 2 to 4 MiB of list), and an
    /// FNV-1a 64 checksum of everything before it.
    ///
    /// Every length is checked against the bytes present before anything is allocated; the
    /// list must name exactly the pages of the bitmap, once each.
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Corrupt`] naming what is wrong, [`WorkingSetError::Version`].
    pub fn decode(bytes: &[u8]) -> Result<WorkingSet, WorkingSetError> {
        file::decode(bytes)
    }

    /// Writes the file at `path` (through a temporary file renamed over it: a crash leaves the
    /// old file or the new one, never half of one).
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Io`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), WorkingSetError> {
        let path = path.as_ref();
        let io = |source| WorkingSetError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.encode()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads the file at `path`: a regular file, of at most the length its header allows
    /// (checked before the rest is read: a header claiming more than the file holds, or a
    /// file larger than its header allows, costs an error, not memory).
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Io`] (also for a path that is not a regular file, such as a FIFO or
    /// `/dev/zero`), or what [`WorkingSet::decode`] returns.
    pub fn load(path: impl AsRef<Path>) -> Result<WorkingSet, WorkingSetError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let io = |source| WorkingSetError::Io {
            path: path.display().to_string(),
            source,
        };
        // Non-blocking: opening a FIFO for reading would wait for a writer.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut header = Vec::with_capacity(file::HEADER);
        (&mut file)
            .take(file::HEADER as u64)
            .read_to_end(&mut header)
            .map_err(io)?;
        let most = file::max_len(&header)?;
        if meta.len() > most {
            return Err(WorkingSetError::Corrupt(format!(
                "the file has {} bytes, its header allows at most {most}",
                meta.len()
            )));
        }
        // `most` bounds the read whatever the file's length says now (it may grow).
        let mut bytes = header;
        bytes.reserve(meta.len().saturating_sub(file::HEADER as u64) as usize);
        file.take(most - file::HEADER as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        WorkingSet::decode(&bytes)
    }
}

impl fmt::Debug for WorkingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The order list can hold millions of pages: its length only.
        f.debug_struct("WorkingSet")
            .field("snapshot", &self.snapshot)
            .field("page_size", &self.page_size)
            .field("pages", &self.order.len())
            .finish()
    }
}

/// The longest snapshot a working set covers: 256 TiB. Its file holds a bit per page of the
/// snapshot (8 GiB for 256 TiB in 4 KiB pages): a longer identity is refused rather than an
/// allocation of what it claims.
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 48;

pub(crate) fn check_snapshot_len(len: u64) -> Result<(), String> {
    if len > MAX_SNAPSHOT_LEN {
        return Err(format!(
            "a snapshot of {len:#x} bytes: working sets cover snapshots of at most \
             {MAX_SNAPSHOT_LEN:#x} bytes (256 TiB; the file holds a bit per page)"
        ));
    }
    Ok(())
}

fn check_page_size(page_size: u64) -> Result<(), WorkingSetError> {
    if !page_size.is_power_of_two() || !(4096..=1 << 30).contains(&page_size) {
        return Err(WorkingSetError::Invalid(format!(
            "page size {page_size} is not a power of two from 4 KiB to 1 GiB"
        )));
    }
    Ok(())
}

/// One bit per page.
pub(crate) struct Bitmap(Vec<u64>);

impl Bitmap {
    pub fn new(pages: u64) -> Bitmap {
        Bitmap(vec![0; pages.div_ceil(64) as usize])
    }

    /// Sets bit `i`; returns whether it was clear.
    pub fn insert(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        let was = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        was
    }
}

/// Why a working set cannot be read, built or applied.
#[derive(Debug)]
#[non_exhaustive]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// Not a working-set file, or a damaged one: what is wrong.
    Corrupt(String),
    /// A working-set file of a version this crate does not read.
    Version(u32),
    /// The pages given do not make a working set (outside the snapshot, listed twice, a bad
    /// page size), or records to merge disagree.
    Invalid(String),
    /// The record was made on another snapshot.
    OtherSnapshot {
        /// The snapshot it was recorded on.
        recorded: SnapshotId,
        /// The snapshot it was applied to.
        current: SnapshotId,
    },
    /// The record counts pages of another size than the regions served.
    PageSize {
        /// Its page size.
        recorded: u64,
        /// The regions' page size.
        current: u64,
    },
}

impl fmt::Display for WorkingSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkingSetError::Io { path, source } => write!(f, "working set {path}: {source}"),
            WorkingSetError::Corrupt(why) => write!(f, "working set file is damaged: {why}"),
            WorkingSetError::Version(v) => write!(
                f,
                "working set file version {v} is not supported (this crate reads version {})",
                file::VERSION
            ),
            WorkingSetError::Invalid(why) => write!(f, "invalid working set: {why}"),
            WorkingSetError::OtherSnapshot { recorded, current } => write!(
                f,
                "the working set was recorded on another snapshot ({recorded}), not on this one \
                 ({current}): refusing to replay it"
            ),
            WorkingSetError::PageSize { recorded, current } => write!(
                f,
                "the working set counts pages of {recorded} bytes, the regions served have pages \
                 of {current} bytes"
            ),
        }
    }
}

impl std::error::Error for WorkingSetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WorkingSetError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
