//! The page size of a region whose release did not send it (Firecracker 1.1 – 1.6): the
//! kernel page size of the guest's mapping at the region's address, read from
//! `/proc/<firecracker pid>/smaps` (`KernelPageSize`: 2 MiB for a hugetlbfs mapping), or the
//! base page size when that cannot be read (those releases had no huge-page guests).

use std::fs;

/// The base page size of this machine.
pub fn base() -> u64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u64
}

/// The kernel page size of the mapping holding `addr` in process `pid`, as its smaps says;
/// `None` when it cannot be read or no mapping holds `addr`.
pub fn of_mapping(pid: libc::pid_t, addr: u64) -> Option<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    in_smaps(&smaps, addr)
}

/// [`of_mapping`] on the text of an smaps file.
fn in_smaps(smaps: &str, addr: u64) -> Option<u64> {
    let mut inside = false;
    for line in smaps.lines() {
        // A mapping's first line: "start-end perms offset dev inode [path]".
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
        }
        if inside {
            if let Some(value) = line.strip_prefix("KernelPageSize:") {
                let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
                return kib.checked_mul(1024);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_page_sizes_are_read() {
        let smaps = "\
7f0000000000-7f0000200000 rw-p 00000000 00:00 0 
Size:               2048 kB
KernelPageSize:        4 kB
7f0000400000-7f0000800000 rw-s 00000000 00:10 5    /anon_hugepage (deleted)
Size:               4096 kB
KernelPageSize:     2048 kB
MMUPageSize:        2048 kB
";
        assert_eq!(in_smaps(smaps, 0x7f0000000000), Some(4096));
        assert_eq!(in_smaps(smaps, 0x7f00001ff000), Some(4096));
        assert_eq!(in_smaps(smaps, 0x7f0000600000), Some(2 << 20));
        assert_eq!(in_smaps(smaps, 0x7f0000200000), None);
        // This process's own stack, through /proc.
        let local = 0u8;
        // SAFETY: getpid has no memory effects.
        let pid = unsafe { libc::getpid() };
        assert_eq!(of_mapping(pid, &local as *const u8 as u64), Some(base()));
    }
}
