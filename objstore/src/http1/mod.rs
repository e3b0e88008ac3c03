//! Range `GET`s over plain `http://`, with the body read straight from the socket into the
//! caller's buffer, on a pool of kept-alive connections.
//!
//! Why not the HTTP client used elsewhere (ureq 2): its body reader receives through an
//! 8 KiB buffer and copies out of it, so a 4 MiB chunk costs 512 `recv` calls and a second
//! copy of every byte. Measured over loopback (1 GiB in 4 MiB ranges, 4 connections), that
//! was nearly twice the CPU of reading the socket 256 KiB at a time into the destination, and
//! a cold restore is CPU-bound: with this path a random-order restore took about a third less
//! time (BENCHMARKS.md). `https://` stays on ureq (TLS decrypts into its own buffer anyway).
//!
//! The scope is deliberately small, what a range request to a store needs: HTTP/1.1, one
//! request per connection at a time, a body delimited by `Content-Length`, and URLs sent
//! exactly as ureq would send them ([`target::parse`]). Anything else the server answers
//! with — a chunked or close-delimited body, a redirect, an informational status — is
//! reported as [`Sent::Unsupported`], and the caller sends the request again through ureq,
//! which handles it. The head is parsed strictly ([`head`]): a folded header, conflicting
//! lengths or bytes past the body are errors, never guessed at.
//!
//! Connections: one goes back to the pool only once its body has been read to the end and
//! the server did not ask to close it. Before a pooled one is used, a non-blocking `peek`
//! checks that the server has neither closed it nor sent anything unasked; if the server
//! closes it anyway as the request goes out (an idle timeout racing the request), the
//! request is sent once more on a new connection, but only when nothing came back and the
//! connection was reset or closed — never after a timeout, which would wait twice. Timeouts
//! are ureq's: `connect_timeout` for connecting (shared by the addresses a name resolves
//! to), `request_timeout` for each read and write.

mod body;
mod head;
pub(crate) mod target;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use body::Body;
use head::Framing;

use crate::store::Request;

/// The longest response head read (status line and headers).
const MAX_HEAD: usize = 64 << 10;

/// Connections and their settings.
pub(crate) struct Http1 {
    /// Idle connections, each with its authority.
    idle: Mutex<Vec<(String, TcpStream)>>,
    max_idle: usize,
    connect_timeout: Duration,
    io_timeout: Duration,
    user_agent: &'static str,
}

/// What sending a request gave.
pub(crate) enum Sent {
    /// A response this client reads.
    Response(Response),
    /// A response it leaves to ureq (see the module docs); the connection is closed.
    Unsupported,
}

/// A response's status and headers; its body follows.
pub(crate) struct Response {
    pub status: u16,
    pub reason: String,
    headers: Vec<(String, String)>,
    pub body: Body,
}

impl Response {
    /// The value of header `name` (any case; the first).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A failed exchange, and whether the same request may go out again on a new connection.
struct Failed {
    error: io::Error,
    resend: bool,
}

fn failed(error: io::Error, received: bool) -> Failed {
    use io::ErrorKind::*;
    let resend = !received
        && matches!(
            error.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        );
    Failed { error, resend }
}

/// Whether an idle connection is still usable: open, and nothing unasked waiting on it.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let idle =
        matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && idle
}

impl Http1 {
    pub(crate) fn new(
        max_idle: usize,
        connect_timeout: Duration,
        io_timeout: Duration,
        user_agent: &'static str,
    ) -> Http1 {
        Http1 {
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
            io_timeout,
            user_agent,
        }
    }

    /// Whether this client sends requests to `url` (see [`target::parse`]).
    pub(crate) fn handles(url: &str) -> bool {
        target::parse(url).is_some()
    }

