//! The working-set file: encoding and a parser that trusts nothing it reads.

use super::{check_page_size, Bitmap, Fnv, SnapshotId, WorkingSet, WorkingSetError};

const MAGIC: &[u8; 8] = b"UFFDWSET";
pub(super) const VERSION: u32 = 1;
/// Magic, version, flags, snapshot length and tag, page size, count.
pub(super) const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8;

/// The longest file `header` (the first [`HEADER`] bytes, or fewer) allows: the header, the
/// bitmap, ten bytes per order entry at most, the checksum. A header that cannot be read
/// (short, bad magic, version, page size) allows just itself: [`decode`] then says what is
/// wrong.
pub(super) fn max_len(header: &[u8]) -> Result<u64, WorkingSetError> {
    let Some(fixed) = header.get(..HEADER) else {
        return Ok(HEADER as u64);
    };
    let u64_at = |at: usize| {
        let mut a = [0; 8];
        a.copy_from_slice(&fixed[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let (len, page_size, count) = (u64_at(16), u64_at(32), u64_at(40));
    if &fixed[..8] != MAGIC || check_page_size(page_size).is_err() {
        return Ok(HEADER as u64);
    }
    let bitmap = len.div_ceil(page_size).div_ceil(8);
    Ok((HEADER as u64)
        .saturating_add(bitmap)
        .saturating_add(count.saturating_mul(10))
        .saturating_add(8))
}

pub(super) fn encode(ws: &WorkingSet) -> Vec<u8> {
    let pages = ws.snapshot.len.div_ceil(ws.page_size);
    let bitmap_len = pages.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(HEADER + bitmap_len + ws.order.len() * 3 + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [
        ws.snapshot.len,
        ws.snapshot.tag,
        ws.page_size,
        ws.order.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let bitmap = out.len();
    out.resize(bitmap + bitmap_len, 0);
    for &p in &ws.order {
        out[bitmap + (p / 8) as usize] |= 1 << (p % 8);
    }
    let mut prev = 0u64;
    for &p in &ws.order {
        // Zigzag: small steps either way take one or two bytes.
        let delta = p.wrapping_sub(prev) as i64;
        let mut v = ((delta << 1) ^ (delta >> 63)) as u64;
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        prev = p;
    }
    let mut h = Fnv::new();
    h.write(&out);
    out.extend_from_slice(&h.finish().to_le_bytes());
    out
}

/// A cursor over the file that fails, naming the field, instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn corrupt(why: impl Into<String>) -> WorkingSetError {
    WorkingSetError::Corrupt(why.into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WorkingSetError> {
        if self.bytes.len() - self.at < n {
            return Err(corrupt(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, WorkingSetError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WorkingSetError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self, index: u64) -> Result<u64, WorkingSetError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1, "the order list")?[0];
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(corrupt(format!("order entry {index} overflows 64 bits")));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(format!(
            "order entry {index} is longer than 10 bytes"
        )))
    }
}

pub(super) fn decode(bytes: &[u8]) -> Result<WorkingSet, WorkingSetError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8, "the magic")? != MAGIC {
        return Err(corrupt("not a working-set file (bad magic)"));
    }
    let version = r.u32("the version")?;
    if version != VERSION {
        return Err(WorkingSetError::Version(version));
    }
    let flags = r.u32("the flags")?;
    if flags != 0 {
        return Err(corrupt(format!("unknown flags {flags:#x}")));
    }
    let snapshot = SnapshotId::new(r.u64("the snapshot length")?, r.u64("the snapshot tag")?);
    let page_size = r.u64("the page size")?;
    check_page_size(page_size).map_err(|e| corrupt(e.to_string()))?;
    super::check_snapshot_len(snapshot.len).map_err(corrupt)?;
    let count = r.u64("the page count")?;
    let pages = snapshot.len.div_ceil(page_size);
    if count > pages {
        return Err(corrupt(format!(
            "{count} pages recorded in a snapshot of {pages} pages"
        )));
    }
    // Lengths are checked against the bytes present before anything is allocated: a lying
    // header costs an error, not memory.
    let bitmap_len = pages.div_ceil(8);
    let room = (bytes.len() - r.at) as u64;
    if bitmap_len > room || count > room - bitmap_len {
        return Err(corrupt(format!(
            "truncated: a bitmap of {bitmap_len} bytes and {count} order entries do not fit in \
             the {room} bytes left"
        )));
    }
    let bitmap = r.take(bitmap_len as usize, "the bitmap")?;
    if pages % 8 != 0 && bitmap[bitmap.len() - 1] >> (pages % 8) != 0 {
        return Err(corrupt("the bitmap marks pages past the snapshot's end"));
    }
    let marked: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
    if marked != count {
        return Err(corrupt(format!(
            "the bitmap marks {marked} pages, the header says {count}"
        )));
    }
    let mut seen = Bitmap::new(pages);
    let mut order = Vec::with_capacity(count as usize);
    let mut prev = 0u64;
    for index in 0..count {
        let v = r.varint(index)?;
        let delta = ((v >> 1) as i64) ^ -((v & 1) as i64);
        let page = prev.wrapping_add(delta as u64);
        if page >= pages {
            return Err(corrupt(format!(
                "order entry {index} is page {page}, outside the snapshot ({pages} pages)"
            )));
        }
        if bitmap[(page / 8) as usize] & (1 << (page % 8)) == 0 {
            return Err(corrupt(format!(
                "order entry {index} (page {page}) is not in the bitmap"
            )));
        }
        if !seen.insert(page) {
            return Err(corrupt(format!(
                "order entry {index} lists page {page} a second time"
            )));
        }
        order.push(page);
        prev = page;
    }
    let body = r.at;
    let sum = r.u64("the checksum")?;
    if r.at != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the checksum",
            bytes.len() - r.at
        )));
    }
    let mut h = Fnv::new();
    h.write(&bytes[..body]);
    if h.finish() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(WorkingSet {
        snapshot,
        page_size,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkingSet {
        let snapshot = SnapshotId::new(1 << 30, 0x1234_5678);
        // A scattered order with steps both ways, large and small.
        let order: Vec<u64> = (0..5000u64).map(|k| (k * 7919 + 13) % 262_144).collect();
        WorkingSet::new(snapshot, 4096, order).unwrap()
    }

    #[test]
    fn round_trip() {
        for ws in [
            sample(),
            WorkingSet::new(SnapshotId::new(0, 0), 4096, vec![]).unwrap(),
            WorkingSet::new(SnapshotId::new(5 << 20, 9), 2 << 20, vec![2, 0, 1]).unwrap(),
            WorkingSet::new(SnapshotId::new(4097, 1), 4096, vec![1]).unwrap(),
        ] {
            assert_eq!(WorkingSet::decode(&ws.encode()).unwrap(), ws);
        }
    }

    #[test]
    fn compact_for_64_gib() {
        // 10% of a 64 GiB snapshot in 4 KiB pages, scattered: bitmap 2 MiB, list about 3 bytes
        // a page.
        let pages = (64u64 << 30) / 4096;
        let order: Vec<u64> = (0..pages / 10).map(|k| (k * 10 + k % 7) % pages).collect();
        let ws = WorkingSet::new(SnapshotId::new(64 << 30, 1), 4096, order).unwrap();
        let len = ws.encode().len() as u64;
        assert!(len < (2 << 20) + 3 * pages / 10, "{len} bytes");
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let e = WorkingSet::decode(&bytes[..n]).unwrap_err();
            assert!(matches!(e, WorkingSetError::Corrupt(_)), "{n}: {e}");
        }
    }

    #[test]
    fn lying_lengths_allocate_nothing() {
        let mut bytes = sample().encode();
        // A snapshot of 2^64 - 1 bytes: the bitmap would be 2^49 bytes.
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = WorkingSet::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        // 256 TiB, the most allowed: a bitmap of 8 GiB that the file does not hold.
        bytes[16..24].copy_from_slice(&(1u64 << 48).to_le_bytes());
        let e = WorkingSet::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn version_and_magic() {
        let mut bytes = sample().encode();
        bytes[8] = 2;
        assert!(matches!(
            WorkingSet::decode(&bytes),
            Err(WorkingSetError::Version(2))
        ));
        bytes[0] = b'X';
        assert!(WorkingSet::decode(&bytes)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
