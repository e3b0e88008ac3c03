//! [`PageSource`]: what the served memory holds, at byte offsets, and the sources shipped with
//! the crate (a read-only mapping of a file, `pread` from a file, memory, all zeros).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use super::arrivals::Arrivals;

/// The next bytes of a source, from the offset asked for.
#[derive(Debug)]
pub enum Chunk<'a> {
    /// These bytes (a non-empty whole number of pages, at most the length asked for), borrowed
    /// from the source's own memory (zero-copy) or from the scratch buffer it was given.
    Data(&'a [u8]),
    /// This many bytes (a non-empty whole number of pages, at most the length asked for) are
    /// zero: the server maps zero pages (`UFFDIO_ZEROPAGE`) instead of copying zeros.
    Zeros(usize),
}

/// The contents of the served memory: a snapshot file, a migration stream, memory.
///
/// The server asks for page-aligned ranges (`offset` and `len` are multiples of the region's
/// page size) and serves whatever prefix the source answers, asking again for the rest. A
/// source answers from its own memory when it can (a mapped file: the kernel copies straight
/// from the mapping) or reads into `scratch` (`pread`, a network fetch).
///
/// `fetch` takes `&self` and is called by every worker thread at once: a slow source (a
/// remote one) blocks only the worker that asked, and workers waiting on it do not serialise.
pub trait PageSource: Send + Sync {
    /// The length of the contents in bytes: a region is checked to lie inside it when the
    /// server is built.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes at `offset`: at most `len` of them, at least one page. `scratch` is `len`
    /// bytes the source may read into and return.
    ///
    /// # Errors
    ///
    /// An I/O error is fatal to the server, which then follows its
    /// [`ErrorPolicy`](super::ErrorPolicy).
    fn fetch<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut [u8])
        -> io::Result<Chunk<'a>>;

    /// Whether [`fetch`](Self::fetch) always returns without waiting: no I/O, no sleep, no
    /// lock another thread holds for long. The answer decides how the server runs:
    ///
    /// - `true`: each worker reads the messages and serves the faults it read itself, with
    ///   no hand-over between threads (the fastest, for contents in memory);
    /// - `false` (the default, and the right answer for anything that reads a disk or the
    ///   network): a reader thread reads the messages and hands the faults to the workers,
    ///   which fetch and place. Events (`madvise`, `munmap`, `mremap`) and new faults are
    ///   then read while a fetch waits, and [`Server::stop`](super::Server::stop) does not
    ///   wait for a fetch. The hand-over costs a wake-up per fault.
    ///
    /// A source that answers `true` and then blocks delays the reading of events and faults,
    /// and `stop`, by as long as its fetch takes.
    fn never_blocks(&self) -> bool {
        false
    }

    /// Told after the server placed bytes `[offset, offset + len)` of this source with
    /// `UFFDIO_COPY`, or found their pages already present (`EEXIST`): the server has
    /// recorded them placed and does not ask for them again. A source that keeps what it
    /// fetched only to serve it (a network cache) may drop those bytes.
    ///
    /// Reported bytes may still be asked for, in three cases: a duplicate fault (a second
    /// thread faulted on the page before the first placement, or two workers placed
    /// overlapping blocks: the placement finds the page present, writes nothing and wakes
    /// the thread); a page the process discarded without the server being told (an
    /// `madvise` the descriptor has no event for: the placement replaces what the process
    /// gave up, where a discarded page elsewhere reads zeros); and a second region served
    /// from the same bytes of the source (each region's placements are reported). In the
    /// first two, any answer is safe and zeros are the natural one; in the third, only the
    /// bytes themselves are right, so a source that drops what was placed must either
    /// fetch it again or not be used for such a layout. The same range may be reported more
    /// than once. Pages placed as zeros (a discarded page, a source's [`Chunk::Zeros`], a
    /// hole) are not reported.
    ///
    /// Called on the thread that placed them, right after the placement, while the server's
    /// map lock is held for reading (an `munmap` or `mremap` waits for it): keep it short.
    /// The default does nothing.
    fn placed(&self, offset: u64, len: usize) {
        let _ = (offset, len);
    }

    /// Told when the kernel could not read bytes this source returned as [`Chunk::Data`]:
    /// `UFFDIO_COPY` of `[offset, offset + len)` failed with `EFAULT` (the bytes are in a
    /// mapped file that was cut short, or whose disk failed to read them; the kernel's copy
    /// reports `EFAULT` where a read in the process would raise `SIGBUS`). The failing page
    /// is somewhere in the range; the pages before it were placed.
    ///
    /// The server asks only when it is the source's memory that fails: after the `EFAULT`
    /// it reads the source's bytes in the kernel (`process_vm_readv` of its own process,
    /// which reports a page it cannot read as an error, never a signal), and an `EFAULT`
    /// for the destination's sake (a shmem or hugetlbfs file the process cut short under
    /// its mapping) stays fatal without asking. Where that call is refused (a seccomp
    /// filter), the server cannot tell and does not ask.
    ///
    /// Return `true` when the source will answer those bytes from elsewhere from now on (it
    /// stopped using the memory that failed: a cache falls back to the network): the server
    /// then asks for them again (the placement starts over). Return `false` (the default)
    /// and the `EFAULT` is fatal, as any other failed placement, under the server's
    /// [`ErrorPolicy`](super::ErrorPolicy). A source that returns `true` and then the same
    /// memory again makes the server ask again each time: answer `true` only once it has
    /// switched.
    ///
    /// Called on the thread that placed them, while the server's map lock is held for
    /// reading: keep it short.
    fn unreadable(&self, offset: u64, len: usize) -> bool {
        let _ = (offset, len);
        false
    }

    /// The bytes at `offset`, as [`fetch`](Self::fetch) answers them, if the source holds
    /// them now; `Ok(None)` when it does not (it dropped them, or the cache they were in
    /// failed): the server then leaves those pages to the faults. Asked by the place-arrived
    /// fill ([`ServerBuilder::place_arrived`](super::ServerBuilder::place_arrived)) for the
    /// ranges the source reported through [`arrivals`](Self::arrivals): it must not wait for
    /// I/O, nor count as an access (a source that reads ahead after a fault must not read
    /// ahead after these). An error is not fatal: the server leaves the range to the faults,
    /// which meet it again if it persists. The default answers [`fetch`](Self::fetch)'s
    /// bytes.
    fn fetch_held<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Option<Chunk<'a>>> {
        self.fetch(offset, len, scratch).map(Some)
    }

    /// Called once, when a server with
    /// [`place_arrived`](super::ServerBuilder::place_arrived) (and no
    /// [`background_fill`](super::ServerBuilder::background_fill)) starts: report through
    /// `arrivals` the bytes that [`fetch`](Self::fetch) can answer without waiting, those
    /// held already and each range that arrives from now on (a chunk fetched for a fault or
    /// read ahead, a chunk checked in a disk cache), and the server places them before they
    /// are faulted on. Keep the handle for as long as bytes may arrive.
    ///
    /// Called on the thread that starts the server, before any fault is served: keep it
    /// short (store the handle, report what is held). The default reports nothing, so
    /// nothing is placed ahead.
    fn arrivals(&self, arrivals: Arrivals) {
        let _ = arrivals;
    }
}

