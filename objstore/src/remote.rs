//! One object in a store, as of the version it was opened on: range requests checked
//! against its length and ETag, hedged, and classified as transient (retry) or fatal.

use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Cause, FetchError};
use crate::http1::{self, Http1, Sent};
use crate::stats::Counters;
use crate::store::Store;

/// A failed attempt.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth retrying: 5xx, 408, 429, a reset, a timeout, a short body.
    Transient(String),
    /// Not: the object changed, a refusal, an unusable answer.
    Fatal(Cause),
}

/// The body of a checked range response: exactly the range's bytes follow.
pub(crate) type Body = Box<dyn Read + Send + Sync + 'static>;

/// The object, its length and ETag, and how to ask for its bytes.
pub(crate) struct Remote {
    pub store: Arc<dyn Store>,
    pub agent: ureq::Agent,
    pub len: u64,
    /// The ETag when opened: every later request carries `If-Match` with it, and an answer
    /// with another ETag is refused.
    pub etag: Option<String>,
    pub hedge_after: Option<Duration>,
    /// Chunk requests to a plain `http://` store, read straight into the buffer
    /// ([`crate::http1`]); `None` for `https://`.
    pub direct: Option<Direct>,
}

/// The [`Http1`] client and whether the store answers in a way it reads.
pub(crate) struct Direct {
    pub client: Arc<Http1>,
    /// Set when the store answered with something the client leaves to ureq (a chunked
    /// body, a redirect): every later request then goes through ureq.
    pub off: Arc<AtomicBool>,
}

/// A response to a range request, from either client.
pub(crate) enum Answer {
    Ureq(ureq::Response),
    Direct(http1::Response),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::Ureq(r) => r.status(),
            Answer::Direct(r) => r.status,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self {
            Answer::Ureq(r) => r.header(name),
            Answer::Direct(r) => r.header(name),
        }
    }

    /// The length of the body, where the client knows it before reading (the direct one).
    fn body_len(&self) -> Option<u64> {
        match self {
            Answer::Ureq(_) => None,
            Answer::Direct(r) => Some(r.body.remaining()),
        }
    }

    fn into_body(self) -> Body {
        match self {
            Answer::Ureq(r) => r.into_reader(),
            Answer::Direct(r) => Box::new(r.body),
        }
    }
}

/// Reads the `ETag` of a response.
fn etag_of(resp: &ureq::Response) -> Option<String> {
    resp.header("ETag").map(str::to_string)
}

/// Classifies an answer that is not a success: `code`, its reason `text`, and the start of
/// its body.
fn classify_status(code: u16, text: String, body: impl Read) -> Failure {
    match code {
        412 => Failure::Fatal(Cause::Changed(format!("If-Match refused: HTTP 412 {text}"))),
        416 => Failure::Fatal(Cause::Changed(format!(
            "range not satisfiable: HTTP 416 {text}; the object is shorter"
        ))),
        408 | 429 | 500..=599 => Failure::Transient(format!("HTTP {code} {text}")),
        _ => {
            // S3 explains a refusal in the body (an XML <Code>): keep its start.
            let mut start = String::new();
            let _ = body.take(512).read_to_string(&mut start);
            let why = match (start.find("<Code>"), start.find("</Code>")) {
                (Some(a), Some(b)) if a + 6 <= b => start[a + 6..b].to_string(),
                _ => text,
            };
            Failure::Fatal(Cause::Refused(code, why))
        }
    }
}

