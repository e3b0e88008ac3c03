//! nginx (Debian's nginx-light) serving a directory on 127.0.0.1: its own configuration in a
//! temporary directory, its own port, in the foreground, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{free_port, machine_lacks, wait_listening, TempDir};

pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// With TLS: the certificate chain and key files.
    tls: Option<(PathBuf, PathBuf)>,
    /// A port on 127.0.0.1 to proxy every request to (the Host header kept), instead of
    /// serving `www()`.
    upstream: Option<u16>,
    /// Worker processes: 1 runs in the foreground process itself (no master), which a kill
    /// stops at once; more run under a master, as nginx is deployed.
    workers: usize,
}

const BINARY: &str = "/usr/sbin/nginx";

impl Nginx {
    /// nginx serving the files of `www()`; `None` (a skip notice printed) when nginx is not
    /// installed.
    #[track_caller]
    pub fn start() -> Option<Nginx> {
        Nginx::start_with(None, None)
    }

    /// nginx serving `www()` over TLS only (`listen ... ssl`) with the certificate chain
    /// `cert` and its key `key`.
    #[track_caller]
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Nginx> {
        Nginx::start_with(Some((cert.to_path_buf(), key.to_path_buf())), None)
    }

    /// nginx terminating TLS for the plain-http server on 127.0.0.1:`upstream` (moto): the
    /// request, its Host header included (a SigV4 signature covers it), goes upstream as is.
    #[track_caller]
    pub fn start_tls_proxy(cert: &Path, key: &Path, upstream: u16) -> Option<Nginx> {
        Nginx::start_with(
            Some((cert.to_path_buf(), key.to_path_buf())),
            Some(upstream),
        )
    }

    /// nginx serving `www()` as deployed: a master process and `workers` worker processes
    /// (Debian's `worker_processes auto` is one per CPU). For the benchmark: the tests use one
    /// process, which sends from one CPU.
    #[allow(dead_code)] // the benchmark's; each test binary compiles this module
    #[track_caller]
    pub fn start_workers(workers: usize) -> Option<Nginx> {
        let mut n = Nginx::configure(None, None, workers.max(1))?;
        n.spawn();
        Some(n)
    }

    /// [`start_workers`](Self::start_workers) over TLS, as [`start_tls`](Self::start_tls).
    #[allow(dead_code)] // the benchmark's
    #[track_caller]
    pub fn start_tls_workers(cert: &Path, key: &Path, workers: usize) -> Option<Nginx> {
        let tls = Some((cert.to_path_buf(), key.to_path_buf()));
        let mut n = Nginx::configure(tls, None, workers.max(1))?;
        n.spawn();
        Some(n)
    }

    #[track_caller]
    fn start_with(tls: Option<(PathBuf, PathBuf)>, upstream: Option<u16>) -> Option<Nginx> {
        let mut n = Nginx::configure(tls, upstream, 1)?;
        n.spawn();
        Some(n)
    }

    #[track_caller]
    fn configure(
        tls: Option<(PathBuf, PathBuf)>,
        upstream: Option<u16>,
        workers: usize,
    ) -> Option<Nginx> {
        if !Path::new(BINARY).exists() {
            machine_lacks("nginx (Debian package nginx-light)");
            return None;
        }
        let dir = TempDir::new("nginx");
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Some(Nginx {
            child: None,
            port: free_port(),
            dir,
            tls,
            upstream,
            workers,
        })
    }

    /// The directory nginx serves.
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// `http://127.0.0.1:port/name`, or `https://` with TLS.
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{name}", self.port)
    }

    fn spawn(&mut self) {
        let d = self.dir.path().display();
        let listen = match &self.tls {
            None => format!("listen 127.0.0.1:{};", self.port),
            Some((cert, key)) => format!(
                "listen 127.0.0.1:{} ssl; ssl_certificate {}; ssl_certificate_key {};",
                self.port,
                cert.display(),
                key.display()
            ),
        };
        let location = match self.upstream {
            None => String::new(),
            Some(port) => format!(
                "proxy_pass http://127.0.0.1:{port}; proxy_set_header Host $http_host; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\";"
            ),
        };
        let processes = if self.workers > 1 {
            format!("master_process on;\nworker_processes {};", self.workers)
        } else {
            "master_process off;\nworker_processes 1;".to_string()
        };
        let conf = format!(
            "daemon off;\n{processes}\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n\
             keepalive_requests 100000;\n sendfile on;\n\
             server {{ {listen} root {d}/www; location / {{ {location} }} }}\n}}\n"
        );
        let path = self.dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(BINARY)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx");
        self.child = Some(child);
        assert!(
            wait_listening(self.port),
            "nginx did not listen on 127.0.0.1:{}: {}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
        );
    }

    /// Stops nginx (connections are refused until [`restart`](Self::restart)).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.workers > 1 {
                // A master stops its workers on SIGTERM (a SIGKILL would leave them running).
                // SAFETY: signals our own child, not yet waited for.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Starts nginx again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
