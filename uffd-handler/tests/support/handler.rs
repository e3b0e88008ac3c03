//! The `uffd-handler` binary, run as a process: started, signalled, waited for with a
//! deadline (killed if it passes), its standard error collected.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Generous: the machine running the tests may be loaded.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The built binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_uffd-handler")
}

/// A running handler.
pub struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

/// How it ended.
#[derive(Debug)]
pub struct Ended {
    /// Its exit status (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to standard error.
    pub stderr: String,
}

impl Ended {
    /// Panics unless it exited with `code` and its output mentions each of `words`.
    #[track_caller]
    pub fn assert(&self, code: i32, words: &[&str]) {
        assert_eq!(
            self.code,
            Some(code),
            "exit status; the handler said:\n{}",
            self.stderr
        );
        for w in words {
            assert!(
                self.stderr.contains(w),
                "the handler's output lacks {w:?}:\n{}",
                self.stderr
            );
        }
    }
}

/// Starts the handler on `socket` and `memory` (a path or a URL) with `options`; waits until
/// it listens (unless it exits first).
pub fn start(socket: &Path, memory: impl AsRef<OsStr>, options: &[&str]) -> Running {
    start_with_env(socket, memory, options, &[])
}

/// [`start`], with these environment variables set (the S3 configuration).
pub fn start_with_env(
    socket: &Path,
    memory: impl AsRef<OsStr>,
    options: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let running = start_no_wait_with_env(socket, memory, options, env);
    let started = Instant::now();
    while !socket.exists() {
        if started.elapsed() > DEADLINE || running.stderr().contains("refus") {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    running
}

/// Starts the handler without waiting for its socket.
pub fn start_no_wait(socket: &Path, memory: impl AsRef<OsStr>, options: &[&str]) -> Running {
    start_no_wait_with_env(socket, memory, options, &[])
}

fn start_no_wait_with_env(
    socket: &Path,
    memory: impl AsRef<OsStr>,
    options: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let mut child = Command::new(binary())
        .args(options)
        .arg(socket)
        .arg(memory)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the uffd-handler binary");
    let mut pipe = child.stderr.take().expect("piped stderr");
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Running {
        child,
        stderr,
        reader: Some(reader),
    }
}

impl Running {
    /// Its process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// What it wrote so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
        let r = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits until its output contains `text` (panics after the deadline).
    pub fn wait_for_output(&self, text: &str) {
        let started = Instant::now();
        while !self.stderr().contains(text) {
            assert!(
                started.elapsed() < DEADLINE,
                "the handler did not say {text:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for it to exit, within `within`; kills it and panics if it does not.
    pub fn wait(mut self, within: Duration) -> Ended {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the handler") {
                break status;
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the handler did not exit within {within:?}; it said:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ended {
            code: status.code(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
