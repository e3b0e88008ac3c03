//! Prints what this machine's userfaultfd supports: kernel release, ways of creating a
//! descriptor, API features, and the ioctls each memory type allows for each registration
//! mode (or, in one line, why a mode is not supported).
//!
//! Run: `cargo run --example probe`

use std::ffi::CStr;
use std::fs;
use std::ptr;

use userfaultfd::{FeatureFlags, RegisterMode, UffdBuilder};

fn main() {
    println!("kernel release:              {}", kernel_release());
    println!("/dev/userfaultfd:            {}", device_access());
    println!(
        "vm.unprivileged_userfaultfd: {}",
        fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unreadable ({e})"))
    );

    let caps = match userfaultfd::probe() {
        Ok(caps) => caps,
        Err(e) => {
            println!("probe failed: {e}");
            std::process::exit(1);
        }
    };
    println!("API features:                {:#x}", caps.features().bits());
    for (name, flag) in caps.features().iter_names() {
        println!("  {name:<24} {:#x}", flag.bits());
    }
    let unknown = caps.features() - FeatureFlags::all();
    if !unknown.is_empty() {
        println!("  (bits newer than this crate: {:#x})", unknown.bits());
    }
    println!("descriptor ioctls:           {:?}", caps.ioctls());

    println!("ioctls allowed after registration, by memory type and mode:");
    for memory in [Memory::Anonymous, Memory::Shmem, Memory::Hugetlb] {
        for (mode_name, mode) in [
            ("MISSING", RegisterMode::MISSING),
            ("WRITE_PROTECT", RegisterMode::WRITE_PROTECT),
            ("MINOR", RegisterMode::MINOR),
        ] {
            println!(
                "  {:<10} {mode_name:<14} {}",
                memory.name(),
                register(memory, mode)
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Memory {
    Anonymous,
    Shmem,
    Hugetlb,
}

impl Memory {
    fn name(self) -> &'static str {
        match self {
            Memory::Anonymous => "anonymous",
            Memory::Shmem => "shmem",
            Memory::Hugetlb => "hugetlb",
        }
    }
}

/// Registers one page (huge page) of `memory` in `mode` and reports the ioctls allowed.
fn register(memory: Memory, mode: RegisterMode) -> String {
    let mut features = FeatureFlags::empty();
    if mode.contains(RegisterMode::WRITE_PROTECT) {
        features |= FeatureFlags::PAGEFAULT_FLAG_WP;
    }
    if mode.contains(RegisterMode::MINOR) {
        features |= match memory {
            Memory::Hugetlb => FeatureFlags::MINOR_HUGETLBFS,
            _ => FeatureFlags::MINOR_SHMEM,
        };
    }
    let uffd = match UffdBuilder::new()
        .close_on_exec(true)
        .require_features(features)
        .create()
    {
        Ok(uffd) => uffd,
        Err(e) => return format!("unavailable: {}", creation_reason(&e)),
    };
    let len = match memory {
        Memory::Hugetlb => 2 << 20,
        _ => 4096,
    };
    let (flags, fd) = match memory {
        Memory::Anonymous => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        Memory::Hugetlb => (
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
        ),
        Memory::Shmem => {
            // SAFETY: the name is NUL-terminated; memfd_create returns a new descriptor or -1.
            let fd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
            // SAFETY: `fd` is ours; ftruncate only sizes the file.
            if fd < 0 || unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
                return format!("unavailable: memfd: {}", std::io::Error::last_os_error());
            }
            (libc::MAP_SHARED, fd)
        }
    };
    // SAFETY: a fresh mapping; nothing lives in it.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    let err = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: the mapping keeps the memfd alive; our descriptor is no longer needed.
        unsafe { libc::close(fd) };
    }
    if addr == libc::MAP_FAILED {
        return match memory {
            Memory::Hugetlb => format!(
                "unavailable: mmap: {err} (reserve huge pages: echo 16 > /proc/sys/vm/nr_hugepages)"
            ),
            _ => format!("unavailable: mmap: {err}"),
        };
    }
    let result = match uffd.register_with_mode(addr, len, mode) {
        Ok(ioctls) => format!("{ioctls:?}"),
        Err(e) => format!("not supported: {}", register_reason(memory, &e)),
    };
    // SAFETY: `addr` is the mapping created above, of `len` bytes.
    unsafe { libc::munmap(addr, len) };
    result
}

/// One line: why a descriptor with the features could not be created (the error's full
/// text explains every case; a table needs the one that applies).
fn creation_reason(e: &userfaultfd::Error) -> String {
    match e {
        userfaultfd::Error::UnsupportedFeatures(missing) => {
            format!("the kernel lacks the feature {missing:?}")
        }
        userfaultfd::Error::CreateFailed {
            device, syscall, ..
        } => format!(
            "no userfaultfd: /dev/userfaultfd {}, userfaultfd(2) {}",
            short(*device),
            short(*syscall)
        ),
        e => match e.errno() {
            Some(errno) => short(errno),
            None => e.to_string(),
        },
    }
}

/// One line: why `UFFDIO_REGISTER` refused the mode on this memory.
fn register_reason(memory: Memory, e: &userfaultfd::Error) -> String {
    match e.errno() {
        Some(userfaultfd::Errno::EINVAL) => format!(
            "UFFDIO_REGISTER refused the mode on {} memory (EINVAL)",
            memory.name()
        ),
        Some(errno) => format!("UFFDIO_REGISTER: {}", short(errno)),
        None => e.to_string(),
    }
}

/// `EPERM (Operation not permitted)`.
fn short(errno: userfaultfd::Errno) -> String {
    errno.to_string()
}

fn kernel_release() -> String {
    // SAFETY: `utsname` is plain bytes; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates `release`.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn device_access() -> String {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::metadata("/dev/userfaultfd") {
        Ok(meta) => meta,
        Err(e) => return format!("absent ({e}); creation uses the userfaultfd(2) system call"),
    };
    // SAFETY: the path is NUL-terminated; access only checks permissions.
    let ok = unsafe { libc::access(c"/dev/userfaultfd".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    format!(
        "mode {:o}, {} by this process",
        meta.permissions().mode() & 0o7777,
        if ok {
            "usable"
        } else {
            "not usable (creation falls back to the system call)"
        }
    )
}