/// Sends one range request: through the direct client where it applies (unless the store
/// turned it off), else through ureq.
fn request_once(
    store: &dyn Store,
    agent: &ureq::Agent,
    direct: Option<(&Arc<Http1>, &AtomicBool)>,
    range: &Range<u64>,
    etag: Option<&str>,
) -> Result<Answer, Failure> {
    if let Some((client, off)) = direct.filter(|(_, off)| !off.load(Ordering::Relaxed)) {
        match client.get(&store.request(range, etag)) {
            Ok(Sent::Response(r)) if (200..300).contains(&r.status) => {
                return Ok(Answer::Direct(r))
            }
            Ok(Sent::Response(mut r)) => {
                // Its body read (up to 4 KiB: an S3 error document), so that the connection
                // can carry the next request.
                let mut start = Vec::new();
                let _ = (&mut r.body).take(4096).read_to_end(&mut start);
                return Err(classify_status(r.status, r.reason, &start[..]));
            }
            Ok(Sent::Unsupported) => off.store(true, Ordering::Relaxed),
            Err(e) => return Err(Failure::Transient(io_failure(&e))),
        }
    }
    store
        .get(agent, range, etag)
        .map(Answer::Ureq)
        .map_err(classify)
}

/// Words for a transport error of the direct client.
fn io_failure(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "timed out waiting for the store".into()
        }
        _ => e.to_string(),
    }
}

/// Parses `bytes a-b/total`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// Classifies a `ureq` error.
fn classify(err: ureq::Error) -> Failure {
    match err {
        ureq::Error::Status(code, resp) => {
            let text = resp.status_text().to_string();
            classify_status(code, text, resp.into_reader())
        }
        ureq::Error::Transport(t) => {
            #[cfg(feature = "https")]
            if let Some(why) = crate::tls::fatal(&t) {
                return Failure::Fatal(Cause::Tls(why));
            }
            Failure::Transient(t.to_string())
        }
    }
}

impl Remote {
    /// The object's length and ETag, from `GET bytes=0-0` (a presigned URL allows `GET`
    /// only, so no `HEAD`).
    pub(crate) fn probe(
        store: &dyn Store,
        agent: &ureq::Agent,
    ) -> Result<(u64, Option<String>), Failure> {
        let resp = store
            .get(agent, &(0..1), None)
            .map_err(|e| match classify(e) {
                Failure::Fatal(Cause::Changed(_)) => Failure::Fatal(Cause::Invalid(
                    "range 0-0 not satisfiable: the object is empty".into(),
                )),
                other => other,
            })?;
        if resp.status() != 206 {
            return Err(Failure::Fatal(Cause::Invalid(format!(
                "HTTP {} to a Range request: the server does not serve ranges",
                resp.status()
            ))));
        }
        let range = resp.header("Content-Range").unwrap_or("");
        let (_, _, total) = content_range(range)
            .ok_or_else(|| Failure::Fatal(Cause::Invalid(format!("Content-Range {range:?}"))))?;
        let etag = etag_of(&resp);
        let mut sink = Vec::new();
        resp.into_reader()
            .take(2)
            .read_to_end(&mut sink)
            .map_err(|e| Failure::Transient(format!("reading: {e}")))?;
        Ok((total, etag))
    }

    /// Sends the request for `range`, and a second one if the first has not answered after
    /// `hedge_after`; the first answer is used, the other dropped (its connection closed).
    fn send(&self, range: &Range<u64>, counters: &Counters) -> Result<Answer, Failure> {
        let direct = self.direct.as_ref().map(|d| (&d.client, &*d.off));
        let Some(hedge_after) = self.hedge_after else {
            counters.request();
            return request_once(
                &*self.store,
                &self.agent,
                direct,
                range,
                self.etag.as_deref(),
            );
        };
        let (tx, rx) = mpsc::channel();
        let spawn = |tx: mpsc::Sender<Result<Answer, Failure>>| {
            counters.request();
            let store = self.store.clone();
            let agent = self.agent.clone();
            let etag = self.etag.clone();
            let range = range.clone();
            let direct = self
                .direct
                .as_ref()
                .map(|d| (d.client.clone(), d.off.clone()));
            std::thread::Builder::new()
                .name("objstore-req".into())
                .spawn(move || {
                    let direct = direct.as_ref().map(|(c, off)| (c, &**off));
                    let answer = request_once(&*store, &agent, direct, &range, etag.as_deref());
                    let _ = tx.send(answer);
                })
                .map_err(|e| Failure::Transient(format!("spawning a request thread: {e}")))
        };
        spawn(tx.clone())?;
        match rx.recv_timeout(hedge_after) {
            Ok(answer) => answer,
            Err(_) => {
                counters.hedge();
                spawn(tx)?;
                // Both threads hold a sender (the timeouts of the agent end them), so this
                // returns.
                rx.recv()
                    .map_err(|_| Failure::Transient("request thread vanished".into()))?
            }
        }
    }

