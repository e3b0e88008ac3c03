//! The client against a scripted peer on 127.0.0.1: framing, pooling and timeouts in the
//! cases a real store (nginx, moto: the crate's integration tests) does not produce on
//! demand.

use super::*;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A peer that runs `answer` on each connection it accepts (with the connection's number),
/// each on a thread of its own, counting them; the URL of `/k?x=1` on it.
fn peer(
    answer: impl Fn(usize, &mut TcpStream) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/k?x=1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || answer(n, &mut conn));
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

const TIMEOUT: Duration = Duration::from_millis(500);

fn client() -> Arc<Http1> {
    Arc::new(Http1::new(4, Duration::from_secs(5), TIMEOUT, "test"))
}

fn get(http: &Arc<Http1>, url: &str) -> io::Result<Sent> {
    http.get(&Request {
        url: url.into(),
        headers: vec![("Range", "bytes=0-4".into())],
    })
}

fn response(sent: Sent) -> Response {
    match sent {
        Sent::Response(r) => r,
        Sent::Unsupported => panic!("left to ureq"),
    }
}

fn body(sent: Sent) -> io::Result<Vec<u8>> {
    let mut r = response(sent);
    assert_eq!((r.status, r.reason.as_str()), (206, "Partial Content"));
    let mut out = Vec::new();
    r.body.read_to_end(&mut out)?;
    Ok(out)
}

const HELLO_HEAD: &[u8] = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhe";

#[test]
fn a_kept_alive_connection_is_used_again() {
    let (url, accepted) = peer(|_, conn| {
        while let Some(head) = request(conn) {
            assert!(head.starts_with("GET /k?x=1 HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("\r\nRange: bytes=0-4\r\n"), "{head}");
            assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
            // The head with the body's start, the rest in another write.
            conn.write_all(HELLO_HEAD).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            conn.write_all(b"llo").unwrap();
        }
    });
    let http = client();
    for _ in 0..3 {
        assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        assert_eq!(http.idle_count(), 1);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_pooled_connection_the_server_closed_is_replaced() {
    let (url, accepted) = peer(|_, conn| {
        request(conn).unwrap();
        conn.write_all(HELLO_HEAD).unwrap();
        conn.write_all(b"llo").unwrap();
        // Closed after one response, without saying so.
    });
    let http = client();
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(
        http.idle_count(),
        1,
        "kept: the server did not say it closes"
    );
    // Seen closed before use (or, racing, when nothing comes back): a new connection.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_pooled_connection_with_bytes_nobody_asked_for_is_dropped() {
    let (url, accepted) = peer(|n, conn| {
        request(conn).unwrap();
        conn.write_all(HELLO_HEAD).unwrap();
        conn.write_all(b"llo").unwrap();
        if n == 0 {
            // A stray answer after the body (a broken server or proxy): whatever reads it
            // next would take it for the answer to its own request.
            std::thread::sleep(Duration::from_millis(20));
            conn.write_all(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nWRONG")
                .unwrap();
            let _ = request(conn);
        }
    });
    let http = client();
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_closed_connection_is_sent_the_request_again_once_when_nothing_came_back() {
    // The pooled connection passes the check, then the server drops it unanswered (an
    // idle timeout racing the request): sent again on a new connection.
    let (url, accepted) = peer(|n, conn| {
        request(conn).unwrap();
        if n == 0 {
            conn.write_all(HELLO_HEAD).unwrap();
            conn.write_all(b"llo").unwrap();
            request(conn).unwrap(); // the second request: dropped unanswered
        } else {
            conn.write_all(HELLO_HEAD).unwrap();
            conn.write_all(b"llo").unwrap();
        }
    });
    let http = client();
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn connections_not_read_to_the_end_or_not_kept_alive_are_not_pooled() {
    let (url, _) = peer(|n, conn| {
        while request(conn).is_some() {
            let head: &[u8] = match n {
                0 => b"HTTP/1.1 206 Partial Content\r\nConnection: keep-alive, close\r\nContent-Length: 5\r\n\r\n",
                1 => b"HTTP/1.0 206 Partial Content\r\nContent-Length: 5\r\n\r\n",
                _ => b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\n",
            };
            conn.write_all(head).unwrap();
            conn.write_all(b"hello").unwrap();
        }
    });
    let http = client();
    // Connection 0 asks to close; connection 1 speaks HTTP/1.0.
    for _ in 0..2 {
        assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
        assert_eq!(http.idle_count(), 0);
    }
    // Connection 2: its body is dropped half read.
    let mut r = response(get(&http, &url).unwrap());
    r.body.read_exact(&mut [0u8; 2]).unwrap();
    drop(r);
    assert_eq!(http.idle_count(), 0);
    // Connection 3: read whole, kept.
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(http.idle_count(), 1);
}

#[test]
fn a_short_body_is_an_error_every_time_it_is_read() {
    let (url, _) = peer(|_, conn| {
        request(conn).unwrap();
        conn.write_all(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhel")
            .unwrap();
    });
    let http = client();
    let mut r = response(get(&http, &url).unwrap());
    let mut out = Vec::new();
    let e = r.body.read_to_end(&mut out).unwrap_err();
    assert_eq!(out, b"hel");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("2 bytes short"), "{e}");
    let again = r.body.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(
        again.kind(),
        io::ErrorKind::UnexpectedEof,
        "never a clean end"
    );
    assert_eq!(http.idle_count(), 0);
}

#[test]
fn what_the_client_does_not_read_is_left_to_ureq_and_errors_are_answers() {
    let answers: [&[u8]; 7] = [
        b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\n\r\nhello",
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Slow Down\r\nContent-Length: 4\r\n\r\nbusy",
    ];
    let (url, _) = peer(move |n, conn| {
        request(conn).unwrap();
        conn.write_all(answers[n]).unwrap();
    });
    let http = client();
    for n in 0..5 {
        assert!(
            matches!(get(&http, &url).unwrap(), Sent::Unsupported),
            "answer {n}"
        );
    }
    // An error's body this client does not read: the status alone.
    let mut r = response(get(&http, &url).unwrap());
    assert_eq!((r.status, r.reason.as_str()), (403, "Forbidden"));
    assert_eq!(r.body.read(&mut [0u8; 8]).unwrap(), 0);
    let mut r = response(get(&http, &url).unwrap());
    assert_eq!((r.status, r.reason.as_str()), (503, "Slow Down"));
    let mut text = String::new();
    r.body.read_to_string(&mut text).unwrap();
    assert_eq!(text, "busy");
}

#[test]
fn invalid_framing_is_an_error() {
    let answers: [&[u8]; 5] = [
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 206 Partial Content\r\nX: a\r\n Content-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 2\r\n\r\nhello",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ];
    let (url, _) = peer(move |n, conn| {
        request(conn).unwrap();
        conn.write_all(answers[n]).unwrap();
    });
    let http = client();
    for n in 0..5 {
        let e = get(&http, &url)
            .err()
            .unwrap_or_else(|| panic!("answer {n} accepted"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "answer {n}: {e}");
    }
    assert_eq!(http.idle_count(), 0);
}

#[test]
fn bare_line_feeds_and_empty_bodies() {
    let (url, accepted) = peer(|_, conn| {
        request(conn).unwrap();
        conn.write_all(b"HTTP/1.1 206 Partial Content\nContent-Length: 5\n\nhello")
            .unwrap();
        request(conn).unwrap();
        conn.write_all(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        request(conn).unwrap();
        conn.write_all(HELLO_HEAD).unwrap();
        conn.write_all(b"llo").unwrap();
    });
    let http = client();
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"");
    assert_eq!(
        http.idle_count(),
        1,
        "an empty body frees its connection at once"
    );
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_silent_server_times_out_once() {
    let (url, accepted) = peer(|_, conn| {
        request(conn).unwrap();
        conn.write_all(HELLO_HEAD).unwrap();
        conn.write_all(b"llo").unwrap();
        // The second request, on the pooled connection: no answer for a while.
        request(conn).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let http = client();
    assert_eq!(body(get(&http, &url).unwrap()).unwrap(), b"hello");
    let start = Instant::now();
    let e = get(&http, &url).err().expect("timed out");
    let took = start.elapsed();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    // One timeout, not a second request on a new connection waiting as long again.
    assert!(took >= TIMEOUT && took < 2 * TIMEOUT, "{took:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_silent_body_times_out() {
    let (url, _) = peer(|_, conn| {
        request(conn).unwrap();
        conn.write_all(HELLO_HEAD).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let e = body(get(&client(), &url).unwrap()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
}

#[test]
fn a_header_that_would_split_the_request_is_refused() {
    let http = client();
    let e = http
        .get(&Request {
            url: "http://127.0.0.1:9/k".into(),
            headers: vec![("If-Match", "\"a\"\r\nX-Injected: 1".into())],
        })
        .err()
        .expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("If-Match"), "{e}");
}