/// The data extents of a file (`SEEK_DATA`/`SEEK_HOLE`), read once: holes are served as zero
/// pages, and a fault costs no system call to find them.
#[derive(Debug, Default)]
struct Extents {
    /// Sorted, disjoint `[start, end)` byte ranges holding data; the rest is holes.
    data: Vec<(u64, u64)>,
}

impl Extents {
    fn of(file: &File, len: u64) -> io::Result<Extents> {
        let fd = file.as_raw_fd();
        let mut data = Vec::new();
        let mut pos: u64 = 0;
        while pos < len {
            // SAFETY: lseek on our own descriptor has no memory effects.
            let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
            if start < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENXIO) => break, // no data after `pos`
                    // A file system without SEEK_DATA: treat the file as all data.
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                        return Ok(Extents {
                            data: vec![(0, len)],
                        })
                    }
                    _ => return Err(err),
                }
            }
            // SAFETY: as above.
            let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
            if end < 0 {
                return Err(io::Error::last_os_error());
            }
            let (start, end) = (start as u64, (end as u64).min(len));
            if start >= end {
                break;
            }
            data.push((start, end));
            pos = end;
        }
        Ok(Extents { data })
    }

    /// Whether `offset` is in data, and how many bytes from it (at most `len`) are the same.
    fn classify(&self, offset: u64, len: usize) -> (bool, usize) {
        let i = self.data.partition_point(|&(_, end)| end <= offset);
        let limit = offset + len as u64;
        match self.data.get(i) {
            Some(&(start, end)) if start <= offset => (true, (end.min(limit) - offset) as usize),
            Some(&(start, _)) => (false, (start.min(limit) - offset) as usize),
            None => (false, len),
        }
    }
}

