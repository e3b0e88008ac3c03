//! [`Rejected`]: an error that gives back what the failed call took ownership of.

use std::fmt;
use std::io;

use crate::Error;

/// The error of a call that takes ownership of a value (a descriptor) and refuses it: the
/// [`Error`], and the value, unchanged, so that a refusal never closes a descriptor the
/// caller still needs (as tokio's `AsyncFd::register` does with `AsyncFdRegisterError`).
///
/// Returned by `AsyncUffd::new` (cargo feature `tokio`), `Uffd::try_from(OwnedFd)` and, with
/// the page server's error `E = ServeError`, by
/// [`ServerBuilder::start`](crate::serve::ServerBuilder::start).
/// `?` converts it into its error `E` (or, for `E = Error`, an `io::Error`), dropping the
/// value; keep it with [`into_parts`](Self::into_parts) or [`into_inner`](Self::into_inner).
///
/// ```
/// use std::os::fd::OwnedFd;
/// use userfaultfd::Uffd;
///
/// let file = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
/// let rejected = Uffd::try_from(file).unwrap_err();
/// assert_eq!(rejected.error().errno(), Some(userfaultfd::Errno::EINVAL));
/// let file: OwnedFd = rejected.into_inner(); // still open, still ours
/// # drop(file);
/// ```
#[derive(Debug)]
pub struct Rejected<T, E = Error> {
    value: T,
    error: E,
}

impl<T, E> Rejected<T, E> {
    pub(crate) fn new(value: T, error: E) -> Rejected<T, E> {
        Rejected { value, error }
    }

    /// Why the value was refused.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The value given back, and the error.
    pub fn into_parts(self) -> (T, E) {
        (self.value, self.error)
    }

    /// The value given back (dropping the error).
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T, E: fmt::Display> fmt::Display for Rejected<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// The error's source chain, not the error itself: `Display` already shows it (an error
/// reporter printing the chain would otherwise print its message twice).
impl<T: fmt::Debug, E: std::error::Error> std::error::Error for Rejected<T, E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Drops the value (closing a descriptor) and keeps the page server's error.
impl<T> From<Rejected<T, crate::serve::ServeError>> for crate::serve::ServeError {
    fn from(rejected: Rejected<T, crate::serve::ServeError>) -> crate::serve::ServeError {
        rejected.error
    }
}

/// Drops the value (closing a descriptor) and keeps the error.
impl<T> From<Rejected<T>> for Error {
    fn from(rejected: Rejected<T>) -> Error {
        rejected.error
    }
}

/// Drops the value (closing a descriptor); the error converts as [`Error`] does.
impl<T> From<Rejected<T>> for io::Error {
    fn from(rejected: Rejected<T>) -> io::Error {
        rejected.error.into()
    }
}
