//! What the handler's tests share: the userfaultfd crate's test support (memory types,
//! skipping, child processes), the release fixtures, a Firecracker player, the handler
//! binary run as a process, and the object-storage servers of userfaultfd-objstore's tests
//! (nginx and moto on loopback).
#![allow(dead_code, unused_imports)]

// Shared with userfaultfd's tests, whose rust-version (1.85) predates `is_multiple_of`; this
// crate's (1.88) makes clippy suggest it.
#[path = "../../../userfaultfd/tests/support/mod.rs"]
#[allow(clippy::manual_is_multiple_of)]
pub mod common;
pub mod handler;
#[path = "../../../objstore/tests/support/mod.rs"]
pub mod objstore;
pub mod releases;
pub mod vmm;

use std::path::{Path, PathBuf};

/// A directory of its own for one test, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    /// A new, empty directory named after `test` (and numbered: tests running at once may
    /// pass the same name).
    pub fn new(test: &str) -> TestDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "uffd-handler-{}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        TestDir(dir)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
