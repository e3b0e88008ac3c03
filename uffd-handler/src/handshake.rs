//! Receiving Firecracker's handshake: the region list (JSON) with the userfaultfd attached
//! (`SCM_RIGHTS`), sent in one `sendmsg` by every release since 1.1.
//!
//! The whole handshake has one deadline, counted from the connection (not per `recv`: a peer
//! that trickles a byte a second cannot hold the handler), and a size limit. The descriptor
//! must be exactly one userfaultfd.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use userfaultfd::Uffd;

use crate::regions::{self, ParseError, RegionList};
use crate::signals::{self, Signals};

/// The largest region list accepted (a region is about 120 bytes; Firecracker sends a few).
pub const MAX_MESSAGE: usize = 1 << 20;

/// What Firecracker sent.
#[derive(Debug)]
pub struct Handshake {
    /// The region list.
    pub list: RegionList,
    /// The userfaultfd it registered the regions with.
    pub uffd: Uffd,
}

/// Why no handshake was accepted.
#[derive(Debug)]
pub enum Refused {
    /// A signal asked the handler to stop first (its number).
    Signal(i32),
    /// The handshake is wrong, or did not complete in time: why.
    Bad(String),
}

/// Receives the handshake on `stream` until `deadline`, returning early on a signal.
pub fn receive(
    stream: &UnixStream,
    deadline: Instant,
    signals: &Signals,
) -> Result<Handshake, Refused> {
    let bad = |why: String| Refused::Bad(why);
    let mut bytes = Vec::new();
    let mut descriptors: Vec<OwnedFd> = Vec::new();
    let list = loop {
        match signals::wait(&[stream.as_raw_fd()], signals, Some(deadline)) {
            signals::Woken::Signal(n) => return Err(Refused::Signal(n)),
            signals::Woken::Timeout => {
                return Err(bad(format!(
                    "the handshake did not complete before the deadline ({} bytes of the \
                     region list received{})",
                    bytes.len(),
                    if descriptors.is_empty() {
                        ", no descriptor"
                    } else {
                        ""
                    }
                )))
            }
            signals::Woken::Ready => {}
        }
        let mut chunk = [0u8; 16 * 1024];
        let room = chunk.len().min(MAX_MESSAGE + 1 - bytes.len());
        let n = recv_with_fds(stream.as_raw_fd(), &mut chunk[..room], &mut descriptors)
            .map_err(|e| bad(format!("receiving the handshake: {e}")))?;
        let Some(n) = n else { continue }; // spurious wake-up
        if n == 0 {
            return Err(bad(format!(
                "Firecracker closed the connection after {} bytes, before a whole region list",
                bytes.len()
            )));
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_MESSAGE {
            return Err(bad(format!("the region list exceeds {MAX_MESSAGE} bytes")));
        }
        match regions::parse(&bytes) {
            Ok(list) => break list,
            // A stream socket may deliver the message in parts: read on.
            Err(ParseError::Incomplete) => continue,
            Err(ParseError::Invalid(e)) => return Err(bad(e)),
        }
    };
    let fd = match descriptors.len() {
        0 => {
            return Err(bad(
                "the region list came without a descriptor (SCM_RIGHTS): Firecracker sends \
                 its userfaultfd with it"
                    .into(),
            ))
        }
        1 => descriptors.pop().expect("one descriptor"),
        n => {
            return Err(bad(format!(
                "the handshake carried {n} descriptors; Firecracker sends one"
            )))
        }
    };
    let uffd = Uffd::try_from(fd).map_err(|rejected| {
        let (fd, error) = rejected.into_parts();
        drop(fd);
        bad(format!(
            "the descriptor sent with the region list is not a userfaultfd: {error}"
        ))
    })?;
    Ok(Handshake { list, uffd })
}

/// One non-blocking `recvmsg(2)` into `buf`, adding every descriptor passed with it
/// (close-on-exec) to `fds`. `None`: nothing to read yet.
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Option<usize>> {
    // Room for several descriptors, so that extra ones are received (and closed), not lost.
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
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    };
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // msg_controllen, and each SCM_RIGHTS payload holds whole descriptors the kernel just
    // installed in this process (so each is adopted exactly once).
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
        return Err(io::Error::other(format!(
            "more than {MAX_FDS} descriptors were sent (the rest were dropped by the kernel)"
        )));
    }
    Ok(Some(n))
}
