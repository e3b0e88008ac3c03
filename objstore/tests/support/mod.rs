//! Shared by the objstore tests: real servers on loopback (nginx, moto), a fault-injecting
//! proxy, snapshot files whose every byte is known, and a `serve` restore that checks them.
#![allow(dead_code)]

pub mod nginx;
pub mod proxy;
pub mod restore;
pub mod s3;
pub mod tls;

use std::path::{Path, PathBuf};

/// Whether strict mode is on (`UFFD_TEST_STRICT=1`, set by ci/objstore and ci/test).
pub fn strict() -> bool {
    std::env::var_os("UFFD_TEST_STRICT").is_some_and(|v| v == "1")
}

/// Reports a skip because this machine lacks something (a server program): fails in strict
/// mode.
#[track_caller]
pub fn machine_lacks(what: &str) {
    if strict() {
        panic!("UFFD_TEST_STRICT=1 and this machine lacks {what} (bash ci/objstore installs it)");
    }
    eprintln!(
        "SKIPPED at {}: machine lacks {what} (bash ci/objstore installs it)",
        std::panic::Location::caller()
    );
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "objstore-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The 8-byte word at byte `offset` of snapshot version `version`: every word differs, and
/// so does every version.
pub fn word(version: u64, offset: u64) -> u64 {
    let mut x = offset ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29) | 1
}

/// The bytes of snapshot `version` in `[start, start + out.len())` (8-aligned start).
pub fn expected(version: u64, start: u64, out: &mut [u8]) {
    assert_eq!(start % 8, 0);
    for (i, w) in out.chunks_mut(8).enumerate() {
        let v = word(version, start + 8 * i as u64).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

/// Writes snapshot `version` of `len` bytes to `path` (atomically: a temporary file renamed
/// over it, as a store replaces an object).
pub fn write_snapshot(path: &Path, version: u64, len: u64) {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        expected(version, at, &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
    f.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A free TCP port on 127.0.0.1 (bound and released: the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (up to 20 s).
pub fn wait_listening(port: u16) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Waits (30 s at most) until `done`; `state` says where things stood on a timeout.
#[track_caller]
pub fn wait_until(done: impl Fn() -> bool, state: impl Fn() -> String) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < until, "timed out: {}", state());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
