//! Firecracker's region list (`GuestRegionUffdMapping`), as every release sends it, parsed and
//! checked.
//!
//! What each release serializes (`src/vmm/src/persist.rs`, `serde_json::to_string` of a
//! `Vec<GuestRegionUffdMapping>`: a compact JSON array, fields in declaration order):
//!
//! | releases | fields | page size |
//! |---|---|---|
//! | 1.1 – 1.6 | `base_host_virt_addr`, `size`, `offset` | not sent (no huge pages before 1.7) |
//! | 1.7 – 1.11 | … `page_size_kib` | in **bytes** (4096 or 2097152) despite the name |
//! | 1.12 and later | … `page_size`, `page_size_kib` | both, both in bytes (`page_size_kib` deprecated) |
//!
//! Firecracker declares the struct with `#[derive(Serialize, Deserialize)]` and no
//! `deny_unknown_fields`; this module parses it the same way (serde_json and a derived
//! struct): a repeated key is an error ("duplicate field"), an unknown key is ignored, numbers
//! must be non-negative integers, `null` is not a number. The two page-size fields are
//! optional here, so that one parser reads every release.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// One region as received (page size as sent, if sent).
#[derive(Debug, Deserialize)]
struct Wire {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default, deserialize_with = "present")]
    page_size: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    page_size_kib: Option<u64>,
}

/// An optional field that, when present, must be a number (`null` is refused, as
/// Firecracker's `usize` field refuses it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

/// How a release stated the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSizeFields {
    /// `page_size` and `page_size_kib` (1.12 and later).
    Both,
    /// `page_size` alone (not sent by a release; accepted).
    PageSizeOnly,
    /// `page_size_kib` alone, in bytes (1.7 – 1.11).
    KibOnly,
    /// Neither (1.1 – 1.6): derived from the guest's mapping.
    None,
}

impl fmt::Display for PageSizeFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSizeFields::Both => "sent as page_size and page_size_kib (Firecracker 1.12+)",
            PageSizeFields::PageSizeOnly => "sent as page_size",
            PageSizeFields::KibOnly => "sent as page_size_kib, in bytes (Firecracker 1.7-1.11)",
            PageSizeFields::None => "not sent (Firecracker 1.1-1.6): derived",
        })
    }
}

/// One guest memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    /// Where it starts in Firecracker's address space.
    pub addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where its contents start in the memory file.
    pub offset: u64,
    /// Its page size in bytes (`None` until derived, for releases that do not send it).
    pub page_size: Option<u64>,
}

impl fmt::Display for GuestRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "base_host_virt_addr {:#x} size {:#x} offset {:#x}",
            self.addr, self.size, self.offset
        )?;
        if let Some(ps) = self.page_size {
            write!(f, " page_size {ps}")?;
        }
        Ok(())
    }
}

/// The parsed region list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionList {
    /// The regions, in the order sent.
    pub regions: Vec<GuestRegion>,
    /// How the page size was stated (the same for every region, or the list is refused).
    pub fields: PageSizeFields,
}

/// Why the bytes received are not (yet) a region list.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The JSON ends early: more bytes may complete it.
    Incomplete,
    /// It is wrong.
    Invalid(String),
}

/// Parses the region list Firecracker sent.
pub fn parse(bytes: &[u8]) -> Result<RegionList, ParseError> {
    let wire: Vec<Wire> = match serde_json::from_slice(bytes) {
        Ok(wire) => wire,
        Err(e) if e.is_eof() => return Err(ParseError::Incomplete),
        Err(e) => return Err(ParseError::Invalid(format!("not a region list: {e}"))),
    };
    if wire.is_empty() {
        return Err(ParseError::Invalid("the region list is empty".into()));
    }
    let mut regions = Vec::with_capacity(wire.len());
    let mut fields = None;
    for (index, w) in wire.iter().enumerate() {
        let (this, page_size) = match (w.page_size, w.page_size_kib) {
            (Some(a), Some(b)) if a == b => (PageSizeFields::Both, Some(a)),
            (Some(a), Some(b)) => {
                return Err(ParseError::Invalid(format!(
                    "region {index}: page_size {a} and page_size_kib {b} disagree (Firecracker \
                     sends the page size in bytes in both)"
                )))
            }
            (Some(a), None) => (PageSizeFields::PageSizeOnly, Some(a)),
            (None, Some(b)) => (PageSizeFields::KibOnly, Some(b)),
            (None, None) => (PageSizeFields::None, None),
        };
        match fields {
            None => fields = Some(this),
            Some(f) if f == this => {}
            Some(f) => {
                return Err(ParseError::Invalid(format!(
                    "region {index}: page size {this}, but region 0's was {f}: no release mixes \
                     them"
                )))
            }
        }
        regions.push(GuestRegion {
            addr: w.base_host_virt_addr,
            size: w.size,
            offset: w.offset,
            page_size,
        });
    }
    Ok(RegionList {
        regions,
        fields: fields.expect("at least one region"),
    })
}