    fn put_back(&self, key: String, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push((key, stream));
        }
    }

    /// A pooled connection to `key` that is still open.
    fn take_idle(&self, key: &str) -> Option<TcpStream> {
        loop {
            let stream = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let i = idle.iter().rposition(|(k, _)| k == key)?;
                idle.swap_remove(i).1
            };
            if still_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// The number of idle connections.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    fn connect(&self, address: &str) -> io::Result<TcpStream> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut last = None;
        for address in address.to_socket_addrs()? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&address, left) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(self.io_timeout))?;
                    stream.set_write_timeout(Some(self.io_timeout))?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {address}: no address answered in time"),
            )
        }))
    }

    /// Sends `request` (a `GET`) and reads the response's head.
    pub(crate) fn get(self: &Arc<Self>, request: &Request) -> io::Result<Sent> {
        let target = target::parse(&request.url).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "not a plain http:// URL")
        })?;
        let mut text = format!("GET {} HTTP/1.1\r\n", target.path);
        if !request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            text += &format!("Host: {}\r\n", target.authority);
        }
        for (name, value) in &request.headers {
            if !target::header_ok(name, value) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("header {name}: a byte a request cannot carry"),
                ));
            }
            text += &format!("{name}: {value}\r\n");
        }
        text += &format!("User-Agent: {}\r\nAccept: */*\r\n\r\n", self.user_agent);
        if let Some(stream) = self.take_idle(target.authority) {
            match self.exchange(stream, target.authority, text.as_bytes()) {
                Ok(sent) => return Ok(sent),
                Err(f) if !f.resend => return Err(f.error),
                Err(_) => {} // closed as the request went out: once more, on a new one
            }
        }
        let stream = self.connect(&target.connect)?;
        self.exchange(stream, target.authority, text.as_bytes())
            .map_err(|f| f.error)
    }

    /// Writes the request and reads the head.
    fn exchange(
        self: &Arc<Self>,
        mut stream: TcpStream,
        authority: &str,
        request: &[u8],
    ) -> Result<Sent, Failed> {
        stream.write_all(request).map_err(|e| failed(e, false))?;
        let mut bytes = Vec::with_capacity(4096);
        let mut piece = [0u8; 4096];
        let end = loop {
            let n = match stream.read(&mut piece) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before a whole response head",
                    );
                    return Err(failed(e, !bytes.is_empty()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no response within the request timeout",
                    );
                    return Err(failed(e, true));
                }
                Err(e) => return Err(failed(e, !bytes.is_empty())),
            };
            bytes.extend_from_slice(&piece[..n]);
            if let Some(end) = head::end(&bytes) {
                break end;
            }
            if bytes.len() > MAX_HEAD {
                let e = io::Error::new(io::ErrorKind::InvalidData, "a response head over 64 KiB");
                return Err(failed(e, true));
            }
        };
        let head = head::parse(&bytes[..end]).map_err(|e| failed(e, true))?;
        if head.status < 200 || (300..400).contains(&head.status) {
            return Ok(Sent::Unsupported);
        }
        let length = match head.framing().map_err(|e| failed(e, true))? {
            Framing::Length(n) => n,
            Framing::Other if head.status < 300 => return Ok(Sent::Unsupported),
            Framing::Other => {
                // A refusal or a failure: its status says what matters; its body, of a
                // length this client does not read, is skipped (the connection closed).
                return Ok(Sent::Response(Response {
                    status: head.status,
                    reason: head.reason,
                    headers: head.headers,
                    body: Body::empty(),
                }));
            }
        };
        let early = bytes.split_off(end);
        if early.len() as u64 > length {
            let e = io::Error::new(io::ErrorKind::InvalidData, "bytes past the body");
            return Err(failed(e, true));
        }
        let keep = head.keep_alive();
        let mut body = Body {
            early,
            taken: 0,
            remaining: length,
            stream: Some(stream),
            pool: keep.then(|| (self.clone(), authority.to_string())),
        };
        if length == 0 {
            body.finish();
        }
        Ok(Sent::Response(Response {
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
        }))
    }
}
