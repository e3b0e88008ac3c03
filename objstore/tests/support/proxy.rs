//! A fault-injecting HTTP proxy on 127.0.0.1, in front of a real server: answers 503s, resets
//! connections, stalls, truncates bodies, at set rates, and can play a store that is down.
//! Each request goes upstream on its own connection (`Connection: close`); the answer is
//! then relayed, or spoiled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rates of each fault, per request (they add up to at most 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    pub status_503: f64,
    pub reset: f64,
    pub stall: f64,
    pub truncate: f64,
}

/// How many of each fault the proxy injected.
#[derive(Debug, Default)]
pub struct Injected {
    pub requests: AtomicU64,
    pub status_503: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub truncations: AtomicU64,
}

struct State {
    upstream: u16,
    rates: Mutex<Rates>,
    stall: Duration,
    down: AtomicBool,
    /// The next this many requests stall before their answer (whatever the rates).
    stall_next: AtomicU64,
    /// Answers are relayed 16 KiB at a time, with this pause between pieces.
    trickle: Mutex<Option<Duration>>,
    injected: Injected,
    rng: Mutex<u64>,
    stop: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:upstream`, injecting `rates`; a stall lasts `stall`.
    pub fn start(upstream: u16, rates: Rates, stall: Duration, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream,
            rates: Mutex::new(rates),
            stall,
            down: AtomicBool::new(false),
            stall_next: AtomicU64::new(0),
            trickle: Mutex::new(None),
            injected: Injected::default(),
            rng: Mutex::new(seed | 1),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The store is down (every connection reset at once) or up.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Relaxed);
    }

    /// The next `n` requests stall (before their answer) for the stall time.
    pub fn stall_next(&self, n: u64) {
        self.state.stall_next.store(n, Relaxed);
    }

    /// Every answer from now on is relayed 16 KiB at a time, `pause` between pieces (`None`:
    /// at once).
    pub fn set_trickle(&self, pause: Option<Duration>) {
        *self.state.trickle.lock().unwrap() = pause;
    }

    pub fn set_rates(&self, rates: Rates) {
        *self.state.rates.lock().unwrap() = rates;
    }

    pub fn injected(&self) -> &Injected {
        &self.state.injected
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn random(s: &State) -> f64 {
    let mut x = s.rng.lock().unwrap();
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x >> 11) as f64 / (1u64 << 53) as f64
}

/// Closes with a TCP reset (SO_LINGER 0).
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a valid struct of the right size.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

enum Fault {
    None,
    Status503,
    Reset,
    Stall,
    StallHeaders,
    Truncate,
}

fn serve(s: &State, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        // One request head.
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let end = line == "\r\n";
            let lower = line.to_ascii_lowercase();
            if !lower.starts_with("connection:") && !end {
                head.extend_from_slice(line.as_bytes());
            }
            if end {
                break;
            }
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        s.injected.requests.fetch_add(1, Relaxed);
        if s.down.load(Relaxed) {
            reset(conn);
            return Ok(());
        }
        let rates = *s.rates.lock().unwrap();
        let r = random(s);
        let forced = s
            .stall_next
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let fault = if forced {
            Fault::StallHeaders
        } else if r < rates.status_503 {
            Fault::Status503
        } else if r < rates.status_503 + rates.reset {
            Fault::Reset
        } else if r < rates.status_503 + rates.reset + rates.stall {
            Fault::Stall
        } else if r < rates.status_503 + rates.reset + rates.stall + rates.truncate {
            Fault::Truncate
        } else {
            Fault::None
        };
        match fault {
            Fault::Status503 => {
                s.injected.status_503.fetch_add(1, Relaxed);
                conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
                continue;
            }
            Fault::Reset => {
                s.injected.resets.fetch_add(1, Relaxed);
                reset(conn);
                return Ok(());
            }
            _ => {}
        }
        let mut up = TcpStream::connect(("127.0.0.1", s.upstream))?;
        up.write_all(&head)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |p| p + 4);
        match fault {
            Fault::StallHeaders => {
                s.injected.stalls.fetch_add(1, Relaxed);
                std::thread::sleep(s.stall);
                conn.write_all(&answer)?;
            }
            Fault::Stall => {
                s.injected.stalls.fetch_add(1, Relaxed);
                // Half the stalls before the answer, half in the middle of the body.
                let cut = if random(s) < 0.5 {
                    0
                } else {
                    body_at + (answer.len() - body_at) / 2
                };
                conn.write_all(&answer[..cut])?;
                std::thread::sleep(s.stall);
                conn.write_all(&answer[cut..])?;
            }
            Fault::Truncate => {
                s.injected.truncations.fetch_add(1, Relaxed);
                let cut = body_at + (answer.len() - body_at) / 3;
                conn.write_all(&answer[..cut])?;
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => match *s.trickle.lock().unwrap() {
                None => conn.write_all(&answer)?,
                Some(pause) => {
                    conn.write_all(&answer[..body_at])?;
                    for piece in answer[body_at..].chunks(16 << 10) {
                        std::thread::sleep(pause);
                        conn.write_all(piece)?;
                    }
                }
            },
        }
        // The upstream said Connection: close; so does the relayed answer.
        return Ok(());
    }
}