/// Checks each region (page size, alignment, inside a memory file of `file_len` bytes) and
/// that no two overlap, in memory or in the file. Every page size must be known. The error
/// names the region.
pub fn check(regions: &[GuestRegion], file_len: u64, base_page: u64) -> Result<(), String> {
    for (index, r) in regions.iter().enumerate() {
        let bad = |why: String| Err(format!("region {index} ({r}): {why}"));
        let ps = r
            .page_size
            .expect("page sizes are resolved before the check");
        if !ps.is_power_of_two() || ps < base_page {
            return bad(format!(
                "page size {ps} is not a power of two of at least {base_page}"
            ));
        }
        if r.size == 0 {
            return bad("size is 0".into());
        }
        for (name, value) in [
            ("base_host_virt_addr", r.addr),
            ("size", r.size),
            ("offset", r.offset),
        ] {
            if value % ps != 0 {
                return bad(format!("{name} is not a multiple of the page size {ps}"));
            }
        }
        if r.addr.checked_add(r.size).is_none() {
            return bad("base_host_virt_addr + size overflows".into());
        }
        match r.offset.checked_add(r.size) {
            Some(end) if end <= file_len => {}
            Some(end) => {
                return bad(format!(
                    "it ends at {end:#x} in the memory file, which is only {file_len:#x} bytes \
                     long (the wrong memory file?)"
                ))
            }
            None => return bad("offset + size overflows".into()),
        }
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            let overlap = |a0: u64, b0: u64| a0 < b0 + b.size && b0 < a0 + a.size;
            for (what, x, y) in [
                ("memory", a.addr, b.addr),
                ("the memory file", a.offset, b.offset),
            ] {
                if overlap(x, y) {
                    return Err(format!("regions {i} ({a}) and {j} ({b}) overlap in {what}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_16: &str = r#"[{"base_host_virt_addr":140000000000000,"size":1073741824,"offset":0,"page_size":4096,"page_size_kib":4096}]"#;

    #[test]
    fn every_release_family_parses() {
        let list = parse(V1_16.as_bytes()).unwrap();
        assert_eq!(list.fields, PageSizeFields::Both);
        assert_eq!(list.regions[0].page_size, Some(4096));
        let v1_7 =
            r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":2097152}]"#;
        let list = parse(v1_7.as_bytes()).unwrap();
        assert_eq!(list.fields, PageSizeFields::KibOnly);
        assert_eq!(list.regions[0].page_size, Some(2 << 20));
        let v1_1 = r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0}]"#;
        let list = parse(v1_1.as_bytes()).unwrap();
        assert_eq!(list.fields, PageSizeFields::None);
        assert_eq!(list.regions[0].page_size, None);
    }

    #[test]
    fn every_prefix_is_incomplete_not_invalid() {
        for n in 0..V1_16.len() {
            assert_eq!(
                parse(&V1_16.as_bytes()[..n]),
                Err(ParseError::Incomplete),
                "{:?}",
                &V1_16[..n]
            );
        }
    }

    fn invalid(text: &str) -> String {
        match parse(text.as_bytes()) {
            Err(ParseError::Invalid(e)) => e,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn malformed_lists_are_refused_with_the_cause() {
        let base = r#""base_host_virt_addr":4096,"size":4096,"offset":0"#;
        assert!(invalid("[]").contains("empty"));
        assert!(invalid(&format!(
            r#"[{{{base},"page_size":4096,"page_size_kib":4}}]"#
        ))
        .contains("disagree"));
        assert!(invalid(&format!(r#"[{{{base},"size":8192}}]"#)).contains("duplicate field `size`"));
        assert!(invalid(r#"[{"size":4096,"offset":0}]"#).contains("missing field"));
        assert!(invalid(&format!(r#"[{{{base},"page_size":null}}]"#)).contains("null"));
        assert!(invalid(&format!(r#"[{{{base},"page_size":4096.0}}]"#)).contains("floating"));
        assert!(
            invalid(r#"[{"base_host_virt_addr":-4096,"size":4096,"offset":0}]"#)
                .contains("invalid")
        );
        assert!(invalid(&format!(r#"[{{{base}}}] x"#)).contains("trailing"));
        assert!(invalid(&format!(
            r#"[{{{base},"page_size":4096}},{{"base_host_virt_addr":8192,"size":4096,"offset":4096}}]"#
        ))
        .contains("mixes"));
        // Unknown keys are ignored, as Firecracker's own deserializer ignores them.
        let list =
            parse(format!(r#"[{{{base},"page_size":4096,"later":[1,{{}}]}}]"#).as_bytes()).unwrap();
        assert_eq!(list.regions.len(), 1);
    }

    fn region(addr: u64, size: u64, offset: u64, ps: u64) -> GuestRegion {
        GuestRegion {
            addr,
            size,
            offset,
            page_size: Some(ps),
        }
    }

    #[test]
    fn bad_regions_are_refused_naming_the_region() {
        let ok = region(0x10000, 0x4000, 0, 4096);
        assert_eq!(check(&[ok], 0x4000, 4096), Ok(()));
        let e = check(&[ok, region(0x12000, 0x4000, 0x4000, 4096)], 0x8000, 4096).unwrap_err();
        assert!(
            e.contains("regions 0") && e.contains("overlap in memory"),
            "{e}"
        );
        let e = check(&[ok, region(0x20000, 0x4000, 0x2000, 4096)], 0x8000, 4096).unwrap_err();
        assert!(e.contains("overlap in the memory file"), "{e}");
        let e = check(&[ok, region(0x20001, 0x1000, 0x4000, 4096)], 0x8000, 4096).unwrap_err();
        assert!(
            e.starts_with("region 1 (") && e.contains("not a multiple"),
            "{e}"
        );
        let e = check(&[region(0x10000, 0x4000, 0x1000, 4096)], 0x4000, 4096).unwrap_err();
        assert!(
            e.contains("region 0") && e.contains("only 0x4000 bytes"),
            "{e}"
        );
        let e = check(&[region(0x10000, 0x4000, 0, 4)], 0x4000, 4096).unwrap_err();
        assert!(e.contains("page size 4 is not"), "{e}");
        let e = check(&[region(0x10000, 0, 0, 4096)], 0x4000, 4096).unwrap_err();
        assert!(e.contains("size is 0"), "{e}");
        let e = check(&[region(u64::MAX - 4095, 8192, 0, 4096)], 0x4000, 4096).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
    }

    /// The behaviour this parser copies, checked on serde_json itself with the struct as
    /// Firecracker 1.12+ declares it: a repeated key is refused, an unknown one ignored.
    #[test]
    fn serde_json_on_firecrackers_struct_behaves_alike() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct GuestRegionUffdMapping {
            base_host_virt_addr: u64,
            size: usize,
            offset: u64,
            page_size: usize,
            page_size_kib: usize,
        }
        let fc = |t: &str| serde_json::from_str::<Vec<GuestRegionUffdMapping>>(t).map(|_| ());
        let dup = r#"[{"base_host_virt_addr":0,"size":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4096}]"#;
        let unknown = r#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4096,"x":1}]"#;
        assert!(fc(dup).unwrap_err().to_string().contains("duplicate field"));
        assert!(invalid(dup).contains("duplicate field"));
        assert!(fc(unknown).is_ok());
        assert!(parse(unknown.as_bytes()).is_ok());
        assert!(fc(V1_16).is_ok());
    }
}
