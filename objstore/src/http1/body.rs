//! A response body of known length: the bytes that came with the head first, then straight
//! from the socket into the caller's buffer; the connection goes back to the pool when the
//! last byte has been read.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;

use super::Http1;

pub(crate) struct Body {
    /// Body bytes received with the head, and how many of them were read.
    pub(super) early: Vec<u8>,
    pub(super) taken: usize,
    pub(super) remaining: u64,
    pub(super) stream: Option<TcpStream>,
    /// Where the connection goes when the body has been read, if it may be kept.
    pub(super) pool: Option<(Arc<Http1>, String)>,
}

impl Body {
    /// A body with nothing to read (the connection, if any, is closed).
    pub(super) fn empty() -> Body {
        Body {
            early: Vec::new(),
            taken: 0,
            remaining: 0,
            stream: None,
            pool: None,
        }
    }

    /// The bytes left to read.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// All read: the connection is free for the next request, if it may be kept.
    pub(super) fn finish(&mut self) {
        if let (Some(stream), Some((http, key))) = (self.stream.take(), self.pool.take()) {
            http.put_back(key, stream);
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if self.taken < self.early.len() {
            let n = want.min(self.early.len() - self.taken);
            buf[..n].copy_from_slice(&self.early[self.taken..self.taken + n]);
            self.taken += n;
            n
        } else {
            let remaining = self.remaining;
            let short = move || {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body ended {remaining} bytes short"),
                )
            };
            let Some(stream) = self.stream.as_mut() else {
                return Err(short());
            };
            match stream.read(&mut buf[..want]) {
                Ok(0) => {
                    self.stream = None;
                    return Err(short());
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.stream = None;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes of the body within the request timeout",
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        self.remaining -= n as u64;
        if self.remaining == 0 {
            self.finish();
        }
        Ok(n)
    }
}
