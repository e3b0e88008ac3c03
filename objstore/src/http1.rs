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
//! request per connection at a time, a body delimited by `Content-Length`. Anything else
//! the server answers with — a chunked or close-delimited body, a redirect — is reported as
//! [`Sent::Unsupported`], and the caller sends the request again through ureq, which handles
//! it. A connection goes back to the pool only once its body has been read to the end and
//! the server did not ask to close it; a pooled connection the server has closed meanwhile
//! (it answers nothing) is replaced by a new one, once.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::store::Request;

/// The longest response head read (status line and headers).
const MAX_HEAD: usize = 64 << 10;

/// Connections and their settings.
pub(crate) struct Http1 {
    /// Idle connections, each with its `host:port`.
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
    /// The value of header `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A body of known length, read from the socket (after the bytes that came with the head).
pub(crate) struct Body {
    /// Body bytes received with the head, and how many of them were read.
    head: Vec<u8>,
    taken: usize,
    remaining: u64,
    stream: Option<TcpStream>,
    /// Where the connection goes when the body has been read, if it may be kept.
    pool: Option<(Arc<Http1>, String)>,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if self.taken < self.head.len() {
            let n = want.min(self.head.len() - self.taken);
            buf[..n].copy_from_slice(&self.head[self.taken..self.taken + n]);
            self.taken += n;
            n
        } else {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(0);
            };
            match stream.read(&mut buf[..want])? {
                0 => {
                    self.stream = None;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended {} bytes short", self.remaining),
                    ));
                }
                n => n,
            }
        };
        self.remaining -= n as u64;
        if self.remaining == 0 {
            if let (Some(stream), Some((http, key))) = (self.stream.take(), self.pool.take()) {
                http.put_back(key, stream);
            }
        }
        Ok(n)
    }
}

/// `http://host[:port]/path?query` split into the address and the request target. `None`
/// for anything this client does not send as it is: another scheme, user information, a
/// fragment, or a character a request line cannot carry unencoded (ureq encodes those).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let plain = rest.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    (plain && !authority.is_empty() && !authority.contains('@')).then_some((authority, target))
}

/// The address to connect to for `authority` (`host` alone means port 80).
fn socket_address(authority: &str) -> String {
    let has_port = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((_, port)) => !port.contains(']'),
        None => false,
    };
    if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    }
}

/// A response's status, its reason, and its headers.
type Head = (u16, String, Vec<(String, String)>);

