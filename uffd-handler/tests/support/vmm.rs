//! Plays Firecracker at `PUT /snapshot/load` with the Uffd backend, as a release family does
//! (see `releases.rs`): guest memory (anonymous, memfd or 2 MiB hugetlbfs), the userfaultfd
//! created and registered as Firecracker creates it, the region list and the descriptor sent
//! in one message; then the guest's accesses, checked byte by byte, and the balloon's
//! discards.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};

use super::common::{privileged, MemoryType, Region};
use super::releases::{Family, FcRegion};

/// The memory file's byte at `offset`: never zero, so that zeros are told apart.
pub fn snapshot_byte(offset: usize) -> u8 {
    let page = offset >> 12;
    ((page.wrapping_mul(131) ^ (offset & 0xfff) ^ (offset >> 21)) % 251) as u8 + 1
}

/// Writes a memory file of `len` bytes of [`snapshot_byte`].
pub fn write_memory_file(path: &Path, len: usize) {
    let mut file = File::create(path).expect("creating the memory file");
    let bytes: Vec<u8> = (0..len).map(snapshot_byte).collect();
    file.write_all(&bytes).expect("writing the memory file");
}

/// A guest: its regions (each with its offset in the memory file) and the userfaultfd.
pub struct Guest {
    /// The regions and their offsets.
    pub regions: Vec<(Region, usize)>,
    /// Firecracker's userfaultfd.
    pub uffd: Uffd,
}

/// The userfaultfd as `family` creates it: close-on-exec, non-blocking, able to take faults
/// KVM raises in kernel mode (root; an unprivileged run takes user-mode faults only, all this
/// test makes), `EVENT_REMOVE` when the release asks for it.
pub fn firecracker_uffd(family: &Family, balloon: bool) -> Uffd {
    let features = if family.has_remove(balloon) {
        FeatureFlags::EVENT_REMOVE
    } else {
        FeatureFlags::empty()
    };
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(!privileged())
        .require_features(features)
        .create()
        .expect("creating the userfaultfd as Firecracker does")
}

/// Maps regions of `pages` pages each of `memory`, registers them with a userfaultfd made
/// as `family` makes it; `None` if the machine lacks huge pages (reported).
pub fn guest(memory: MemoryType, pages: &[usize], family: &Family, balloon: bool) -> Option<Guest> {
    let uffd = firecracker_uffd(family, balloon);
    let mut regions = Vec::new();
    let mut offset = 0;
    for &n in pages {
        let region = Region::new(memory, n)?;
        uffd.register(region.addr(), region.len())
            .expect("registering guest memory as Firecracker does");
        let len = region.len();
        regions.push((region, offset));
        offset += len;
    }
    Some(Guest { regions, uffd })
}

impl Guest {
    /// The memory file length the guest needs.
    pub fn file_len(&self) -> usize {
        self.regions.iter().map(|(r, _)| r.len()).sum()
    }

    /// The regions as Firecracker describes them.
    pub fn fc_regions(&self) -> Vec<FcRegion> {
        self.regions
            .iter()
            .map(|(r, offset)| FcRegion {
                addr: r.addr() as u64,
                size: r.len() as u64,
                offset: *offset as u64,
                page_size: r.page_size() as u64,
            })
            .collect()
    }

    /// Connects to the handler and sends `family`'s handshake; returns the connection (a
    /// family that closes it right after the handshake is played by dropping it).
    pub fn handshake(&self, family: &Family, socket: &Path) -> UnixStream {
        let stream = UnixStream::connect(socket).expect("connecting to the handler");
        let json = family.json(&self.fc_regions());
        send_with_fd(&stream, json.as_bytes(), Some(self.uffd.as_raw_fd()));
        stream
    }

    /// The guest's first accesses: every page read by `threads` threads, interleaved, then
    /// every byte checked against the memory file.
    pub fn touch_and_check_all(&self, threads: usize) -> Result<(), String> {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for (region, _) in &self.regions {
                        for p in (t..region.pages()).step_by(threads) {
                            // SAFETY: a page of our mapping; the read faults and is served.
                            unsafe { region.page(p).read_volatile() };
                        }
                    }
                });
            }
        });
        for (region, offset) in &self.regions {
            for p in 0..region.pages() {
                check_page(region, *offset, p, false)?;
            }
        }
        Ok(())
    }

    /// Discards every `stride`-th page of each region as Firecracker's balloon does
    /// (`MADV_DONTNEED` on anonymous memory, `MADV_REMOVE` on shared memory), then reads
    /// them: zeros, never the memory file's stale contents; the other pages keep theirs.
    pub fn balloon_and_check(&self, stride: usize) -> Result<(), String> {
        for (region, _) in &self.regions {
            let advice = match region.memory() {
                MemoryType::Anonymous => libc::MADV_DONTNEED,
                _ => libc::MADV_REMOVE,
            };
            for p in (0..region.pages()).step_by(stride) {
                // SAFETY: a page of our mapping, which holds no Rust object.
                let r = unsafe { libc::madvise(region.page(p).cast(), region.page_size(), advice) };
                if r != 0 {
                    return Err(format!("madvise: {}", std::io::Error::last_os_error()));
                }
            }
        }
        for (region, offset) in &self.regions {
            for p in 0..region.pages() {
                check_page(region, *offset, p, p % stride == 0)?;
            }
        }
        Ok(())
    }
}

/// Checks page `page` of `region` (at `offset` in the memory file): its contents, or zeros.
pub fn check_page(region: &Region, offset: usize, page: usize, zero: bool) -> Result<(), String> {
    let ps = region.page_size();
    let got = region.read_page(page);
    let base = offset + page * ps;
    match got
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != if zero { 0 } else { snapshot_byte(base + i) })
    {
        None => Ok(()),
        Some((i, &b)) => Err(format!(
            "{:?} page {page} byte {i}: {b}, expected {}",
            region.memory(),
            if zero { 0 } else { snapshot_byte(base + i) }
        )),
    }
}

/// Sends `bytes` with `fd` attached in one message, as Firecracker's `send_with_fd` does.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: Option<RawFd>) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: the control buffer holds one cmsg of CMSG_SPACE(4) bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        }
    }
    // SAFETY: `msg` points at live buffers.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        n as usize,
        bytes.len(),
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}
