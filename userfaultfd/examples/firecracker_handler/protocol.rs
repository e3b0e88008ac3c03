//! Firecracker's handshake with an external page-fault handler, received and checked.
//!
//! At `PUT /snapshot/load` with `mem_backend.backend_type = "Uffd"`, Firecracker creates a
//! userfaultfd (non-blocking, close-on-exec, `EVENT_REMOVE`), registers the guest memory,
//! connects to the handler's Unix socket and sends, in one message, a JSON array of the guest
//! memory regions with the descriptor attached (`SCM_RIGHTS`):
//!
//! ```json
//! [{"base_host_virt_addr": 140233000000000, "size": 1073741824, "offset": 0, "page_size": 4096}]
//! ```
//!
//! `base_host_virt_addr` is where the region lives in Firecracker's address space, `offset`
//! where its contents start in the snapshot memory file, `page_size` its page size in bytes
//! (4096, or 2 MiB for hugetlbfs-backed guests). Older releases sent `page_size_kib` instead;
//! both are accepted (and must agree when both are given).
//!
//! Everything is checked before a page is served: malformed JSON, a missing field, a region
//! that is empty, unaligned to its page size, overlapping another (in memory or in the file)
//! or reaching past the end of the snapshot file, a message without a descriptor or with
//! more than one, a descriptor that is not a userfaultfd. Each is a [`ProtocolError`] that
//! says what is wrong; receiving is bounded by a timeout, so a peer that sends half a message
//! cannot hang the handler.

use std::fmt;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use userfaultfd::Uffd;

use crate::json::{self, JsonError, Value};

/// One guest memory region, as Firecracker describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    /// Where the region starts in Firecracker's address space.
    pub base_host_virt_addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where its contents start in the snapshot memory file.
    pub offset: u64,
    /// Its page size in bytes.
    pub page_size: u64,
}

/// What Firecracker sent: the regions and the userfaultfd.
#[derive(Debug)]
pub struct Handshake {
    /// The guest memory regions, in the order sent.
    pub regions: Vec<GuestRegion>,
    /// The userfaultfd that Firecracker registered them with.
    pub uffd: Uffd,
}

/// Why a handshake was refused.
#[derive(Debug)]
pub enum ProtocolError {
    /// Receiving failed (or timed out: `WouldBlock`/`TimedOut`).
    Receive(io::Error),
    /// The peer closed the connection before a whole message arrived.
    Closed {
        /// The bytes received before.
        received: usize,
    },
    /// The message is larger than any sane region list.
    TooLarge,
    /// The message carried no descriptor.
    NoDescriptor,
    /// The message carried more than one descriptor (all are closed).
    TooManyDescriptors(usize),
    /// The descriptor is not a userfaultfd.
    NotUserfaultfd(String),
    /// The JSON does not parse, or is not an array of regions.
    Json(String),
    /// A region is invalid on its own.
    Region {
        /// Its index in the array.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two regions overlap.
    Overlap {
        /// The first region's index.
        first: usize,
        /// The second region's index.
        second: usize,
        /// `"memory"` or `"the snapshot file"`.
        in_what: &'static str,
    },
    /// A region reaches past the end of the snapshot file.
    OutsideFile {
        /// Its index.
        index: usize,
        /// Where it ends in the file.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Receive(e) => write!(f, "receiving Firecracker's message failed: {e}"),
            ProtocolError::Closed { received } => write!(
                f,
                "Firecracker closed the connection after {received} bytes, before a whole \
                 region list"
            ),
            ProtocolError::TooLarge => f.write_str("Firecracker's message exceeds 1 MiB"),
            ProtocolError::NoDescriptor => {
                f.write_str("Firecracker's message carried no descriptor (SCM_RIGHTS)")
            }
            ProtocolError::TooManyDescriptors(n) => {
                write!(
                    f,
                    "Firecracker's message carried {n} descriptors; expected one"
                )
            }
            ProtocolError::NotUserfaultfd(why) => {
                write!(
                    f,
                    "the descriptor Firecracker sent is not a userfaultfd: {why}"
                )
            }
            ProtocolError::Json(e) => write!(f, "the region list is not valid: {e}"),
            ProtocolError::Region { index, reason } => write!(f, "region {index}: {reason}"),
            ProtocolError::Overlap {
                first,
                second,
                in_what,
            } => write!(f, "regions {first} and {second} overlap in {in_what}"),
            ProtocolError::OutsideFile {
                index,
                end,
                file_len,
            } => write!(
                f,
                "region {index} ends at {end:#x} in the snapshot file, which is only \
                 {file_len:#x} bytes long"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The largest message accepted.
const MAX_MESSAGE: usize = 1 << 20;

/// Receives Firecracker's message on `stream`, waiting at most `timeout` for each part, and
/// checks it against a snapshot file of `file_len` bytes.
pub fn receive(
    stream: &UnixStream,
    file_len: u64,
    timeout: Duration,
) -> Result<Handshake, ProtocolError> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ProtocolError::Receive)?;
    let mut bytes = Vec::new();
    let mut descriptors = Vec::new();
    let regions = loop {
        let mut chunk = [0u8; 16 * 1024];
        let (n, fds) = recv_with_fds(stream.as_raw_fd(), &mut chunk)?;
        descriptors.extend(fds);
        if n == 0 {
            return Err(ProtocolError::Closed {
                received: bytes.len(),
            });
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge);
        }
        match parse_regions(&bytes) {
            Ok(regions) => break regions,
            // A stream socket may deliver the message in parts: read on.
            Err(Incomplete::Yes) => continue,
            Err(Incomplete::No(e)) => return Err(e),
        }
    };
    check_regions(&regions, file_len)?;
    let fd = match descriptors.len() {
        0 => return Err(ProtocolError::NoDescriptor),
        1 => descriptors.pop().expect("one descriptor"),
        n => return Err(ProtocolError::TooManyDescriptors(n)),
    };
    let uffd = Uffd::try_from(fd).map_err(|rejected| {
        let (fd, error) = rejected.into_parts();
        drop(fd);
        ProtocolError::NotUserfaultfd(error.to_string())
    })?;
    Ok(Handshake { regions, uffd })
}

/// Why a region list did not parse: it may still be arriving, or it is wrong.
pub enum Incomplete {
    /// The JSON ends early: more bytes may complete it.
    Yes,
    /// It is wrong.
    No(ProtocolError),
}

/// Parses the JSON region list (without checking the regions against each other).
pub fn parse_regions(bytes: &[u8]) -> Result<Vec<GuestRegion>, Incomplete> {
    let value = match json::parse(bytes) {
        Ok(value) => value,
        Err(JsonError::Truncated) => return Err(Incomplete::Yes),
        Err(e) => return Err(Incomplete::No(ProtocolError::Json(e.to_string()))),
    };
    let invalid = |reason: String| Incomplete::No(ProtocolError::Json(reason));
    let Value::Array(array) = value else {
        return Err(invalid("expected a JSON array of regions".to_string()));
    };
    if array.is_empty() {
        return Err(invalid("the array holds no region".to_string()));
    }
    let mut regions = Vec::with_capacity(array.len());
    for (index, item) in array.iter().enumerate() {
        let Value::Object(object) = item else {
            return Err(invalid(format!("region {index} is not an object")));
        };
        let field = |name: &str| -> Result<Option<u64>, Incomplete> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::Unsigned(n)) => Ok(Some(*n)),
                Some(other) => Err(invalid(format!(
                    "region {index}: {name} is not a non-negative integer: {other:?}"
                ))),
            }
        };
        let required = |name: &str| -> Result<u64, Incomplete> {
            field(name)?.ok_or_else(|| invalid(format!("region {index}: {name} is missing")))
        };
        let page_size = match (field("page_size")?, field("page_size_kib")?) {
            (Some(bytes), None) => bytes,
            (None, Some(kib)) => kib
                .checked_mul(1024)
                .ok_or_else(|| invalid(format!("region {index}: page_size_kib {kib} overflows")))?,
            (Some(bytes), Some(kib)) if kib.checked_mul(1024) == Some(bytes) => bytes,
            (Some(bytes), Some(kib)) => {
                return Err(invalid(format!(
                    "region {index}: page_size {bytes} and page_size_kib {kib} disagree"
                )))
            }
            (None, None) => return Err(invalid(format!("region {index}: page_size is missing"))),
        };
        regions.push(GuestRegion {
            base_host_virt_addr: required("base_host_virt_addr")?,
            size: required("size")?,
            offset: required("offset")?,
            page_size,
        });
    }
    Ok(regions)
}

