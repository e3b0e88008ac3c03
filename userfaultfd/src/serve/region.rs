//! [`Region`]: one range of memory to serve, how, and from where in the source; its
//! validation when the server is built.

use libc::c_void;

use super::source::page_size;
use super::ServeError;

/// The largest page size a region may have: 1 GiB, the largest huge page of x86-64 (and of
/// arm64 with 4 KiB base pages). A block, and each worker's buffer, holds at least a page.
pub(crate) const MAX_PAGE_SIZE: usize = 1 << 30;

/// How a region's pages are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Missing-page faults (`RegisterMode::MISSING`) resolved by copying from the source
    /// (`UFFDIO_COPY`) and mapping zero pages for its zeros (`UFFDIO_ZEROPAGE`; on hugetlbfs,
    /// which has no zero page, a copy of zeros). Private anonymous memory, shmem/memfd and
    /// hugetlbfs.
    ///
    /// # On a `MAP_SHARED` mapping (shmem/memfd, hugetlbfs)
    ///
    /// A page the server places is in the file's page cache, and `MADV_DONTNEED` only unmaps
    /// it: the next access maps the page-cache page again, without a fault — the snapshot's
    /// contents (or what the process wrote there). A page not yet placed has nothing in the
    /// page cache: after `MADV_DONTNEED` of it (whose `REMOVE` marks it discarded) the next
    /// access faults and gets zeros, where the snapshot would have been. So after
    /// `MADV_DONTNEED` of a range, placed pages keep the snapshot and unplaced ones read
    /// zeros. Discard shared memory with `MADV_REMOVE` (which frees the page cache: every
    /// page then reads zeros), or serve a file that already holds the snapshot with
    /// [`Backend::Continue`] `{ private: false }` (every page then keeps the file's contents).
    /// `MAP_PRIVATE` and anonymous memory have no such difference: a discarded page reads
    /// zeros whether it was placed or not.
    Copy,
    /// Minor faults (`RegisterMode::MINOR`, with `MISSING` for holes) on a shmem/memfd or
    /// hugetlbfs mapping whose page cache already holds the contents (a snapshot loaded into
    /// a memfd once, mapped by many clones): resolved by `UFFDIO_CONTINUE`, no copy. The
    /// source is not read; pages missing from the page cache (holes, `MADV_REMOVE`) are zero
    /// pages.
    ///
    /// `private` says how the region is mapped. `MAP_SHARED`: the mapping *is* the file,
    /// writes go to the page cache, and `MADV_DONTNEED` only unmaps (the next access shows the
    /// file's contents again, as the kernel does without userfaultfd). `MAP_PRIVATE`: writes
    /// are private copies, and a discarded page (`MADV_DONTNEED`) reads as zeros, as anonymous
    /// memory does — never the snapshot's stale contents.
    Continue {
        /// The region is a `MAP_PRIVATE` mapping of the file.
        private: bool,
    },
}

/// One range of memory served from a [`PageSource`](super::PageSource).
#[derive(Clone, Debug)]
pub struct Region {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) offset: u64,
    pub(crate) page_size: usize,
    pub(crate) backend: Backend,
    /// Bytes placed per fault, set by the server when it starts.
    pub(crate) block: usize,
}

impl Region {
    /// `len` bytes at `addr`, served from offset 0 of the source with base pages and
    /// [`Backend::Copy`].
    pub fn new(addr: *mut c_void, len: usize) -> Region {
        Region {
            addr: addr as usize,
            len,
            offset: 0,
            page_size: page_size(),
            backend: Backend::Copy,
            block: 0,
        }
    }

    /// Where in the source the region's first byte is (a multiple of the page size).
    pub fn offset(mut self, offset: u64) -> Region {
        self.offset = offset;
        self
    }

    /// The region's page size: the base page size (the default), or the huge page size of a
    /// hugetlbfs mapping (2 MiB).
    pub fn page_size(mut self, page_size: usize) -> Region {
        self.page_size = page_size;
        self
    }

    /// How pages are placed (default [`Backend::Copy`]).
    pub fn backend(mut self, backend: Backend) -> Region {
        self.backend = backend;
        self
    }

    /// The addresses given, `addr..addr + len` (saturating: for error messages).
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        self.addr..self.addr.saturating_add(self.len)
    }

    /// Pages placed per fault: `bytes` (or the backend's default), at least one page.
    pub(crate) fn pages_per_block(&self) -> usize {
        (self.block / self.page_size).max(1)
    }

    /// The number of pages.
    pub(crate) fn pages(&self) -> usize {
        self.len / self.page_size
    }

    /// Checks the region against the source's length; `index` names it in the error.
    pub(crate) fn validate(&self, index: usize, source_len: u64) -> Result<(), ServeError> {
        let bad = |why: String| {
            Err(ServeError::InvalidRegion {
                index,
                range: self.range(),
                reason: why,
            })
        };
        let ps = self.page_size;
        if !ps.is_power_of_two() || ps < page_size() || ps > MAX_PAGE_SIZE {
            return bad(format!(
                "page size {ps:#x} is not a power of two from the base page size {:#x} to 1 GiB",
                page_size()
            ));
        }
        if self.len == 0 {
            return bad("length is 0".into());
        }
        if self.addr % ps != 0 || self.len % ps != 0 || self.offset % ps as u64 != 0 {
            return bad(format!(
                "address {:#x}, length {:#x} and source offset {:#x} must be multiples of the \
                 page size {ps:#x}",
                self.addr, self.len, self.offset
            ));
        }
        if self.addr.checked_add(self.len).is_none() {
            return bad("address + length overflows".into());
        }
        if self.backend == Backend::Copy || source_len > 0 {
            let inside =
                matches!(self.offset.checked_add(self.len as u64), Some(end) if end <= source_len);
            if !inside {
                return bad(format!(
                    "source bytes {:#x}..{:#x} are outside the source ({source_len:#x} bytes)",
                    self.offset,
                    self.offset as u128 + self.len as u128
                ));
            }
        }
        Ok(())
    }
}

