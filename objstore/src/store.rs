//! Where an object lives: one URL answering `Range` ([`HttpStore`]), or a key in an
//! S3-compatible bucket, signed with SigV4 ([`S3Store`]). A store only builds and sends one
//! range `GET`; checking the answer, retries and hedging are [`crate::remote`]'s.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::OpenError;
use crate::sigv4::{self, Credentials};

/// Builds the range request for an object (sans I/O: [`crate::remote`] sends it).
pub(crate) trait Store: Send + Sync {
    /// The object's name in errors and progress lines (the URL, `s3://bucket/key`).
    fn name(&self) -> &str;

    /// Whether requests go over `https`.
    #[cfg_attr(not(feature = "https"), allow(dead_code))]
    fn https(&self) -> bool {
        self.url().starts_with("https://")
    }

    /// The URL requests go to (with a presigned URL's query: never print it).
    fn url(&self) -> &str;

    /// The `GET` of `range` (`Range: bytes=a-b`), with `If-Match: etag` when given.
    fn request(&self, range: &Range<u64>, if_match: Option<&str>) -> Request;

    /// Sends the `GET` of `range` with `agent`. (ureq's error is large; it is classified at
    /// once, one per request.)
    #[allow(clippy::result_large_err)]
    fn get(
        &self,
        agent: &ureq::Agent,
        range: &Range<u64>,
        if_match: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let request = self.request(range, if_match);
        let mut req = agent.get(&request.url);
        for (name, value) in &request.headers {
            req = req.set(name, value);
        }
        req.call()
    }
}

/// A `GET`: the URL and the headers to send (besides those every request carries).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

fn range_header(range: &Range<u64>) -> String {
    format!("bytes={}-{}", range.start, range.end - 1)
}

/// One object at a URL: any server that answers `Range` (nginx, a CDN, an S3 presigned URL).
#[derive(Debug)]
pub(crate) struct HttpStore {
    url: String,
}

impl HttpStore {
    pub(crate) fn new(url: &str) -> HttpStore {
        HttpStore { url: url.into() }
    }
}

impl Store for HttpStore {
    fn name(&self) -> &str {
        // A presigned URL's query holds a signature: never print it.
        self.url.split('?').next().unwrap_or(&self.url)
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn request(&self, range: &Range<u64>, if_match: Option<&str>) -> Request {
        let mut headers = vec![("Range", range_header(range))];
        if let Some(etag) = if_match {
            headers.push(("If-Match", etag.to_string()));
        }
        Request {
            url: self.url.clone(),
            headers,
        }
    }
}

/// Where and how to reach an S3-compatible store. [`S3Config::from_env`] reads it the way
/// the AWS tools do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct S3Config {
    /// `scheme://host[:port]` of the store. Default: `https://s3.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The signing region. Default `us-east-1`.
    pub region: String,
    /// Access key id; `None` sends unsigned requests (a public bucket).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials (`x-amz-security-token`).
    pub session_token: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`, what local stores want) instead of
    /// virtual-hosted (`bucket.endpoint/key`). Default: path-style for an endpoint that is an
    /// IP address or `localhost`, virtual-hosted otherwise.
    pub path_style: Option<bool>,
}

impl Default for S3Config {
    /// AWS itself in `us-east-1`, unsigned requests: set the fields that differ.
    fn default() -> S3Config {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            path_style: None,
        }
    }
}

impl S3Config {
    /// From the environment, as the AWS CLI and SDKs read it: `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; and `AWS_S3_FORCE_PATH_STYLE` for the
    /// addressing style: `true`, `1`, `yes`, `on` or `false`, `0`, `no`, `off`, in any case.
    /// An empty variable counts as unset.
    ///
    /// # Errors
    ///
    /// `OpenError::Config` naming the variable and its value: `AWS_S3_FORCE_PATH_STYLE`
    /// holds something else (a typo must not silently pick the other addressing style), or
    /// a variable is not UTF-8.
    pub fn from_env() -> Result<S3Config, OpenError> {
        S3Config::from_lookup(|name| match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(OpenError::Config(format!(
                "{name}={}: not UTF-8",
                v.to_string_lossy()
            ))),
        })
    }

    /// As [`from_env`](Self::from_env), with `lookup` for the environment.
    fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, OpenError>,
    ) -> Result<S3Config, OpenError> {
        let var = |name: &str| Ok::<_, OpenError>(lookup(name)?.filter(|v| !v.is_empty()));
        let path_style = match var("AWS_S3_FORCE_PATH_STYLE")? {
            Some(v) => Some(parse_bool("AWS_S3_FORCE_PATH_STYLE", &v)?),
            None => None,
        };
        Ok(S3Config {
            endpoint: var("AWS_ENDPOINT_URL_S3")?.or(var("AWS_ENDPOINT_URL")?),
            region: var("AWS_REGION")?
                .or(var("AWS_DEFAULT_REGION")?)
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN")?,
            path_style,
        })
    }
}

/// A boolean environment variable: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`, in any
/// case; anything else is an error naming the variable and the value.
fn parse_bool(name: &str, value: &str) -> Result<bool, OpenError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(OpenError::Config(format!(
            "{name}={value:?}: not a boolean (true, 1, yes, on, false, 0, no, off)"
        ))),
    }
}

/// A key in an S3-compatible bucket, each request signed with SigV4.
#[derive(Debug)]
pub(crate) struct S3Store {
    name: String,
    url: String,
    host: String,
    path: String,
    region: String,
    creds: Option<Credentials>,
}

