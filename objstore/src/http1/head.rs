//! A response's head: found in the bytes received, parsed strictly, and its body's framing.

use std::io;

/// The parsed head of a response.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// HTTP/1.1 (else 1.0: its connections are not kept).
    pub http11: bool,
}

/// How the body that follows a head is delimited.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` bytes.
    Length(u64),
    /// Anything else (chunked, until close, none given): left to ureq.
    Other,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Where the head ends in `bytes`: the index of its first byte past the empty line (lines end
/// in CRLF, or a bare LF as some servers send).
pub(crate) fn end(bytes: &[u8]) -> Option<usize> {
    let mut i = bytes.iter().position(|&b| b == b'\n')?;
    loop {
        let rest = &bytes[i + 1..];
        if rest.starts_with(b"\n") {
            return Some(i + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(i + 3);
        }
        i += 1 + rest.iter().position(|&b| b == b'\n')?;
    }
}

/// Parses a head (without its empty last line). Refused, as invalid: a status line that is
/// not HTTP/1's, a folded header line (obsolete, and a way to smuggle a second meaning), a
/// header name with white space or nothing.
pub(crate) fn parse(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head)
        .map_err(|_| invalid("a response head that is not text".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(invalid(format!(
                "not an HTTP/1 status line: {status_line:?}"
            )))
        }
    };
    let status = parts
        .next()
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("no status code: {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(invalid(format!("a folded header line: {line:?}")));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("a header without a colon: {line:?}")))?;
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(invalid(format!("a header name with white space: {line:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Head {
        status,
        reason,
        headers,
        http11,
    })
}

impl Head {
    /// The values of header `name` (any case).
    pub(crate) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body's framing. Every `Content-Length` must be digits and all agree (with
    /// `Transfer-Encoding` too, the body is not this client's to read).
    pub(crate) fn framing(&self) -> io::Result<Framing> {
        if self.values("Transfer-Encoding").next().is_some() {
            return Ok(Framing::Other);
        }
        let mut length = None;
        for value in self.values("Content-Length") {
            let ok =
                !value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit());
            let n = value
                .parse::<u64>()
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| invalid(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("Content-Length given twice, differently".into()));
            }
            length = Some(n);
        }
        Ok(length.map_or(Framing::Other, Framing::Length))
    }

    /// Whether the connection may carry another request after this response.
    pub(crate) fn keep_alive(&self) -> bool {
        self.http11
            && !self
                .values("Connection")
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> io::Result<Head> {
        parse(text.as_bytes())
    }

    #[test]
    fn ends() {
        assert_eq!(end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(end(b"HTTP/1.1 200 OK\nA: b\n\nbody"), Some(22));
        assert_eq!(end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(end(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(end(b""), None);
    }

    #[test]
    fn heads() {
        let h =
            head("HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\ncontent-range:bytes 0-4/9")
                .unwrap();
        assert_eq!((h.status, h.reason.as_str()), (206, "Partial Content"));
        assert_eq!(
            h.values("Content-Range").collect::<Vec<_>>(),
            ["bytes 0-4/9"]
        );
        assert_eq!(h.framing().unwrap(), Framing::Length(5));
        assert!(h.keep_alive());
        let h = head("HTTP/1.1 200 OK\nContent-Length: 5\nConnection: keep-alive, Close").unwrap();
        assert!(!h.keep_alive(), "close among the tokens");
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 5")
            .unwrap()
            .keep_alive());
        for bad in [
            "SSH-2.0 hello",
            "HTTP/2 200 OK",
            "HTTP/1.1 abc",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 200 OK\r\nno colon",
            "HTTP/1.1 200 OK\r\nA: b\r\n folded: c",
            "HTTP/1.1 200 OK\r\nContent-Length : 5",
            "HTTP/1.1 200 OK\r\n: 5",
        ] {
            assert_eq!(
                head(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn framings() {
        let framing = |headers: &str| {
            head(&format!("HTTP/1.1 200 OK\r\n{headers}"))
                .unwrap()
                .framing()
        };
        assert_eq!(framing("Content-Length: 0").unwrap(), Framing::Length(0));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5").unwrap(),
            Framing::Length(5)
        );
        assert_eq!(framing("").unwrap(), Framing::Other);
        assert_eq!(
            framing("Transfer-Encoding: chunked").unwrap(),
            Framing::Other
        );
        assert_eq!(
            framing("Content-Length: 5\r\nTransfer-Encoding: chunked").unwrap(),
            Framing::Other
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: +5",
            "Content-Length: 5, 5",
            "Content-Length: -1",
            "Content-Length: ",
            "Content-Length: 99999999999999999999",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
    }
}
