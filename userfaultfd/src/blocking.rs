//! Switching a descriptor between blocking and non-blocking reads after creation.

use std::io;
use std::os::fd::AsRawFd;

use crate::Uffd;

impl Uffd {
    /// Whether reads are non-blocking (`O_NONBLOCK`): [`read_event`](Uffd::read_event) then
    /// returns `Ok(None)` at once when no event is pending, and the descriptor can be waited
    /// on with `poll(2)` (a blocking userfaultfd makes `poll` report `POLLERR`).
    ///
    /// # Errors
    ///
    /// `fcntl(F_GETFL)` failed: only for a descriptor that is not open.
    pub fn is_non_blocking(&self) -> io::Result<bool> {
        Ok(self.status_flags()? & libc::O_NONBLOCK != 0)
    }

    /// Sets or clears `O_NONBLOCK` after creation (what
    /// [`UffdBuilder::non_blocking`](crate::UffdBuilder::non_blocking) chooses at creation), to
    /// switch between blocking reads and a `poll(2)` loop on the same descriptor.
    ///
    /// The flag belongs to the open file, not to this handle: it changes for every duplicate
    /// ([`try_clone`](Uffd::try_clone)) too. A thread already blocked in a read keeps waiting
    /// for its event; only reads started afterwards see the new mode.
    ///
    /// # Errors
    ///
    /// `fcntl(F_GETFL/F_SETFL)` failed: only for a descriptor that is not open.
    pub fn set_non_blocking(&self, non_blocking: bool) -> io::Result<()> {
        let flags = self.status_flags()?;
        let wanted = if non_blocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if wanted == flags {
            return Ok(());
        }
        // SAFETY: F_SETFL takes an int and changes only the file status flags.
        if unsafe { libc::fcntl(self.as_raw_fd(), libc::F_SETFL, wanted) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn status_flags(&self) -> io::Result<libc::c_int> {
        // SAFETY: F_GETFL takes no argument and only reads the file status flags.
        let flags = unsafe { libc::fcntl(self.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(flags)
    }
}