impl S3Store {
    pub(crate) fn new(bucket: &str, key: &str, config: &S3Config) -> Result<S3Store, OpenError> {
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
        let (scheme, host) = endpoint
            .split_once("://")
            .ok_or_else(|| OpenError::Config(format!("endpoint {endpoint:?} has no scheme")))?;
        let host = host.trim_end_matches('/');
        if !(scheme == "http" || scheme == "https") || host.is_empty() || host.contains('/') {
            return Err(OpenError::Config(format!(
                "endpoint {endpoint:?} is not http(s)://host[:port]"
            )));
        }
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let local = bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok();
        let path_style = config.path_style.unwrap_or(local);
        let key_path = sigv4::uri_encode(key, true);
        let (host, path) = if path_style {
            (host.to_string(), format!("/{bucket}/{key_path}"))
        } else {
            (format!("{bucket}.{host}"), format!("/{key_path}"))
        };
        let creds = match (&config.access_key_id, &config.secret_access_key) {
            (Some(a), Some(s)) => Some(Credentials {
                access_key: a.clone(),
                secret_key: s.clone(),
                session_token: config.session_token.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(OpenError::Config(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
                ))
            }
        };
        Ok(S3Store {
            name: format!("s3://{bucket}/{key}"),
            url: format!("{scheme}://{host}{path}"),
            host,
            path,
            region: config.region.clone(),
            creds,
        })
    }
}

impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn request(&self, range: &Range<u64>, if_match: Option<&str>) -> Request {
        let mut out = vec![("Host", self.host.clone()), ("Range", range_header(range))];
        if let Some(etag) = if_match {
            out.push(("If-Match", etag.to_string()));
        }
        if let Some(creds) = &self.creds {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let date = sigv4::timestamp(now);
            let mut signed = vec![
                ("host", self.host.clone()),
                ("x-amz-content-sha256", sigv4::EMPTY_SHA256.to_string()),
                ("x-amz-date", date.clone()),
            ];
            if let Some(token) = &creds.session_token {
                signed.push(("x-amz-security-token", token.clone()));
                out.push(("x-amz-security-token", token.clone()));
            }
            let auth = sigv4::authorization(
                creds,
                &date,
                &self.region,
                "s3",
                &sigv4::Request {
                    method: "GET",
                    path: &self.path,
                    query: "",
                    headers: signed,
                    payload_sha256: sigv4::EMPTY_SHA256,
                },
            );
            out.push(("x-amz-content-sha256", sigv4::EMPTY_SHA256.to_string()));
            out.push(("x-amz-date", date));
            out.push(("Authorization", auth));
        }
        Request {
            url: self.url.clone(),
            headers: out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, path_style: Option<bool>) -> S3Config {
        S3Config {
            endpoint: endpoint.map(str::to_string),
            region: "eu-west-1".into(),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("SECRET".into()),
            session_token: None,
            path_style,
        }
    }

    #[test]
    fn addressing() {
        let s = S3Store::new("b", "vm 1/mem", &config(None, None)).unwrap();
        assert_eq!(s.url, "https://b.s3.eu-west-1.amazonaws.com/vm%201/mem");
        assert_eq!(s.host, "b.s3.eu-west-1.amazonaws.com");
        assert_eq!(s.name(), "s3://b/vm 1/mem");
        let s = S3Store::new("b", "k", &config(Some("http://127.0.0.1:9000/"), None)).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:9000/b/k");
        assert_eq!(s.host, "127.0.0.1:9000");
        let s = S3Store::new("b", "k", &config(Some("https://minio.lan"), Some(true))).unwrap();
        assert_eq!(s.url, "https://minio.lan/b/k");
        let s = S3Store::new(
            "b",
            "k",
            &config(Some("http://localhost:9000"), Some(false)),
        )
        .unwrap();
        assert_eq!(s.url, "http://b.localhost:9000/k");
    }

    #[test]
    fn bad_configuration_is_named() {
        let e = S3Store::new("b", "k", &config(Some("127.0.0.1:9000"), None)).unwrap_err();
        assert!(e.to_string().contains("has no scheme"), "{e}");
        let e = S3Store::new("b", "k", &config(Some("ftp://x"), None)).unwrap_err();
        assert!(e.to_string().contains("not http(s)://host[:port]"), "{e}");
        let mut c = config(None, None);
        c.secret_access_key = None;
        let e = S3Store::new("b", "k", &c).unwrap_err();
        assert!(e.to_string().contains("must be set together"), "{e}");
    }

    #[test]
    fn booleans_from_the_environment() {
        let with = |value: &'static str| {
            S3Config::from_lookup(move |name| {
                Ok((name == "AWS_S3_FORCE_PATH_STYLE").then(|| value.to_string()))
            })
            .map(|c| c.path_style)
        };
        for v in ["true", "TRUE", "True", "1", "yes", "YES", "on", "On"] {
            assert_eq!(with(v).unwrap(), Some(true), "{v}");
        }
        for v in ["false", "FALSE", "0", "no", "No", "off", "OFF"] {
            assert_eq!(with(v).unwrap(), Some(false), "{v}");
        }
        assert_eq!(with("").unwrap(), None);
        for v in ["ture", "2", "y", "enabled"] {
            let e = with(v).unwrap_err().to_string();
            assert!(
                e.contains("AWS_S3_FORCE_PATH_STYLE") && e.contains(&format!("{v:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn presigned_url_name_hides_the_signature() {
        let h = HttpStore::new("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc");
        assert_eq!(h.name(), "https://b.s3.amazonaws.com/k");
    }
}