/// Rounds a sparse extent's length to whole pages: data wins over a partial zero page.
fn page_run(is_data: bool, run: usize, len: usize, page: usize) -> usize {
    if is_data {
        run.div_ceil(page).saturating_mul(page).min(len)
    } else {
        run / page * page
    }
}

/// A snapshot file mapped read-only: the kernel copies pages straight from the page cache
/// (zero-copy). Holes of a sparse file are served as zero pages.
///
/// Its [`fetch`](PageSource::fetch) hands out `&[u8]` over the mapping, hence the contract of
/// [`MappedFile::new`]: the file must keep its length and contents while the value lives.
#[derive(Debug)]
pub struct MappedFile {
    base: NonNull<u8>,
    len: u64,
    extents: Extents,
    page: usize,
}

// SAFETY: the mapping is read-only and lives as long as the value; reading it from several
// threads at once is fine.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `file` read-only (`MAP_PRIVATE`, `PROT_READ`) and reads its holes.
    ///
    /// # Safety
    ///
    /// While the returned value lives, the file must not be truncated, and its contents must
    /// not change (by this process or another): [`fetch`](PageSource::fetch) returns `&[u8]`
    /// borrowed from the mapping, which safe code may read. Pages past a truncation raise
    /// `SIGBUS` when Rust code reads them (as [`SnapshotId::sample`](super::SnapshotId::sample)
    /// does), and a `&[u8]` whose bytes change breaks Rust's aliasing rules. (The page server
    /// only passes these bytes to the kernel: a `UFFDIO_COPY` from a truncated part fails with
    /// `EFAULT`, a fatal error of the server, not a crash.) Snapshot files are written once and
    /// then only read: keep them read-only (file mode, `chattr +i`, a sealed memfd) where other
    /// processes could write them. [`ReadFile`] has no such contract: it copies with `pread`.
    ///
    /// # Errors
    ///
    /// `fstat`, `lseek` or `mmap` failed; an empty file, or one too large for the address
    /// space, is `InvalidInput`.
    pub unsafe fn new(file: &File) -> io::Result<MappedFile> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "MappedFile::new: the file is empty",
            ));
        }
        let Ok(map_len) = usize::try_from(len) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MappedFile::new: the file's {len} bytes exceed the address space"),
            ));
        };
        // Before mapping: an error here leaves nothing to unmap.
        let extents = Extents::of(file, len)?;
        // SAFETY: a new read-only mapping at an address of the kernel's choosing; nothing
        // else lives there.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedFile {
            base: NonNull::new(base.cast()).expect("mmap returned a non-null mapping"),
            len,
            extents,
            page: page_size(),
        })
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes, unused from now on.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}

impl PageSource for MappedFile {
    fn len(&self) -> u64 {
        self.len
    }

    /// `true`: a fetch only points into the mapping. (The copy from it, inside the
    /// placement's ioctl, reads the file's pages that are not in the page cache: on slow
    /// storage, warm the page cache first, or use [`ReadFile`].)
    fn never_blocks(&self) -> bool {
        true
    }

    fn fetch<'a>(&'a self, offset: u64, len: usize, _: &'a mut [u8]) -> io::Result<Chunk<'a>> {
        check_inside("MappedFile", offset, len, self.len)?;
        let len = len.min((self.len - offset) as usize);
        let (is_data, run) = self.extents.classify(offset, len);
        let run = page_run(is_data, run, len, self.page);
        if !is_data && run > 0 {
            return Ok(Chunk::Zeros(run));
        }
        let run = run.max(len.min(self.page));
        // SAFETY: `offset < self.len` (checked above) and `run` is at most the bytes left,
        // rounded up to a page: `[offset, offset + run)` lies inside the mapping (whose last
        // page reads as zeros past the end of the file), which lives as long as `self`; the
        // contract of `new` keeps the bytes there and unchanged.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset as usize), run) };
        Ok(Chunk::Data(bytes))
    }
}

/// A snapshot file read with `pread` into the worker's buffer: for files too large to map, on
/// a slow device, or opened with `O_DIRECT`. Holes of a sparse file are served as zero pages.
#[derive(Debug)]
pub struct ReadFile {
    file: File,
    len: u64,
    extents: Extents,
    page: usize,
}

impl ReadFile {
    /// Reads from `file` (its length now, and its holes).
    ///
    /// # Errors
    ///
    /// `fstat` or `lseek` failed.
    pub fn new(file: File) -> io::Result<ReadFile> {
        let len = file.metadata()?.len();
        let extents = Extents::of(&file, len)?;
        Ok(ReadFile {
            file,
            len,
            extents,
            page: page_size(),
        })
    }
}