/// Checks each region, their overlaps, and that each lies inside a file of `file_len` bytes.
pub fn check_regions(regions: &[GuestRegion], file_len: u64) -> Result<(), ProtocolError> {
    let bad = |index: usize, reason: String| ProtocolError::Region { index, reason };
    for (index, r) in regions.iter().enumerate() {
        if !r.page_size.is_power_of_two() || r.page_size < 4096 {
            return Err(bad(
                index,
                format!(
                    "page_size {} is not a power of two of at least 4096",
                    r.page_size
                ),
            ));
        }
        if r.size == 0 {
            return Err(bad(index, "size is 0".to_string()));
        }
        for (name, value) in [
            ("base_host_virt_addr", r.base_host_virt_addr),
            ("size", r.size),
            ("offset", r.offset),
        ] {
            if value % r.page_size != 0 {
                return Err(bad(
                    index,
                    format!(
                        "{name} {value:#x} is not a multiple of page_size {:#x}",
                        r.page_size
                    ),
                ));
            }
        }
        if r.base_host_virt_addr.checked_add(r.size).is_none() {
            return Err(bad(
                index,
                "base_host_virt_addr + size overflows".to_string(),
            ));
        }
        match r.offset.checked_add(r.size) {
            Some(end) if end <= file_len => {}
            Some(end) => {
                return Err(ProtocolError::OutsideFile {
                    index,
                    end,
                    file_len,
                })
            }
            None => return Err(bad(index, "offset + size overflows".to_string())),
        }
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            let overlap = |a0: u64, b0: u64| a0 < b0 + b.size && b0 < a0 + a.size;
            if overlap(a.base_host_virt_addr, b.base_host_virt_addr) {
                return Err(ProtocolError::Overlap {
                    first: i,
                    second: j,
                    in_what: "memory",
                });
            }
            if overlap(a.offset, b.offset) {
                return Err(ProtocolError::Overlap {
                    first: i,
                    second: j,
                    in_what: "the snapshot file",
                });
            }
        }
    }
    Ok(())
}

/// One `recvmsg(2)` into `buf`, taking every descriptor passed with it (close-on-exec).
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), ProtocolError> {
    // Room for a few descriptors, so that extra ones are received (and closed), not lost.
    const MAX_FDS: usize = 8;
    let mut control = [MaybeUninit::<u64>::uninit(); 16];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    assert!(space <= size_of::<[u64; 16]>());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both live and writable
        // for the lengths given.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(ProtocolError::Receive(err));
        }
    };
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // msg_controllen, and each SCM_RIGHTS payload holds whole descriptors the kernel just
    // installed for us (so each is adopted exactly once).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(ProtocolError::TooManyDescriptors(MAX_FDS + 1));
    }
    Ok((n, fds))
}
