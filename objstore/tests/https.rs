//! `https://` against a real TLS server: nginx on 127.0.0.1 with `listen ... ssl` and a
//! certificate from a throwaway CA made at test time, trusted through
//! `Options::ca_certificates`; a restore with every byte checked; a certificate nobody
//! trusts failing at once with the TLS cause; unusable CA files refused by `open`.
#![cfg(feature = "https")]

mod support;

use std::time::{Duration, Instant};

use support::nginx::Nginx;
use support::restore::{shuffled, Memory, Restore, PAGE};
use support::tls::Pki;
use support::{write_snapshot, TempDir};
use userfaultfd::serve::PageSource;
use userfaultfd_objstore::{open, Cause, OpenError, Options};

const MIB: u64 = 1 << 20;

fn options(pki: &Pki) -> Options {
    let mut o = Options::default();
    o.chunk_size = 1 << 20;
    o.hedge_after = None;
    o.backoff_initial = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(200);
    o.deadline = Duration::from_secs(60);
    o.ca_certificates = Some(pki.ca());
    o
}

/// A restore over https from nginx, into every memory type: every byte right, no retries
/// (the handshake succeeded on every connection).
#[test]
fn restore_over_https_checks_every_byte() {
    let Some(pki) = Pki::new() else { return };
    let Some(nginx) = Nginx::start_tls(&pki.cert(), &pki.key()) else {
        return;
    };
    let len = 16 * MIB;
    write_snapshot(&nginx.www().join("mem"), 21, len);
    let url = nginx.url("mem");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    for memory in Memory::ALL {
        let mut opts = options(&pki);
        opts.page_size = memory.page_size();
        opts.chunk_size = 2 << 20;
        let source = open(&url, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(source.len(), len);
        let Some(restore) = Restore::start_on(memory, source.clone(), len as usize, 2, None) else {
            continue;
        };
        restore
            .touch(
                &shuffled(len as usize / PAGE, 21),
                4,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
        assert_eq!(restore.mismatches(21), Vec::<usize>::new(), "{memory:?}");
        let stats = source.stats();
        assert_eq!(stats.retries, 0, "{memory:?}: {stats:?}");
        assert_eq!(stats.bytes_fetched, len, "{memory:?}: {stats:?}");
    }
}

/// A server whose certificate chains to a CA the client does not trust (another throwaway
/// CA is the one given): `open` fails at once — one attempt, long before the deadline — with
/// `Cause::Tls`, the error naming the object and the certificate problem.
#[test]
fn untrusted_certificate_fails_at_once() {
    let (Some(pki), Some(other)) = (Pki::new(), Pki::new()) else {
        return;
    };
    let Some(nginx) = Nginx::start_tls(&pki.cert(), &pki.key()) else {
        return;
    };
    write_snapshot(&nginx.www().join("mem"), 22, MIB);
    let url = nginx.url("mem");
    let mut opts = options(&other);
    opts.deadline = Duration::from_secs(60);
    let started = Instant::now();
    let e = match open(&url, &opts) {
        Ok(_) => panic!("{url}: a certificate of an untrusted CA was accepted"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retried: {:?}: {e}",
        started.elapsed()
    );
    let OpenError::Fetch(f) = &e else {
        panic!("not a fetch error: {e}")
    };
    assert!(matches!(f.cause, Cause::Tls(_)), "{e}");
    assert_eq!(f.attempts, 1, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&url) && text.contains("TLS") && text.contains("certificate"),
        "{text}"
    );
    eprintln!("{text}");

    // The public roots alone do not know the test CA either.
    opts.ca_certificates = None;
    if std::env::var_os("SSL_CERT_FILE").is_none() {
        let e = open(&url, &opts).unwrap_err();
        assert!(
            matches!(&e, OpenError::Fetch(f) if matches!(f.cause, Cause::Tls(_))),
            "{e}"
        );
    }
}

/// A CA file that does not exist, or holds no certificate, fails `open` before any request,
/// naming the file.
#[test]
fn unusable_ca_file_is_refused() {
    let dir = TempDir::new("ca");
    let mut opts = Options::default();
    let absent = dir.path().join("absent.pem");
    opts.ca_certificates = Some(absent.clone());
    // Nothing listens there: the CA file is checked before the first request.
    let url = format!("https://127.0.0.1:{}/mem", support::free_port());
    let e = open(&url, &opts).unwrap_err();
    assert!(matches!(e, OpenError::Tls(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("ca_certificates") && text.contains(&absent.display().to_string()),
        "{text}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    opts.ca_certificates = Some(empty);
    let e = open(&url, &opts).unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}
