//! A throwaway certificate authority and a server certificate for 127.0.0.1 and localhost,
//! made at test time with the openssl command (Debian's `openssl`; ci/objstore installs it):
//! for nginx and moto serving TLS on loopback, trusted by the client only through
//! `Options::ca_certificates` or `SSL_CERT_FILE`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{machine_lacks, TempDir};

const OPENSSL: &str = "/usr/bin/openssl";

pub struct Pki {
    dir: TempDir,
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA (`ca.pem`) and a server certificate it signed (`server.pem`, key `server.key`)
    /// for IP 127.0.0.1 and DNS localhost, valid for two days; `None` (a skip notice, a
    /// failure in strict mode) without openssl.
    #[track_caller]
    pub fn new() -> Option<Pki> {
        if !Path::new(OPENSSL).exists() {
            machine_lacks("the openssl command (Debian package openssl)");
            return None;
        }
        let dir = TempDir::new("pki");
        let d = dir.path();
        // Each CA its own name: a client trusting another test CA finds no issuer at all.
        let name = d.file_name().unwrap().to_string_lossy();
        std::fs::write(
            d.join("ca.cnf"),
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ca\n\
             [dn]\nCN = objstore test CA {name}\n\
             [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n\
             authorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-config", "ca.cnf", "-days", "2"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        run(d, &ca);
        let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        run(d, &csr);
        run(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        Some(Pki { dir })
    }

    /// The CA's certificate (PEM): what the client must trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate chain (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
