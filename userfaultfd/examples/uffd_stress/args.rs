//! The command line, parsed as the kernel's program parses it, and what it implies: page
//! size, page counts, and whether write protection is tested.

use userfaultfd::FeatureFlags;

use crate::area::{Kind, Memory};

/// Exit status for "skipped" (kselftest's `KSFT_SKIP`).
const SKIP: i32 = 4;

pub struct Config {
    pub mem: Memory,
    pub nr_cpus: usize,
    pub nr_pages_per_cpu: usize,
    pub bounces: i32,
    /// Test write protection: the kernel has it for this memory type.
    pub wp: bool,
    /// What the kernel offers.
    pub features: FeatureFlags,
}

fn usage() -> ! {
    eprintln!(
        "\nUsage: uffd_stress <test type> <MiB> <bounces>\n\n\
         Supported <test type>: anon, hugetlb, hugetlb-private, shmem, shmem-private\n\n\
         Examples:\n\n\
         # anonymous memory, 100 MiB, 99999 bounces:\n\
         uffd_stress anon 100 99999\n\n\
         # hugetlbfs mapped private, 256 MiB, 50 bounces:\n\
         uffd_stress hugetlb-private 256 50\n"
    );
    std::process::exit(1)
}

/// Parses `<test type> <MiB> <bounces>`; exits with the usage, an error, or a skip.
pub fn parse() -> Config {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        usage();
    }
    if let Err(e) = crate::alarm::arm() {
        fatal!("failed to arm SIGALRM: {e}");
    }
    let (kind, shared) = match args[1].as_str() {
        "anon" => (Kind::Anon, false),
        "shmem" => (Kind::Shmem, true),
        "shmem-private" => (Kind::Shmem, false),
        "hugetlb" => (Kind::Hugetlb, true),
        "hugetlb-private" => (Kind::Hugetlb, false),
        other => fatal!("failed to parse test type argument: '{other}'"),
    };
    let page_size = if kind == Kind::Hugetlb {
        meminfo("Hugepagesize:").map_or(0, |kib| kib << 10)
    } else {
        // SAFETY: sysconf has no memory effects.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as usize
    };
    if page_size == 0 {
        fatal!("Unable to determine page size");
    }
    let features = userfaultfd::probe()
        .unwrap_or_else(|e| fatal!("failed to get available features: {e}"))
        .features();
    // Write protection needs the WP feature, and on shmem and hugetlbfs WP_HUGETLBFS_SHMEM.
    let wp = features.contains(FeatureFlags::PAGEFAULT_FLAG_WP)
        && (kind == Kind::Anon || features.contains(FeatureFlags::WP_HUGETLBFS_SHMEM));

    // A negative or absurd size is as invalid as zero.
    let bytes = usize::try_from(leading_integer(&args[2]))
        .ok()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .unwrap_or(0);
    if kind == Kind::Hugetlb && meminfo("HugePages_Free:").unwrap_or(0) < bytes / page_size {
        println!("skip: Skipping userfaultfd... not enough hugepages");
        std::process::exit(SKIP);
    }
    // SAFETY: sysconf has no memory effects.
    let nr_cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let nr_pages_per_cpu = bytes / page_size / nr_cpus;
    if nr_pages_per_cpu == 0 {
        eprintln!("ERROR: invalid MiB");
        usage();
    }
    let bounces = i32::try_from(leading_integer(&args[3])).unwrap_or(0);
    if bounces <= 0 {
        eprintln!("ERROR: invalid bounces");
        usage();
    }
    Config {
        mem: Memory {
            kind,
            shared,
            page_size,
            nr_pages: nr_pages_per_cpu * nr_cpus,
        },
        nr_cpus,
        nr_pages_per_cpu,
        bounces,
        wp,
        features,
    }
}

/// The integer at the start of `s`, as C's `atol` reads it (`"32M"` is 32, `"x"` is 0).
fn leading_integer(s: &str) -> i64 {
    let s = s.trim_start();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end]
        .parse::<i64>()
        .map_or(if end > 0 { i64::MAX } else { 0 }, |n| sign * n)
}

/// A number from `/proc/meminfo` (`Hugepagesize:` in kB, `HugePages_Free:` in pages).
fn meminfo(field: &str) -> Option<usize> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
