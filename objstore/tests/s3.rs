//! S3 restores against moto's server on 127.0.0.1, which checks every SigV4 signature: a `serve`
//! restore with every byte checked, through the fault-injecting proxy too; a wrong secret
//! refused with a clear error; `s3://` URLs configured from the AWS environment variables.

mod support;

use std::time::Duration;

use support::proxy::{Proxy, Rates};
use support::restore::{shuffled, Restore, PAGE};
use support::s3::{Moto, BUCKET};
use userfaultfd::serve::PageSource;
use userfaultfd_objstore::{open, open_s3, Options, S3Config};

const MIB: u64 = 1 << 20;

fn snapshot(version: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    support::expected(version, 0, &mut v);
    v
}

fn config(endpoint: String, key_id: &str, secret: &str) -> S3Config {
    // Not from the environment: s3_url_from_environment sets it meanwhile.
    let mut c = S3Config::default();
    c.endpoint = Some(endpoint);
    c.region = "us-east-1".into();
    c.access_key_id = Some(key_id.into());
    c.secret_access_key = Some(secret.into());
    c.session_token = None;
    c.path_style = None; // an IP address: path-style
    c
}

fn options() -> Options {
    let mut o = Options::default();
    o.chunk_size = 1 << 20;
    o.request_timeout = Duration::from_secs(2);
    o.hedge_after = Some(Duration::from_millis(500));
    o.backoff_initial = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(200);
    o.deadline = Duration::from_secs(60);
    o
}

/// Signed range requests to moto (which checks them) restore every byte.
#[test]
fn restore_from_s3_signed() {
    let len = 8 * MIB;
    let Some(s3) = Moto::start("vm/memory", &snapshot(1, len)) else {
        return;
    };
    let source = open_s3(
        BUCKET,
        "vm/memory",
        &config(s3.endpoint(), &s3.key_id, &s3.secret),
        &options(),
    )
    .unwrap();
    assert_eq!(source.len(), len);
    assert!(source.etag().is_some());
    let restore = Restore::start(source.clone(), len as usize, 2);
    let pages = len as usize / PAGE;
    restore
        .touch(&shuffled(pages, 3), 2, Duration::from_secs(60))
        .unwrap();
    assert_eq!(restore.mismatches(1), Vec::<usize>::new());
    assert_eq!(source.stats().retries, 0, "{:?}", source.stats());
}

/// Through the fault-injecting proxy (the signature covers the proxy's host, which it
/// forwards unchanged): every byte right.
#[test]
fn restore_from_s3_under_injected_failures() {
    let len = 8 * MIB;
    let Some(s3) = Moto::start("vm/memory", &snapshot(2, len)) else {
        return;
    };
    let rates = Rates {
        status_503: 0.10,
        reset: 0.05,
        stall: 0.02,
        truncate: 0.01,
    };
    let proxy = Proxy::start(s3.port, rates, Duration::from_secs(5), 9);
    let mut opts = options();
    opts.chunk_size = 128 << 10;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let source = open_s3(
        BUCKET,
        "vm/memory",
        &config(endpoint, &s3.key_id, &s3.secret),
        &opts,
    )
    .unwrap();
    let restore = Restore::start(source.clone(), len as usize, 2);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 4),
            4,
            Duration::from_secs(90),
        )
        .unwrap();
    assert_eq!(restore.mismatches(2), Vec::<usize>::new());
    assert!(source.stats().retries > 0, "{}", source.progress_line());
}

/// S3 over https: nginx terminates TLS (a certificate of a CA made at test time, trusted
/// through `Options::ca_certificates`) in front of moto, which checks every signature (of
/// the https endpoint's host): every byte right.
#[cfg(feature = "https")]
#[test]
fn restore_from_s3_over_https() {
    let len = 8 * MIB;
    let Some(s3) = Moto::start("vm/memory", &snapshot(6, len)) else {
        return;
    };
    let Some(pki) = support::tls::Pki::new() else {
        return;
    };
    let Some(tls) = support::nginx::Nginx::start_tls_proxy(&pki.cert(), &pki.key(), s3.port) else {
        return;
    };
    let mut opts = options();
    opts.ca_certificates = Some(pki.ca());
    let endpoint = format!("https://127.0.0.1:{}", tls.port);
    let source = open_s3(
        BUCKET,
        "vm/memory",
        &config(endpoint.clone(), &s3.key_id, &s3.secret),
        &opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.len(), len);
    let restore = Restore::start(source.clone(), len as usize, 2);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 6),
            2,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(restore.mismatches(6), Vec::<usize>::new());
    // The same endpoint without the CA: refused at once, naming the TLS cause.
    opts.ca_certificates = None;
    if std::env::var_os("SSL_CERT_FILE").is_none() {
        let e = open_s3(
            BUCKET,
            "vm/memory",
            &config(endpoint, &s3.key_id, &s3.secret),
            &opts,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("TLS handshake refused") && e.contains("s3://"),
            "{e}"
        );
    }
}

