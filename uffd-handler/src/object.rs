//! Guest memory in object storage: the command line's options as the object source's
//! [`Options`], opening the object (and opening it again when the guest's page size turns out
//! larger), and its progress line.
//!
//! The object is opened before the socket is made, so that a missing object, refused
//! credentials or an unreachable store end the run before Firecracker is told anything, and
//! so that the recorded working set starts arriving while Firecracker is still loading the
//! VM state. Answers to the page server are whole pages of the guest's page size, which only
//! the handshake tells: the object is opened with the page size of the working set being
//! replayed (a record of hugetlbfs memory is in 2 MiB pages), else the base page size, and
//! opened again after the handshake if the guest's pages are larger (hugetlbfs without a
//! record: one more 1-byte request; the chunks fetched so far are fetched again, or read
//! from --cache-dir).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use userfaultfd::serve::WorkingSet;
use userfaultfd_objstore::{ObjectSource, Options};

use crate::cli::Cli;
use crate::log;
use crate::signals::{self, Signals, Woken};

/// Why [`Object::open`] returned no object.
pub enum Opening {
    /// It failed: why.
    Failed(String),
    /// A stop signal arrived first.
    Signal(i32),
}

/// The progress line's period when `--progress` is not given.
const PROGRESS_DEFAULT: Duration = Duration::from_secs(10);

/// An opened object and the page size its answers are made of.
pub struct Object {
    /// The object source.
    pub source: Arc<ObjectSource>,
    /// Its serving granularity (`Options::page_size`).
    pub page_size: u64,
    url: String,
    options: Options,
}

impl Object {
    /// Opens `url` with the command line's options, fetching `replay`'s pages first. The
    /// first request is retried until `--fetch-deadline` while the store is unreachable: a
    /// stop signal meanwhile ends the wait (`Opening::Signal`; the run then exits).
    pub fn open(
        cli: &Cli,
        url: &str,
        replay: Option<&WorkingSet>,
        signals: &Signals,
    ) -> Result<Object, Opening> {
        let mut options = options(cli);
        if let Some(ws) = replay {
            options.page_size = ws.page_size() as usize;
            options.working_set_from(ws);
        }
        log!("opening the memory object {url}");
        let (done, wake) = UnixStream::pair().map_err(|e| Opening::Failed(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let url = url.to_string();
        std::thread::Builder::new()
            .name("open-object".into())
            .spawn(move || {
                let _ = tx.send(Object::open_with(&url, options));
                drop(done); // wakes the poll below: end of file
            })
            .map_err(|e| Opening::Failed(format!("starting a thread to open it: {e}")))?;
        match signals::wait(&[wake.as_raw_fd()], signals, None) {
            Woken::Signal(s) => Err(Opening::Signal(s)),
            Woken::Ready | Woken::Timeout => rx
                .recv()
                .map_err(|_| Opening::Failed("the opening thread panicked".into()))?
                .map_err(Opening::Failed),
        }
    }

    fn open_with(url: &str, options: Options) -> Result<Object, String> {
        let source = userfaultfd_objstore::open(url, &options).map_err(|e| e.to_string())?;
        Ok(Object {
            source,
            page_size: options.page_size as u64,
            url: url.to_string(),
            options,
        })
    }

    /// The same object, answering in pages of `page_size` (dropping this one).
    pub fn reopen(self, page_size: u64) -> Result<Object, String> {
        let Object {
            url, mut options, ..
        } = self;
        options.page_size = page_size as usize;
        // A whole number of the new pages per chunk.
        options.chunk_size = options.chunk_size.next_multiple_of(page_size as usize);
        Object::open_with(&url, options)
    }

    /// The period of the progress line (zero: only at the end).
    pub fn progress_every(cli: &Cli) -> Duration {
        cli.progress.unwrap_or(PROGRESS_DEFAULT)
    }

    /// What the session line says about the object.
    pub fn describe(&self) -> String {
        let o = &self.options;
        format!(
            "object {} ({} bytes, etag {}), chunks of {} bytes, parallelism {}, cache {}",
            self.url,
            userfaultfd::serve::PageSource::len(&*self.source),
            self.source.etag().unwrap_or("none"),
            o.chunk_size,
            o.parallelism,
            o.cache_dir.as_ref().map_or("off".to_string(), |d| format!(
                "{} (budget {} bytes, read with {})",
                d.display(),
                o.cache_budget,
                if o.cache_mapping { "mmap" } else { "pread" }
            )),
        )
    }
}

/// The object source's options from the command line (the page size and working set are the
/// caller's).
fn options(cli: &Cli) -> Options {
    let mut o = Options::default();
    if let Some(v) = cli.chunk_size {
        o.chunk_size = v;
    }
    if let Some(v) = cli.parallelism {
        o.parallelism = v.into();
    }
    o.cache_dir.clone_from(&cli.cache_dir);
    o.cache_mapping = cli.backend != Some(crate::cli::SourceKind::Pread);
    o.ca_certificates.clone_from(&cli.ca_file);
    if let Some(v) = cli.cache_budget {
        o.cache_budget = v as u64;
    }
    if let Some(v) = cli.fetch_timeout {
        o.request_timeout = v;
    }
    if let Some(v) = cli.fetch_deadline {
        o.deadline = v;
    }
    o.background = cli.background_fill;
    // The handler prints the progress line itself, prefixed like its other lines.
    o.progress = None;
    o
}
