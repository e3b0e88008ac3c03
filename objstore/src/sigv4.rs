//! AWS Signature Version 4 for the requests this crate makes (bodiless `GET`s), written on
//! `hmac` + `sha2` and checked against AWS's published examples (the tests below).
//!
//! Only what a `GET` of an object needs: no query-string presigning, no chunked payloads. The
//! signed headers are `host`, `x-amz-content-sha256`, `x-amz-date` and, with temporary
//! credentials, `x-amz-security-token`; `Range` and `If-Match` travel unsigned (S3 accepts
//! them so, and a retried remainder or a hedge then needs no new signature per header).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of an empty payload, hex: what a bodiless `GET` signs.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Credentials as the AWS tools take them from the environment.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never print the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("session_token", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

/// One request to sign.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// The path, already URI-encoded as it goes on the wire (`/bucket/key`).
    pub path: &'a str,
    /// The canonical query string (sorted, encoded); empty for none.
    pub query: &'a str,
    /// Headers to sign, names lower-case, values trimmed; sorted by name here.
    pub headers: Vec<(&'a str, String)>,
    /// The payload's SHA-256, hex.
    pub payload_sha256: &'a str,
}

/// The scope of a signature: date (`YYYYMMDD`), region, service.
pub(crate) struct Scope<'a> {
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The canonical request (task 1 of the signing process) and its signed-header list.
pub(crate) fn canonical_request(req: &Request<'_>) -> (String, String) {
    let mut headers = req.headers.clone();
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let mut canonical = String::new();
    for (name, value) in &headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value.trim());
        canonical.push('\n');
    }
    let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    let signed = signed.join(";");
    let text = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method, req.path, req.query, canonical, signed, req.payload_sha256
    );
    (text, signed)
}

/// The string to sign (task 2).
pub(crate) fn string_to_sign(timestamp: &str, scope: &Scope<'_>, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{}\n{}",
        scope.string(),
        sha256_hex(canonical.as_bytes())
    )
}

/// The signing key (task 3): HMACs of date, region, service and `aws4_request`.
pub(crate) fn signing_key(secret: &str, scope: &Scope<'_>) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), scope.date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The `Authorization` header's value for `req`, signed at `timestamp` (`YYYYMMDDTHHMMSSZ`).
pub(crate) fn authorization(
    creds: &Credentials,
    timestamp: &str,
    region: &str,
    service: &str,
    req: &Request<'_>,
) -> String {
    let scope = Scope {
        date: &timestamp[..8],
        region,
        service,
    };
    let (canonical, signed) = canonical_request(req);
    let to_sign = string_to_sign(timestamp, &scope, &canonical);
    let signature = hex(&hmac(
        &signing_key(&creds.secret_key, &scope),
        to_sign.as_bytes(),
    ));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={signed},Signature={signature}",
        creds.access_key,
        scope.string()
    )
}

/// URI-encodes one path segment or query value as SigV4 wants it: everything but
/// `A-Za-z0-9-._~` as `%XX` (upper-case hex); `/` kept when `keep_slash`.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (UTC; civil-from-days).
pub(crate) fn timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86400) as i64;
    let secs = unix_secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's S3 documentation, "Signature Calculations for the Authorization Header":
    // "Example: GET Object" (the first 10 bytes of examplebucket/test.txt).
    #[test]
    fn s3_get_object_example() {
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: vec![
                ("host", "examplebucket.s3.amazonaws.com".into()),
                ("range", "bytes=0-9".into()),
                ("x-amz-content-sha256", EMPTY_SHA256.into()),
                ("x-amz-date", "20130524T000000Z".into()),
            ],
            payload_sha256: EMPTY_SHA256,
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        let scope = Scope {
            date: "20130524",
            region: "us-east-1",
            service: "s3",
        };
        assert_eq!(
            string_to_sign("20130524T000000Z", &scope, &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&creds, "20130524T000000Z", "us-east-1", "s3", &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    // AWS General Reference, "Examples of how to derive a signing key for Signature Version 4".
    #[test]
    fn signing_key_example() {
        let scope = Scope {
            date: "20120215",
            region: "us-east-1",
            service: "iam",
        };
        assert_eq!(
            hex(&signing_key(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                &scope
            )),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    // AWS's Signature Version 4 test suite, "get-vanilla".
    #[test]
    fn test_suite_get_vanilla() {
        let creds = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: vec![
                ("host", "example.amazonaws.com".into()),
                ("x-amz-date", "20150830T123600Z".into()),
            ],
            payload_sha256: EMPTY_SHA256,
        };
        assert_eq!(
            authorization(&creds, "20150830T123600Z", "us-east-1", "service", &req),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .replace(", ", ",")
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(1_369_353_600), "20130524T000000Z");
        assert_eq!(timestamp(1_440_938_160), "20150830T123600Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d+é", true), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
