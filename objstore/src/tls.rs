//! Trust for `https`: which certificate authorities a store's certificate may chain to, and
//! which TLS failures are fatal.
//!
//! The roots are Mozilla's, as compiled into `webpki-roots` (the same set `ureq` uses by
//! default; the system's `/etc/ssl/certs` is not read), plus the certificates of one PEM
//! file: [`Options::ca_certificates`](crate::Options::ca_certificates) when set, else the
//! file the standard variable `SSL_CERT_FILE` names when the object is behind `https`. The
//! file *adds* roots (a private CA for an on-premises store or a test server); it does not
//! replace the public ones, so pointing `SSL_CERT_FILE` at a system bundle changes nothing
//! for public stores.
//!
//! A certificate that does not verify (unknown issuer, expired, another name), or a server
//! that speaks no TLS version or cipher suite in common, is fatal: it fails at once with
//! [`Cause::Tls`](crate::Cause::Tls) instead of being retried until the deadline, since
//! waiting does not change a certificate.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::OpenError;

/// The standard variable naming a PEM file of extra trust roots.
pub(crate) const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// A client configuration trusting webpki's roots and the certificates in the PEM file at
/// `path`; `what` names where the path came from in errors.
pub(crate) fn config_with(path: &Path, what: &str) -> Result<Arc<rustls::ClientConfig>, OpenError> {
    let bad = |why: String| OpenError::Tls(format!("{what} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {}: {e}", added + 1)))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad("no PEM certificate in it".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
    .map_err(|e| OpenError::Tls(format!("TLS versions: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS cause of a transport error that retrying cannot cure (the certificate does not
/// verify, no common protocol): `None` for any other failure.
pub(crate) fn fatal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    // ureq wraps the handshake's io::Error, which wraps rustls' error; io::Error's
    // `source()` skips the error it wraps, so `get_ref` looks inside it.
    let mut next = Some(err);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return match tls {
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::PeerIncompatible(_) => Some(tls.to_string()),
                    _ => None,
                };
            }
        }
        next = e.source();
    }
    None
}
