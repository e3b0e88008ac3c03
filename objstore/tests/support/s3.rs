//! moto's S3-compatible server (PyPI `moto[server]`) on 127.0.0.1, with its own port, with
//! authentication on: it checks every request's SigV4 signature (botocore's implementation)
//! against an access key created in its IAM. ci/objstore installs it in a venv under
//! ~/.cache/userfaultfd-rs; `OBJSTORE_MOTO_SERVER` names another `moto_server`. Killed on
//! drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{free_port, machine_lacks, wait_listening};

pub const BUCKET: &str = "snapshots";

pub struct Moto {
    child: Child,
    pub port: u16,
    pub key_id: String,
    pub secret: String,
    /// Temporary credentials of an assumed role (STS): key id, secret, session token.
    pub session: (String, String, String),
}

/// `OBJSTORE_MOTO_SERVER`, or where ci/objstore installs it.
fn program() -> PathBuf {
    std::env::var_os("OBJSTORE_MOTO_SERVER").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/userfaultfd-rs/moto-5.2.5/bin/moto_server")
        },
        PathBuf::from,
    )
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let a = text.find(open).expect(open) + open.len();
    let b = a + text[a..].find(close).expect(close);
    &text[a..b]
}

impl Moto {
    /// moto with a bucket holding `bytes` as `key`, an IAM user allowed `s3:*` whose access
    /// key the tests sign with, and temporary credentials of a role allowed the same. The
    /// eight set-up calls are the unauthenticated ones moto allows
    /// (INITIAL_NO_AUTH_ACTION_COUNT); every later request must be signed.
    #[track_caller]
    pub fn start(key: &str, bytes: &[u8]) -> Option<Moto> {
        let program = program();
        if !program.exists() {
            machine_lacks(&format!(
                "moto_server (PyPI moto[server]) at {}",
                program.display()
            ));
            return None;
        }
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "8")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let mut moto = Moto {
            child,
            port,
            key_id: String::new(),
            secret: String::new(),
            session: Default::default(),
        };
        assert!(wait_listening(port), "moto_server did not listen on {port}");
        // Unsigned set-up calls; the Authorization header only routes them to IAM.
        let endpoint = moto.endpoint();
        let call = |service: &str, form: &[(&str, &str)]| {
            ureq::post(&endpoint)
                .set(
                    "Authorization",
                    &format!(
                        "AWS4-HMAC-SHA256 Credential=setup/20250101/us-east-1/{service}/\
                         aws4_request, SignedHeaders=host, Signature=none"
                    ),
                )
                .send_form(form)
                .expect("an IAM call to moto")
                .into_string()
                .unwrap()
        };
        let iam = |form: &[(&str, &str)]| call("iam", form);
        let v = ("Version", "2010-05-08");
        let allow_s3 = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&[("Action", "CreateUser"), ("UserName", "restorer"), v]);
        let key_xml = iam(&[("Action", "CreateAccessKey"), ("UserName", "restorer"), v]);
        moto.key_id = between(&key_xml, "<AccessKeyId>", "</AccessKeyId>").into();
        moto.secret = between(&key_xml, "<SecretAccessKey>", "</SecretAccessKey>").into();
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "restorer"),
            ("PolicyName", "s3"),
            ("PolicyDocument", allow_s3),
            v,
        ]);
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
        iam(&[
            ("Action", "CreateRole"),
            ("RoleName", "restore"),
            ("AssumeRolePolicyDocument", trust),
            v,
        ]);
        iam(&[
            ("Action", "PutRolePolicy"),
            ("RoleName", "restore"),
            ("PolicyName", "s3"),
            ("PolicyDocument", allow_s3),
            v,
        ]);
        let creds = call(
            "sts",
            &[
                ("Action", "AssumeRole"),
                ("RoleArn", "arn:aws:iam::123456789012:role/restore"),
                ("RoleSessionName", "restore"),
                ("Version", "2011-06-15"),
            ],
        );
        moto.session = (
            between(&creds, "<AccessKeyId>", "</AccessKeyId>").into(),
            between(&creds, "<SecretAccessKey>", "</SecretAccessKey>").into(),
            between(&creds, "<SessionToken>", "</SessionToken>").into(),
        );
        ureq::put(&format!("{}/{BUCKET}", moto.endpoint()))
            .call()
            .expect("creating the bucket");
        moto.put(key, bytes);
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let resp = ureq::put(&format!("{}/{BUCKET}/{key}", self.endpoint()))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .expect("PUT to moto");
        assert_eq!(resp.status(), 200);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
