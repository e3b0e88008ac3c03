//! [`FetchError`]: what could not be fetched, and why.

use std::fmt;
use std::io;
use std::ops::Range;

/// Why a range of an object could not be fetched. It reaches the page server as the
/// `io::Error` of [`PageSource::fetch`](userfaultfd::serve::PageSource::fetch) (its
/// [`ServeError::Source`](userfaultfd::serve::ServeError::Source) names the offset), and its
/// text names the object, the byte range and the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    /// The object (`https://...`, `s3://bucket/key`).
    pub object: String,
    /// The bytes asked for.
    pub range: Range<u64>,
    /// What went wrong.
    pub cause: Cause,
    /// Attempts made.
    pub attempts: u32,
}

/// The cause of a [`FetchError`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The object is no longer the one the source was opened on (`If-Match` refused, another
    /// ETag or length): nothing of the new object is served.
    Changed(String),
    /// The store refused the request for good (a 4xx other than 408/429).
    Refused(u16, String),
    /// The store answered something unusable (no `Range` support, a wrong `Content-Range`).
    Invalid(String),
    /// Still failing when the deadline passed: the last transient failure (5xx, reset,
    /// timeout, short body).
    Deadline(String),
    /// The TLS handshake failed for good: the store's certificate does not verify against
    /// the trusted roots (unknown issuer, expired, issued for another name), or no TLS
    /// version or cipher suite in common. Not retried: waiting does not change a
    /// certificate. See [`Options::ca_certificates`](crate::Options::ca_certificates).
    Tls(String),
    /// The source was dropped while the range was wanted.
    Closed,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Changed(why) => write!(f, "the object changed since it was opened ({why})"),
            Cause::Refused(status, why) => write!(f, "refused with HTTP {status} ({why})"),
            Cause::Invalid(why) => write!(f, "unusable answer: {why}"),
            Cause::Deadline(last) => write!(f, "deadline passed; last failure: {last}"),
            Cause::Tls(why) => write!(f, "TLS handshake refused: {why}"),
            Cause::Closed => write!(f, "the source was closed"),
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fetching {} bytes {}-{} (after {} attempt{}): {}",
            self.object,
            self.range.start,
            self.range.end.saturating_sub(1),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.cause
        )
    }
}

impl std::error::Error for FetchError {}

impl From<FetchError> for io::Error {
    fn from(e: FetchError) -> io::Error {
        let kind = match e.cause {
            Cause::Deadline(_) => io::ErrorKind::TimedOut,
            Cause::Refused(403, _) | Cause::Refused(401, _) => io::ErrorKind::PermissionDenied,
            Cause::Refused(404, _) => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Why [`open`](crate::open) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is not `http://`, `https://` or `s3://bucket/key`, or is malformed.
    Url(String),
    /// An option is invalid.
    Options(String),
    /// The S3 configuration is incomplete (region, credentials).
    Config(String),
    /// The first request (the object's length and ETag) failed.
    Fetch(FetchError),
    /// The extra trust roots for `https` could not be used
    /// ([`Options::ca_certificates`](crate::Options::ca_certificates) or `SSL_CERT_FILE`:
    /// unreadable, not PEM, no certificate in it), or are asked for without the `https`
    /// feature.
    Tls(String),
    /// Setting up memory, threads or the cache failed.
    Io(String, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Url(s) => write!(f, "objstore::open: {s}"),
            OpenError::Options(s) => write!(f, "objstore::open: invalid options: {s}"),
            OpenError::Config(s) => write!(f, "objstore::open: S3 configuration: {s}"),
            OpenError::Fetch(e) => write!(f, "objstore::open: {e}"),
            OpenError::Tls(s) => write!(f, "objstore::open: trust roots for https: {s}"),
            OpenError::Io(what, e) => write!(f, "objstore::open: {what}: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Fetch(e) => Some(e),
            OpenError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}
