//! Which URLs the direct client sends as they are, and what it sends for them.

/// Where a request goes: what to connect to, the `Host` header, the request target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// `host:port` to resolve and connect to.
    pub connect: String,
    /// The URL's authority, sent as `Host` (and the key of pooled connections).
    pub authority: &'a str,
    /// The path and query, starting with `/`.
    pub path: String,
}

/// Splits `http://host[:port]/path?query`. `None` for any URL the direct client would not
/// send exactly as ureq does, which then sends it: another scheme, user information, a
/// fragment, a character a request line cannot carry unencoded (ureq encodes it), an
/// upper-case host or an explicit `:80` (ureq's `Host` header lower-cases the one and drops
/// the other, and a presigned URL's signature covers the header as sent), an empty or
/// invalid port.
pub(crate) fn parse(url: &str) -> Option<Target<'_>> {
    let rest = url.strip_prefix("http://")?;
    if !rest.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') || authority.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: its colons are inside the brackets.
        Some(inner) => {
            let (address, after) = inner.split_once(']')?;
            if address.is_empty() {
                return None;
            }
            (&authority[..address.len() + 2], after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || (!host.starts_with('[') && host.contains(['[', ']'])) {
        return None;
    }
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5 => {
            match p.parse::<u16>().ok()? {
                80 | 0 => return None,
                port => port,
            }
        }
        Some(_) => return None,
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Some(Target {
        connect: format!("{host}:{port}"),
        authority,
        path,
    })
}

/// Whether `name: value` can go into a request as it is (no line break, no control byte).
pub(crate) fn header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> Option<(String, String, String)> {
        parse(url).map(|t| (t.connect, t.authority.to_string(), t.path))
    }

    fn some(connect: &str, authority: &str, path: &str) -> Option<(String, String, String)> {
        Some((connect.into(), authority.into(), path.into()))
    }

    #[test]
    fn urls_sent_as_they_are() {
        assert_eq!(
            parts("http://127.0.0.1:8080/a/b?x=1"),
            some("127.0.0.1:8080", "127.0.0.1:8080", "/a/b?x=1")
        );
        assert_eq!(parts("http://h/k"), some("h:80", "h", "/k"));
        assert_eq!(parts("http://h"), some("h:80", "h", "/"));
        // A query without a path: the target still starts with '/'.
        assert_eq!(parts("http://h:81?x"), some("h:81", "h:81", "/?x"));
        assert_eq!(
            parts("http://[::1]:81/k"),
            some("[::1]:81", "[::1]:81", "/k")
        );
        assert_eq!(parts("http://[::1]/k"), some("[::1]:80", "[::1]", "/k"));
    }

    #[test]
    fn urls_left_to_ureq() {
        for url in [
            "https://h/k",
            "http:///k",
            "http://user@h/k",
            "http://h/a b",
            "http://h/é",
            "http://h/k#f",
            "http://H/k",
            "http://h:80/k",
            "http://h:/k",
            "http://h:x/k",
            "http://h:65536/k",
            "http://h:0/k",
            "http://[::1/k",
            "http://[]:81/k",
            "http://a]:81/k",
        ] {
            assert_eq!(parse(url), None, "{url}");
        }
    }

    #[test]
    fn headers() {
        assert!(header_ok("If-Match", "\"abc\""));
        assert!(header_ok("x", "a\tb c"));
        assert!(!header_ok("x", "a\r\nInjected: 1"));
        assert!(!header_ok("x", "a\nb"));
        assert!(!header_ok("a b", "x"));
        assert!(!header_ok("a:b", "x"));
        assert!(!header_ok("", "x"));
    }
}