    /// A checked response to `range`: 206 with exactly this `Content-Range` of an object of
    /// the opened length, and the opened ETag.
    pub(crate) fn open_range(
        &self,
        range: &Range<u64>,
        counters: &Counters,
    ) -> Result<Body, Failure> {
        let resp = self.send(range, counters)?;
        if let (Some(want), Some(got)) = (&self.etag, resp.header("ETag")) {
            if want != got {
                return Err(Failure::Fatal(Cause::Changed(format!(
                    "ETag {got}, opened as {want}"
                ))));
            }
        }
        match resp.status() {
            206 => {
                let value = resp.header("Content-Range").unwrap_or("").to_string();
                match content_range(&value) {
                    Some((a, b, total)) if total != self.len => {
                        let _ = (a, b);
                        Err(Failure::Fatal(Cause::Changed(format!(
                            "length {total}, opened as {}",
                            self.len
                        ))))
                    }
                    Some((a, b, _)) if a == range.start && b + 1 == range.end => {
                        match resp.body_len() {
                            Some(n) if n != range.end - range.start => {
                                Err(Failure::Fatal(Cause::Invalid(format!(
                                    "Content-Length {n} for bytes {}-{}",
                                    range.start,
                                    range.end - 1
                                ))))
                            }
                            _ => Ok(resp.into_body()),
                        }
                    }
                    _ => Err(Failure::Fatal(Cause::Invalid(format!(
                        "Content-Range {value:?} for bytes {}-{}",
                        range.start,
                        range.end - 1
                    )))),
                }
            }
            200 if range.start == 0
                && range.end == self.len
                && resp.body_len().is_none_or(|n| n == self.len) =>
            {
                Ok(resp.into_body())
            }
            status => Err(Failure::Fatal(Cause::Invalid(format!(
                "HTTP {status} to a Range request"
            )))),
        }
    }

    /// A [`FetchError`] for `range`.
    pub(crate) fn error(&self, range: Range<u64>, cause: Cause, attempts: u32) -> FetchError {
        FetchError {
            object: self.store.name().to_string(),
            range,
            cause,
            attempts,
        }
    }
}

/// `d` from now, or a century from now where `d` reaches past what an `Instant` can hold
/// (`Duration::MAX` in the options means "never"; adding it would panic).
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Exponential backoff with full jitter, bounded by a deadline.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, deadline: Instant) -> Backoff {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff {
            next: initial,
            max,
            deadline,
            rng: seed | 1,
        }
    }

    /// Sleeps a random time up to the current bound (then doubles it), never past the
    /// deadline; `false` when the deadline has passed.
    pub(crate) fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let bound = self.next.as_nanos() as u64;
        let pause = Duration::from_nanos(if bound == 0 { 0 } else { self.rng % bound });
        std::thread::sleep(pause.min(self.deadline - now));
        self.next = (self.next * 2).min(self.max);
        Instant::now() < self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range("bytes 0-0/1234"), Some((0, 0, 1234)));
        assert_eq!(content_range("bytes 10-19/20"), Some((10, 19, 20)));
        assert_eq!(content_range("bytes */20"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }

    #[test]
    fn backoff_stops_at_the_deadline() {
        let start = Instant::now();
        let mut b = Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(20),
            start + Duration::from_millis(100),
        );
        let mut n = 0;
        while b.wait() {
            n += 1;
            assert!(n < 10_000);
        }
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