/// Checks that no two regions overlap.
pub(crate) fn check_disjoint(regions: &[Region]) -> Result<(), ServeError> {
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by_key(|&i| regions[i].addr);
    for pair in order.windows(2) {
        let (a, b) = (&regions[pair[0]], &regions[pair[1]]);
        if a.addr + a.len > b.addr {
            return Err(ServeError::InvalidRegion {
                index: pair[1],
                range: b.range(),
                reason: format!(
                    "it overlaps region {} ({:#x}..{:#x})",
                    pair[0],
                    a.addr,
                    a.addr + a.len
                ),
            });
        }
    }
    Ok(())
}

/// Where a range of addresses is now (after `mremap`s): `len` bytes at `addr` are pages
/// `first_page..` of region `region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub addr: usize,
    pub len: usize,
    pub region: usize,
    pub first_page: usize,
    pub page_size: usize,
}

impl Mapping {
    /// The part of this mapping inside `[start, end)`, if any.
    fn clip(&self, start: usize, end: usize) -> Option<Mapping> {
        let s = self.addr.max(start);
        let e = (self.addr + self.len).min(end);
        (s < e).then(|| Mapping {
            addr: s,
            len: e - s,
            first_page: self.first_page + (s - self.addr) / self.page_size,
            ..*self
        })
    }
}

/// The address map of the served regions, changed only by non-cooperative events (under the
/// server's exclusive lock).
#[derive(Debug, Default)]
pub(crate) struct AddressMap {
    /// Sorted by address, disjoint.
    mappings: Vec<Mapping>,
}

impl AddressMap {
    pub fn new(regions: &[Region]) -> AddressMap {
        let mut mappings: Vec<Mapping> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| Mapping {
                addr: r.addr,
                len: r.len,
                region: i,
                first_page: 0,
                page_size: r.page_size,
            })
            .collect();
        mappings.sort_by_key(|m| m.addr);
        AddressMap { mappings }
    }

    /// The mapping holding `addr`.
    #[inline]
    pub fn find(&self, addr: usize) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.addr + m.len <= addr);
        self.mappings.get(i).filter(|m| m.addr <= addr)
    }

    /// Where page `page` of region `region` is mapped now, if it is.
    pub fn locate(&self, region: usize, page: usize) -> Option<Mapping> {
        self.mappings
            .iter()
            .find(|m| {
                m.region == region
                    && (m.first_page..m.first_page + m.len / m.page_size).contains(&page)
            })
            .copied()
    }

    /// The mappings overlapping `[start, end)`, each clipped to it.
    pub fn overlapping(&self, start: usize, end: usize) -> impl Iterator<Item = Mapping> + '_ {
        self.mappings.iter().filter_map(move |m| m.clip(start, end))
    }

    /// Removes `[start, end)` from the map (`munmap`), splitting mappings.
    pub fn cut(&mut self, start: usize, end: usize) {
        let mut out = Vec::with_capacity(self.mappings.len() + 1);
        for m in &self.mappings {
            out.extend(m.clip(0, start));
            out.extend(m.clip(end, usize::MAX));
        }
        self.mappings = out;
    }

    /// Moves what is at `[from, from + len)` to `to` (`mremap`).
    pub fn remap(&mut self, from: usize, to: usize, len: usize) {
        let moved: Vec<Mapping> = self
            .overlapping(from, from + len)
            .map(|m| Mapping {
                addr: m.addr - from + to,
                ..m
            })
            .collect();
        self.cut(from, from + len);
        // Whatever was at the destination was unmapped by the move.
        self.cut(to, to + len);
        self.mappings.extend(moved);
        self.mappings.sort_by_key(|m| m.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> AddressMap {
        let r = Region::new(0x10000 as *mut c_void, 0x8000);
        AddressMap::new(&[r])
    }

    #[test]
    fn cut_splits_and_keeps_page_indexes() {
        let mut m = map();
        m.cut(0x12000, 0x13000);
        assert_eq!(m.find(0x12000), None);
        assert_eq!(m.find(0x11000).unwrap().first_page, 0);
        let tail = m.find(0x13000).unwrap();
        assert_eq!((tail.addr, tail.first_page, tail.len), (0x13000, 3, 0x5000));
    }

    #[test]
    fn remap_moves_page_indexes() {
        let mut m = map();
        m.remap(0x14000, 0x40000, 0x2000);
        assert_eq!(m.find(0x14000), None);
        let moved = m.find(0x41000).unwrap();
        assert_eq!(
            (moved.addr, moved.first_page, moved.len),
            (0x40000, 4, 0x2000)
        );
        assert_eq!(m.find(0x16000).unwrap().first_page, 6);
    }
}
