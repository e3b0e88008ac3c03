//! Fixtures: Firecracker's side of the Uffd handshake, one per release family, as each
//! release's source sends it (`src/vmm/src/persist.rs`: `guest_memory_from_uffd`,
//! `GuestRegionUffdMapping`, `send_uffd_handshake`).
//!
//! What every release with the Uffd backend (1.1 and later; 1.0 had none) does:
//! - creates the userfaultfd with `close_on_exec(true)`, `non_blocking(true)` (and from 1.5
//!   `user_mode_only(false)`), registers each guest region (missing mode);
//! - connects to the handler's socket and sends `serde_json::to_string(&Vec<
//!   GuestRegionUffdMapping>)` (compact, fields in declaration order) in one `sendmsg`, with
//!   the userfaultfd attached (`SCM_RIGHTS`, vmm-sys-util's `send_with_fd`).
//!
//! Where they differ:
//!
//! | family | region fields after `base_host_virt_addr`, `size`, `offset` | `EVENT_REMOVE` | socket after the handshake |
//! |---|---|---|---|
//! | 1.1 – 1.6 | none (page size not sent; no huge pages) | only with a balloon device | closed (dropped at the end of the function) |
//! | 1.7 – 1.11 | `page_size_kib`: `HugePageConfig::page_size_kib()`, which returns **bytes** (4096 / 2097152) | only with a balloon device | closed |
//! | 1.12 and later | `page_size` and `page_size_kib`, both `HugePageConfig::page_size()` in bytes (`page_size_kib` `#[deprecated]`, "the name is wrong") | always (commit "uffd: unconditionally enable UFFD_FEATURE_EVENT_REMOVE") | kept open (`forget(socket)`, "fix(vmm/persist): do not close uffd socket"), closed when Firecracker exits |
//!
//! `offset` is the region's offset in the memory file: from the snapshot's memory state
//! before 1.12, the running sum of the region sizes from 1.12 (the same values for a
//! snapshot Firecracker wrote).

/// How a release states the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSizeFields {
    /// Not sent.
    None,
    /// `page_size_kib`, in bytes.
    KibInBytes,
    /// `page_size` and `page_size_kib`, both in bytes.
    Both,
}

/// One family of Firecracker releases that speak the handshake alike.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// The releases (git tags).
    pub releases: &'static str,
    /// How the page size is sent.
    pub fields: PageSizeFields,
    /// Whether `EVENT_REMOVE` is requested without a balloon device.
    pub remove_always: bool,
    /// Whether the socket is closed right after the handshake.
    pub closes_socket: bool,
}

/// 1.1.0 – 1.6.x.
pub const V1_1: Family = Family {
    releases: "v1.1.0 - v1.6.x",
    fields: PageSizeFields::None,
    remove_always: false,
    closes_socket: true,
};

/// 1.7.0 – 1.11.x.
pub const V1_7: Family = Family {
    releases: "v1.7.0 - v1.11.x",
    fields: PageSizeFields::KibInBytes,
    remove_always: false,
    closes_socket: true,
};

/// 1.12.0 and later (1.16 the newest looked at).
pub const V1_12: Family = Family {
    releases: "v1.12.0 - v1.16.x",
    fields: PageSizeFields::Both,
    remove_always: true,
    closes_socket: false,
};

/// Every family.
pub const ALL: [Family; 3] = [V1_1, V1_7, V1_12];

/// One region as Firecracker describes it.
#[derive(Clone, Copy, Debug)]
pub struct FcRegion {
    /// Where it is in Firecracker's address space.
    pub addr: u64,
    /// Its length.
    pub size: u64,
    /// Its offset in the memory file.
    pub offset: u64,
    /// Its page size in bytes.
    pub page_size: u64,
}

impl Family {
    /// The region list exactly as this family's serde_json writes it.
    pub fn json(&self, regions: &[FcRegion]) -> String {
        let items: Vec<String> = regions
            .iter()
            .map(|r| {
                let head = format!(
                    "\"base_host_virt_addr\":{},\"size\":{},\"offset\":{}",
                    r.addr, r.size, r.offset
                );
                match self.fields {
                    PageSizeFields::None => format!("{{{head}}}"),
                    PageSizeFields::KibInBytes => {
                        format!("{{{head},\"page_size_kib\":{}}}", r.page_size)
                    }
                    PageSizeFields::Both => format!(
                        "{{{head},\"page_size\":{},\"page_size_kib\":{}}}",
                        r.page_size, r.page_size
                    ),
                }
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    /// Whether the userfaultfd has `EVENT_REMOVE`, with or without a balloon device.
    pub fn has_remove(&self, balloon: bool) -> bool {
        self.remove_always || balloon
    }
}

/// The fixtures' bytes are what serde_json writes for each release's struct.
#[test]
fn fixtures_match_serde_json_of_each_releases_struct() {
    use serde::Serialize;
    // As declared in 1.1 – 1.6.
    #[derive(Serialize)]
    struct V1_1Mapping {
        base_host_virt_addr: u64,
        size: usize,
        offset: u64,
    }
    // As declared in 1.7 – 1.11.
    #[derive(Serialize)]
    struct V1_7Mapping {
        base_host_virt_addr: u64,
        size: usize,
        offset: u64,
        page_size_kib: usize,
    }
    // As declared in 1.12 and later.
    #[derive(Serialize)]
    struct V1_12Mapping {
        base_host_virt_addr: u64,
        size: usize,
        offset: u64,
        page_size: usize,
        page_size_kib: usize,
    }
    let regions = [
        FcRegion {
            addr: 0x7f12_3400_0000,
            size: 2 << 30,
            offset: 0,
            page_size: 2 << 20,
        },
        FcRegion {
            addr: 0x7f13_0000_0000,
            size: 1 << 30,
            offset: 2 << 30,
            page_size: 2 << 20,
        },
    ];
    let v1_1: Vec<_> = regions
        .iter()
        .map(|r| V1_1Mapping {
            base_host_virt_addr: r.addr,
            size: r.size as usize,
            offset: r.offset,
        })
        .collect();
    let v1_7: Vec<_> = regions
        .iter()
        .map(|r| V1_7Mapping {
            base_host_virt_addr: r.addr,
            size: r.size as usize,
            offset: r.offset,
            page_size_kib: r.page_size as usize,
        })
        .collect();
    let v1_12: Vec<_> = regions
        .iter()
        .map(|r| V1_12Mapping {
            base_host_virt_addr: r.addr,
            size: r.size as usize,
            offset: r.offset,
            page_size: r.page_size as usize,
            page_size_kib: r.page_size as usize,
        })
        .collect();
    assert_eq!(V1_1.json(&regions), serde_json::to_string(&v1_1).unwrap());
    assert_eq!(V1_7.json(&regions), serde_json::to_string(&v1_7).unwrap());
    assert_eq!(V1_12.json(&regions), serde_json::to_string(&v1_12).unwrap());
    // And one literally, as 1.12+ sends a 128 MiB guest with base pages.
    let one = [FcRegion {
        addr: 139_880_453_586_944,
        size: 134_217_728,
        offset: 0,
        page_size: 4096,
    }];
    assert_eq!(
        V1_12.json(&one),
        r#"[{"base_host_virt_addr":139880453586944,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]"#
    );
}