/// A wrong secret: moto refuses the signature; the error names the object and the code.
#[test]
fn wrong_secret_refused() {
    let Some(s3) = Moto::start("vm/memory", &snapshot(3, MIB)) else {
        return;
    };
    let e = open_s3(
        BUCKET,
        "vm/memory",
        &config(s3.endpoint(), &s3.key_id, "not-the-secret"),
        &options(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("403") && e.contains("SignatureDoesNotMatch"),
        "{e}"
    );
    assert!(e.contains(&format!("s3://{BUCKET}/vm/memory")), "{e}");
}

/// `s3://bucket/key` reads AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_S3_FORCE_PATH_STYLE (the only test here that sets the
/// environment).
#[test]
fn s3_url_from_environment() {
    let len = 2 * MIB;
    let Some(s3) = Moto::start("env/memory", &snapshot(4, len)) else {
        return;
    };
    std::env::set_var("AWS_ENDPOINT_URL", s3.endpoint());
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", &s3.key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret);
    std::env::remove_var("AWS_SESSION_TOKEN");
    let source = open(&format!("s3://{BUCKET}/env/memory"), &options()).unwrap();
    let mut scratch = vec![0u8; PAGE];
    let mut want = vec![0u8; PAGE];
    for page in [0u64, 300, 511] {
        let got = match source
            .fetch(page * PAGE as u64, PAGE, &mut scratch)
            .unwrap()
        {
            userfaultfd::serve::Chunk::Data(d) => d.to_vec(),
            userfaultfd::serve::Chunk::Zeros(_) => panic!("zeros"),
        };
        support::expected(4, page * PAGE as u64, &mut want);
        assert_eq!(got, want);
    }
    // A boolean in any of the usual spellings; anything else refused, naming it.
    std::env::set_var("AWS_S3_FORCE_PATH_STYLE", "YES");
    open(&format!("s3://{BUCKET}/env/memory"), &options()).unwrap();
    std::env::set_var("AWS_S3_FORCE_PATH_STYLE", "maybe");
    let e = open(&format!("s3://{BUCKET}/env/memory"), &options())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("AWS_S3_FORCE_PATH_STYLE") && e.contains("\"maybe\""),
        "{e}"
    );
    std::env::remove_var("AWS_S3_FORCE_PATH_STYLE");
}

/// Temporary credentials (an assumed role's key, secret and session token): the token is
/// sent and signed; with another token moto refuses, and the error says so.
#[test]
fn session_token() {
    let len = MIB;
    let Some(s3) = Moto::start("vm/memory", &snapshot(5, len)) else {
        return;
    };
    let (key, secret, token) = s3.session.clone();
    let mut c = config(s3.endpoint(), &key, &secret);
    c.session_token = Some(token);
    let source = open_s3(BUCKET, "vm/memory", &c, &options()).unwrap();
    let mut scratch = vec![0u8; PAGE];
    let mut want = vec![0u8; PAGE];
    let got = match source.fetch(8 * PAGE as u64, PAGE, &mut scratch).unwrap() {
        userfaultfd::serve::Chunk::Data(d) => d.to_vec(),
        userfaultfd::serve::Chunk::Zeros(_) => panic!("zeros"),
    };
    support::expected(5, 8 * PAGE as u64, &mut want);
    assert_eq!(got, want);

    c.session_token = Some("another-token".into());
    let e = open_s3(BUCKET, "vm/memory", &c, &options())
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidToken") && e.contains("s3://"), "{e}");
}
