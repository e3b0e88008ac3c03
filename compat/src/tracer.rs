//! Error handling in the shape of a tracer's event loop (mevi traces a process with ptrace and
//! userfaultfd), as 0.9 code writes it: `errno as i32`, a `SystemError(e) if e == EBUSY` arm
//! on `register`, `desc()` kept as a `&'static str`, `Errno::from_i32`.

use libc::c_void;
use userfaultfd::{Errno, Error, Uffd};

/// Whether a range was registered, or skipped because another userfaultfd owns it.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// Registered with this descriptor.
    Yes,
    /// Already owned by another userfaultfd (`EBUSY`): skipped.
    OwnedElsewhere,
}

/// Registers `[addr, addr + len)`, skipping a range another userfaultfd owns.
// The guard is how 0.9 code compared nix's errno; clippy would fold it into the pattern.
#[allow(clippy::redundant_guards)]
pub fn register_or_skip(uffd: &Uffd, addr: *mut c_void, len: usize) -> Result<Registered, String> {
    match uffd.register(addr, len) {
        Ok(_) => Ok(Registered::Yes),
        Err(Error::SystemError(e)) if e == Errno::EBUSY => Ok(Registered::OwnedElsewhere),
        Err(e) => Err(format!("register failed: {e}")),
    }
}

/// The raw code of an error's errno, as a tracer logs it (`-1` when there is none).
pub fn errno_code(e: &Error) -> i32 {
    match e {
        Error::SystemError(errno) | Error::CopyFailed(errno) | Error::ZeropageFailed(errno) => {
            *errno as i32
        }
        _ => -1,
    }
}

/// A static description table entry, as a tracer keeps one.
pub struct Described {
    /// The code.
    pub code: i32,
    /// Its description, borrowed for the program's life.
    pub text: &'static str,
}

/// Describes a raw code the way 0.9 code did with nix's `Errno::from_i32(code).desc()`.
pub fn describe(code: i32) -> Described {
    Described {
        code,
        text: Errno::from_i32(code).desc(),
    }
}