/// Parses a response head.
fn parse_head(head: &str) -> io::Result<Head> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("not an HTTP/1 status line: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("no status code: {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("a header without a colon: {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((status, reason, headers))
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

    /// Whether this client sends requests to `url` (plain `http://`).
    pub(crate) fn handles(url: &str) -> bool {
        split_url(url).is_some()
    }

    fn put_back(&self, key: String, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push((key, stream));
        }
    }

    fn take_idle(&self, key: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let i = idle.iter().rposition(|(k, _)| k == key)?;
        Some(idle.swap_remove(i).1)
    }

    fn connect(&self, authority: &str) -> io::Result<TcpStream> {
        let mut last = None;
        for address in socket_address(authority).to_socket_addrs()? {
            match TcpStream::connect_timeout(&address, self.connect_timeout) {
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
            io::Error::new(io::ErrorKind::NotFound, format!("{authority}: no address"))
        }))
    }

    /// Sends `request` (a `GET`) and reads the response's head.
    pub(crate) fn get(self: &Arc<Self>, request: &Request) -> io::Result<Sent> {
        let (authority, target) = split_url(&request.url)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an http:// URL"))?;
        let mut text = format!("GET {target} HTTP/1.1\r\n");
        if !request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            text += &format!("Host: {authority}\r\n");
        }
        for (name, value) in &request.headers {
            text += &format!("{name}: {value}\r\n");
        }
        text += &format!("User-Agent: {}\r\nAccept: */*\r\n\r\n", self.user_agent);
        // A pooled connection the server closed while idle answers nothing: once, a new one.
        if let Some(stream) = self.take_idle(authority) {
            match self.exchange(stream, authority, text.as_bytes()) {
                Ok(sent) => return Ok(sent),
                Err((e, answered)) if answered => return Err(e),
                Err(_) => {}
            }
        }
        let stream = self.connect(authority)?;
        self.exchange(stream, authority, text.as_bytes())
            .map_err(|(e, _)| e)
    }

    /// Writes the request and reads the head; on failure, whether any byte came back.
    fn exchange(
        self: &Arc<Self>,
        mut stream: TcpStream,
        authority: &str,
        request: &[u8],
    ) -> Result<Sent, (io::Error, bool)> {
        stream.write_all(request).map_err(|e| (e, false))?;
        let mut head = Vec::with_capacity(4096);
        let mut piece = [0u8; 4096];
        let end = loop {
            let n = match stream.read(&mut piece) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before a response",
                    );
                    return Err((e, !head.is_empty()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((e, !head.is_empty())),
            };
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&piece[..n]);
            if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + i + 4;
            }
            if head.len() > MAX_HEAD {
                let e = io::Error::new(io::ErrorKind::InvalidData, "a response head over 64 KiB");
                return Err((e, true));
            }
        };
        let text = String::from_utf8_lossy(&head[..end - 4]).into_owned();
        let (status, reason, headers) = parse_head(&text).map_err(|e| (e, true))?;
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if status < 200 || (300..400).contains(&status) {
            return Ok(Sent::Unsupported);
        }
        let length = value("Content-Length")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| !has("Transfer-Encoding"));
        let Some(length) = length else {
            if status < 300 {
                return Ok(Sent::Unsupported);
            }
            // A refusal or a failure: its status says what matters; its body, of a length
            // this client does not read, is skipped (and the connection closed).
            return Ok(Sent::Response(Response {
                status,
                reason,
                headers,
                body: Body {
                    head: Vec::new(),
                    taken: 0,
                    remaining: 0,
                    stream: None,
                    pool: None,
                },
            }));
        };
        let keep = !value("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            && text.starts_with("HTTP/1.1");
        let body_start = head[end..].to_vec();
        if body_start.len() as u64 > length {
            // More than the body: the server sent something this client did not ask for.
            let e = io::Error::new(io::ErrorKind::InvalidData, "bytes past the body");
            return Err((e, true));
        }
        let mut body = Body {
            head: body_start,
            taken: 0,
            remaining: length,
            stream: Some(stream),
            pool: keep.then(|| (self.clone(), authority.to_string())),
        };
        if length == 0 {
            // Nothing to read: the connection is free now.
            if let (Some(stream), Some((http, key))) = (body.stream.take(), body.pool.take()) {
                http.put_back(key, stream);
            }
        }
        Ok(Sent::Response(Response {
            status,
            reason,
            headers,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A peer on 127.0.0.1 that runs `answer` on each connection it accepts (with the
    /// connection's number), counting them; the URL of `/k?x=1` on it.
    fn peer(
        answer: impl Fn(usize, &mut TcpStream) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/k?x=1", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = count.fetch_add(1, Ordering::SeqCst);
                std::thread::scope(|s| {
                    s.spawn(|| answer(n, &mut conn));
                });
            }
        });
        (url, accepted)
    }

    /// Reads one request head; `None` at the end of the connection.
    fn request(conn: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(String::from_utf8(head).unwrap())
    }

    fn client() -> Arc<Http1> {
        Arc::new(Http1::new(
            4,
            Duration::from_secs(5),
            Duration::from_millis(500),
            "test",
        ))
    }

    fn get(http: &Arc<Http1>, url: &str) -> io::Result<Sent> {
        http.get(&Request {
            url: url.into(),
            headers: vec![("Range", "bytes=0-4".into())],
        })
    }

    fn body(sent: Sent) -> io::Result<Vec<u8>> {
        let Sent::Response(mut r) = sent else {
            panic!("unsupported")
        };
        assert_eq!((r.status, r.reason.as_str()), (206, "Partial Content"));
        let mut out = Vec::new();
        r.body.read_to_end(&mut out)?;
        Ok(out)
    }

    const HELLO: &[u8] = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhe";

    #[test]
    fn a_kept_alive_connection_is_used_again() {
        let (url, accepted) = peer(|_, conn| {
            while let Some(head) = request(conn) {
                assert!(head.starts_with("GET /k?x=1 HTTP/1.1\r\n"), "{head}");
                assert!(head.contains("\r\nRange: bytes=0-4\r\n"), "{head}");
                assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
                // The head with the body's start, the rest in another write.
                conn.write_all(HELLO).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                conn.write_all(b"llo").unwrap();
            }
        });
        let http = client();
        for _ in 0..3 {
            assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_pooled_connection_the_server_closed_is_replaced() {
        let (url, accepted) = peer(|_, conn| {
            request(conn).unwrap();
            conn.write_all(HELLO).unwrap();
            conn.write_all(b"llo").unwrap();
            // Closed after one response, without saying so.
        });
        let http = client();
        for _ in 0..3 {
            assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn connections_not_read_to_the_end_or_asked_to_close_are_not_kept() {
        let (url, accepted) = peer(|n, conn| {
            while request(conn).is_some() {
                let close = if n == 0 { "Connection: close\r\n" } else { "" };
                let head =
                    format!("HTTP/1.1 206 Partial Content\r\n{close}Content-Length: 5\r\n\r\n");
                conn.write_all(head.as_bytes()).unwrap();
                conn.write_all(b"hello").unwrap();
            }
        });
        let http = client();
        // Connection 0 asks to close.
        assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        // Connection 1: its body is dropped unread.
        let Sent::Response(r) = get(&http, &url).unwrap() else {
            panic!()
        };
        drop(r);
        // Connection 2.
        assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_short_body_is_an_error() {
        let (url, accepted) = peer(|_, conn| {
            request(conn).unwrap();
            conn.write_all(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhel")
                .unwrap();
        });
        let http = client();
        let e = body(get(&http, &url).unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("2 bytes short"), "{e}");
        // Not pooled: the next request connects again.
        let _ = get(&http, &url);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn chunked_bodies_and_redirects_are_left_to_ureq_and_errors_are_answers() {
        let (url, _) = peer(|n, conn| {
            request(conn).unwrap();
            let answer: &[u8] = match n {
                0 => b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                1 => b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
                2 => b"HTTP/1.1 206 Partial Content\r\n\r\nhello",
                3 => b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n",
                _ => b"HTTP/1.1 503 Slow Down\r\nContent-Length: 4\r\n\r\nbusy",
            };
            conn.write_all(answer).unwrap();
        });
        let http = client();
        for _ in 0..3 {
            assert!(matches!(get(&http, &url).unwrap(), Sent::Unsupported));
        }
        // An error's body this client does not read: the status alone.
        let Sent::Response(mut r) = get(&http, &url).unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.reason.as_str()), (403, "Forbidden"));
        assert_eq!(r.body.read(&mut [0u8; 8]).unwrap(), 0);
        let Sent::Response(mut r) = get(&http, &url).unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.reason.as_str()), (503, "Slow Down"));
        let mut text = String::new();
        r.body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "busy");
    }

    #[test]
    fn a_silent_server_times_out() {
        let (url, _) = peer(|_, conn| {
            request(conn).unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        let start = std::time::Instant::now();
        let e = get(&client(), &url).err().expect("timed out");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn garbage_is_an_error() {
        let (url, _) = peer(|_, conn| {
            request(conn).unwrap();
            conn.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap();
        });
        let e = get(&client(), &url).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/a/b?x=1"),
            Some(("127.0.0.1:8080", "/a/b?x=1"))
        );
        assert_eq!(split_url("http://h?x"), Some(("h", "?x")));
        assert_eq!(split_url("http://h"), Some(("h", "/")));
        assert_eq!(split_url("https://h/k"), None);
        assert_eq!(split_url("http:///k"), None);
        assert_eq!(split_url("http://user@h/k"), None, "userinfo: left to ureq");
        assert_eq!(split_url("http://h/a b"), None, "unencoded: left to ureq");
        assert_eq!(split_url("http://h/é"), None);
        assert_eq!(split_url("http://h/k#f"), None);
        assert_eq!(socket_address("h"), "h:80");
        assert_eq!(socket_address("h:81"), "h:81");
        assert_eq!(socket_address("[::1]"), "[::1]:80");
        assert_eq!(socket_address("[::1]:81"), "[::1]:81");
    }

    #[test]
    fn heads() {
        let (status, reason, headers) = parse_head(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\ncontent-range:bytes 0-4/9",
        )
        .unwrap();
        assert_eq!((status, reason.as_str()), (206, "Partial Content"));
        assert_eq!(headers[1], ("content-range".into(), "bytes 0-4/9".into()));
        assert!(parse_head("SSH-2.0 hello").is_err());
        assert!(parse_head("HTTP/1.1 abc").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nno colon").is_err());
    }
}