impl PageSource for ReadFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Chunk<'a>> {
        check_inside("ReadFile", offset, len, self.len)?;
        let len = len.min(scratch.len());
        let (is_data, run) = self.extents.classify(offset, len);
        let run = page_run(is_data, run, len, self.page);
        if !is_data && run > 0 {
            return Ok(Chunk::Zeros(run));
        }
        let run = run.max(len.min(self.page));
        let buf = &mut scratch[..run];
        let mut done = 0;
        while done < run {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                // Past the end of the file: the rest of the last page is zeros.
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(Chunk::Data(buf))
    }
}

/// Contents held in memory.
#[derive(Debug)]
pub struct Memory {
    bytes: Box<[u8]>,
}

impl Memory {
    /// Serves `bytes`.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Memory {
        Memory {
            bytes: bytes.into(),
        }
    }
}

impl PageSource for Memory {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// `true`: the contents are in memory.
    fn never_blocks(&self) -> bool {
        true
    }

    fn fetch<'a>(
        &'a self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<Chunk<'a>> {
        check_inside("Memory", offset, len, self.len())?;
        let start = offset as usize;
        let end = start.saturating_add(len).min(self.bytes.len());
        let len = len.min(scratch.len().max(end - start));
        if end - start == len {
            return Ok(Chunk::Data(&self.bytes[start..end]));
        }
        // The last page is partial: pad it with zeros in the scratch buffer.
        let buf = &mut scratch[..len];
        buf[..end - start].copy_from_slice(&self.bytes[start..end]);
        buf[end - start..].fill(0);
        Ok(Chunk::Data(buf))
    }
}

/// All zeros, of a given length: every page is a zero page.
#[derive(Debug)]
pub struct Zeros {
    len: u64,
}

impl Zeros {
    /// `len` bytes of zeros.
    pub fn new(len: u64) -> Zeros {
        Zeros { len }
    }
}

impl PageSource for Zeros {
    fn len(&self) -> u64 {
        self.len
    }

    /// `true`: nothing to read.
    fn never_blocks(&self) -> bool {
        true
    }

    fn fetch<'a>(&'a self, _: u64, len: usize, _: &'a mut [u8]) -> io::Result<Chunk<'a>> {
        Ok(Chunk::Zeros(len))
    }
}

/// Refuses an offset at or past the end (a source must not compute a pointer outside its
/// bytes), and an empty ask.
fn check_inside(source: &str, offset: u64, len: usize, source_len: u64) -> io::Result<()> {
    if offset >= source_len || len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{source}::fetch: {len} bytes at offset {offset:#x} of a source of \
                 {source_len:#x} bytes: the offset must be inside, and the length not 0"
            ),
        ));
    }
    Ok(())
}

/// The base page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_past_the_end_are_an_error() {
        use std::io::Write;
        let mut file = tempfile_with(&[7u8; 8192]);
        file.flush().unwrap();
        // SAFETY: the test's own file, neither truncated nor written while mapped.
        let mapped = unsafe { MappedFile::new(&file) }.unwrap();
        let read = ReadFile::new(file.try_clone().unwrap()).unwrap();
        let memory = Memory::new(vec![7u8; 8192]);
        let mut scratch = vec![0u8; 4096];
        for source in [&mapped as &dyn PageSource, &read, &memory] {
            for offset in [8192, 8193, 1 << 40, u64::MAX] {
                let e = source.fetch(offset, 4096, &mut scratch).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
                assert!(e.to_string().contains("offset"), "{e}");
            }
            match source.fetch(4096, 4096, &mut scratch).unwrap() {
                Chunk::Data(bytes) => assert_eq!(bytes, &[7u8; 4096][..]),
                Chunk::Zeros(n) => panic!("zeros: {n}"),
            }
        }
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        // SAFETY: the name is NUL-terminated.
        let fd = unsafe { libc::memfd_create(c"uffd-source-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor only we own.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn extents_classify() {
        let e = Extents {
            data: vec![(4096, 12288), (20480, 24576)],
        };
        assert_eq!(e.classify(0, 65536), (false, 4096));
        assert_eq!(e.classify(4096, 65536), (true, 8192));
        assert_eq!(e.classify(8192, 4096), (true, 4096));
        assert_eq!(e.classify(12288, 65536), (false, 8192));
        assert_eq!(e.classify(24576, 8192), (false, 8192));
    }
}
