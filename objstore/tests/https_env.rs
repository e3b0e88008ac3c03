//! `SSL_CERT_FILE` adds trust roots when `Options::ca_certificates` is not set. Its own test
//! binary with one test: it sets the variable for the whole process.
#![cfg(feature = "https")]

mod support;

use std::time::Duration;

use support::nginx::Nginx;
use support::restore::{shuffled, Restore, PAGE};
use support::tls::Pki;
use support::write_snapshot;
use userfaultfd_objstore::{open, OpenError, Options};

#[test]
fn ssl_cert_file_adds_trust_roots() {
    let Some(pki) = Pki::new() else { return };
    let Some(nginx) = Nginx::start_tls(&pki.cert(), &pki.key()) else {
        return;
    };
    let len = 4u64 << 20;
    write_snapshot(&nginx.www().join("mem"), 23, len);
    let mut opts = Options::default();
    opts.chunk_size = 1 << 20;
    opts.deadline = Duration::from_secs(60);
    // SAFETY (of set_var): this binary's only test; no other thread reads the environment.
    std::env::set_var("SSL_CERT_FILE", pki.ca());
    let source = open(&nginx.url("mem"), &opts).unwrap_or_else(|e| panic!("{e}"));
    let restore = Restore::start(source, len as usize, 2);
    restore
        .touch(
            &shuffled(len as usize / PAGE, 23),
            2,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(restore.mismatches(23), Vec::<usize>::new());

    // An unusable file named by the variable is refused, naming the variable.
    std::env::set_var("SSL_CERT_FILE", "/nonexistent/ca.pem");
    let e = open(&nginx.url("mem"), &opts).unwrap_err();
    assert!(matches!(e, OpenError::Tls(_)), "{e}");
    assert!(
        e.to_string().contains("SSL_CERT_FILE /nonexistent/ca.pem"),
        "{e}"
    );
    // Not read for plain http: nothing to trust there.
    let http = format!("http://127.0.0.1:{}/mem", support::free_port());
    opts.deadline = Duration::from_millis(100);
    let e = open(&http, &opts).unwrap_err();
    assert!(matches!(e, OpenError::Fetch(_)), "{e}");
    std::env::remove_var("SSL_CERT_FILE");
}
