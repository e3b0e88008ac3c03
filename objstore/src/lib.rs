//! Serve `userfaultfd` page-server snapshots straight from object storage.
//!
//! Fleets keep VM and process snapshots in object storage. This crate is the layer between
//! the store and [`userfaultfd::serve`]: an [`ObjectSource`] is a
//! [`PageSource`](userfaultfd::serve::PageSource) that fetches the object in large chunks
//! with range requests, several in flight, one fetch per chunk however many faults land in
//! it, and answers a fault as soon as *its page* has arrived.
//!
//! ```no_run
//! use userfaultfd::serve::{Region, Server};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (uffd, region): (userfaultfd::Uffd, Region) = unimplemented!();
//! let mut options = userfaultfd_objstore::Options::default();
//! options.chunk_size = 4 << 20;
//! options.parallelism = 4;
//! let source = userfaultfd_objstore::open("s3://snapshots/vm-42/memory", &options)?;
//! // SAFETY: the region holds no Rust object. Chunks are placed as they arrive (see below).
//! let server = unsafe {
//!     Server::builder()
//!         .region(region)
//!         .place_arrived(true)
//!         .start(uffd, source.clone())?
//! };
//! // ... the guest runs ...
//! let finished = server.stop();
//! eprintln!("{}", source.progress_line());
//! # Ok(()) }
//! ```
//!
//! # Where the object lives
//!
//! | URL | store |
//! |---|---|
//! | `http://host[:port]/path`, `https://...` | any server that answers `Range` (nginx, a CDN, an S3 presigned URL) |
//! | `s3://bucket/key` | an S3-compatible store, requests signed with SigV4, configured as the AWS tools are ([`S3Config::from_env`]: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_S3_FORCE_PATH_STYLE`) |
//!
//! The HTTP client is `ureq`: blocking, pooled connections, no async runtime (the page
//! server's workers are threads). `https` needs the default cargo feature `https` (rustls).
//! Over plain `http://` (a store on the host's network, a local S3-compatible server), the
//! chunks' range requests go through a small HTTP/1.1 client of this crate instead, which
//! reads a body straight from the socket into the source's memory, 256 KiB at a time, on
//! kept-alive connections: ureq receives a body 8 KiB at a time and copies it once more, and
//! a cold restore is CPU-bound (over loopback, a random-order restore took a third less time
//! this way, and half the CPU; BENCHMARKS.md). It reads responses whose body
//! length is given (`Content-Length`), which range responses have; a store that answers
//! otherwise (a chunked body, a redirect) is from then on asked through ureq. Opening an
//! object (its length and ETag) always goes through ureq.
//!
//! # Trust for https
//!
//! A server's certificate must chain to a root in Mozilla's set compiled in (`webpki-roots`;
//! the system's `/etc/ssl/certs` is not read) or to a certificate of one extra PEM file:
//! [`Options::ca_certificates`] when set, else the file the standard variable
//! `SSL_CERT_FILE` names (read by [`open`] for an `https` object or endpoint). The file
//! *adds* roots — the private CA of an on-premises store — it never replaces the public ones.
//! A file that cannot be read or holds no certificate fails [`open`] (`OpenError::Tls`). A
//! certificate that does not verify (unknown issuer, expired, another name) fails at once
//! with [`Cause::Tls`]: it is not retried until the deadline, since waiting does not change
//! a certificate.
//!
//! # The chunk cache
//!
//! [`open`] first asks for byte 0 (`Range: bytes=0-0`) to learn the object's length and
//! ETag. The object's bytes then land in an anonymous mapping of its size (`MAP_NORESERVE`:
//! only what arrives takes memory, and the page server copies from it with `UFFDIO_COPY`),
//! with a bitmap of the pages whose bytes have all arrived.
//!
//! - A fault on a page that has not arrived queues its chunk ([`Options::chunk_size`]) for
//!   the [`Options::parallelism`] fetch threads, starting *at the faulting page*: the part
//!   from the page to the chunk's end is one request, the part before it another, next in
//!   line. The fault is answered as soon as its page's bytes are in (the server's
//!   `PageSource::fetch` contract allows a shorter prefix; it asks again for the rest).
//! - A chunk is fetched once (single flight): faults into a chunk in flight wait for their
//!   page, they send nothing.
//! - Faults in consecutive chunks read ahead [`Options::parallelism`] chunks; a fault on a
//!   read-ahead chunk moves the window on, so a sequential restore stays behind it.
//! - A recorded working set ([`Options::working_set`]) is fetched in its order from the
//!   start, ahead of everything but faults; [`Options::background`] fetches the rest
//!   behind it, on threads of its own at the lowest CPU priority (nice 19), which start a
//!   chunk only while no fault or working-set fetch waits. The fetches faults wait for run
//!   at the priority of the thread that called [`open`], never at nice 19: a fault on a
//!   chunk the fill is fetching takes the rest of it over (the `background` module's docs
//!   say why threads of their own: a thread cannot undo a lowered priority unprivileged).
//! - Each chunk is reported to the page server as it arrives whole, or is found intact in
//!   the disk cache ([`PageSource::arrivals`](userfaultfd::serve::PageSource::arrivals)):
//!   with [`ServerBuilder::place_arrived`](userfaultfd::serve::ServerBuilder::place_arrived)
//!   the server places it at once, so the other pages of a chunk fetched for one fault, or
//!   read ahead, do not fault one by one (the server reads them with
//!   `PageSource::fetch_held`, which never fetches nor reads ahead). A fetched chunk is
//!   kept here until the guest has all of it, so placing it moves the memory into the guest
//!   rather than adding any; with a disk cache, every chunk found intact is placed, the
//!   whole cached object. On random access over loopback it took a cold restore in a
//!   little over half the time of faults alone, within 2x of a restore from a local file,
//!   and a warm one as fast as from a local file or faster (BENCHMARKS.md). The server
//!   places a page only when one report covers it whole: for memory in 2 MiB pages, open
//!   the source with that [`Options::page_size`] (chunks are then at least as large), as
//!   `uffd-handler` does.
//!
//! # Failures
//!
//! | what happens | what the source does |
//! |---|---|
//! | 5xx, 408, 429, a connection refused or reset, a body that ends early | retried from the last byte received, after an exponential backoff with full jitter ([`Options::backoff_initial`], [`Options::backoff_max`]) |
//! | no response or no body bytes for [`Options::request_timeout`] | the request is abandoned and retried the same way |
//! | no response after [`Options::hedge_after`] | a second, identical request on another connection; the first to answer wins |
//! | still failing, or still arriving (a store that trickles its bytes), after [`Options::deadline`] from the range's first attempt | the fault fails with a [`FetchError`] (`Cause::Deadline`, the last failure): the page server's `ErrorPolicy` decides (stop with faults blocked, or `SIGBUS`). Until then faults wait: a store that is down and comes back costs time, not the guest |
//! | the object was replaced (`If-Match` refused with 412, another ETag, another length) | fails at once with `Cause::Changed`: no byte of the new object is served, so the memory never mixes pages of two versions |
//! | another 4xx (403, 404, ...), a wrong `Content-Range`, no `Range` support | fails at once (`Cause::Refused`, `Cause::Invalid`) |
//! | a TLS certificate that does not verify, no TLS version or cipher suite in common | fails at once (`Cause::Tls`, naming the certificate problem) |
//!
//! A page is served only from bytes that arrived for it: never zeros in place of data that
//! could not be fetched. Every error's text names the object, the byte range, the attempts
//! and the cause.
//!
//! # The disk cache
//!
//! With [`Options::cache_dir`], each chunk fetched whole is also written to a sparse file in
//! that directory, keyed by the object's name, ETag, length and the chunk size, with a map of
//! the chunks present (made durable with `fdatasync` before it is written, when the object is
//! complete and when the source is dropped). The next restore of the same object version on
//! this host answers faults on those chunks from the file: nothing from the network but the
//! first 1-byte request that checks the ETag. A changed object (another ETag) deletes the old
//! version's files. The directory holds at most [`Options::cache_budget`] bytes: opening an
//! object deletes the least recently opened objects' files to make room, and chunks past the
//! budget are not written.
//!
//! Each cached chunk has a checksum (XXH64, in the map). A chunk is verified once per
//! source, read whole (`pread`) and hashed: by a thread that checks the cached chunks ahead
//! of the faults from `open` on (the working set's first), or by the first fault that gets
//! there before it. A chunk whose checksum does not match is never served: it is dropped
//! from the cache, fetched again from the store and written again
//! ([`Stats::cache_discarded`]). Faults on a verified chunk are answered from a read-only
//! mapping of the cache file, unhashed: the page server's `UFFDIO_COPY` copies straight
//! from the page cache into the guest, as from a local snapshot file, and pages it placed
//! leave the process's mapping again (`MADV_DONTNEED`; the page cache keeps them). With
//! [`Options::cache_mapping`] off, or where the file cannot be mapped, a fault is one `pread`
//! of the pages asked for instead.
//!
//! A failing cache disk never fails a restore: a read error turns the cache off
//! ([`ObjectSource::cache_error`]) and the chunks come from the network. Only the kernel
//! reads the mapping, so a page it cannot read (a disk error, the file cut short) fails that
//! copy with `EFAULT`, never `SIGBUS` in the handler; the page server tells the source
//! ([`PageSource::unreadable`](userfaultfd::serve::PageSource::unreadable)), which turns the
//! cache off, and asks again. (On huge pages before Linux 5.14 the page server reads a byte
//! per page of a copy's source to map it, which a disk error turns into `SIGBUS`: there,
//! turn [`Options::cache_mapping`] off.)
//!
//! # Memory
//!
//! Bytes fetched from the network land in the source's mapping, and stay there until the
//! page server has placed every page of their chunk: the server tells the source what it
//! placed ([`PageSource::placed`](userfaultfd::serve::PageSource::placed)), and a chunk
//! placed whole is dropped (`MADV_DONTNEED`; [`Stats::chunks_released`]). So a restore
//! does not hold the guest's memory twice: the source keeps only chunks in flight and
//! chunks the guest has not touched in full (with fault-around, the pages near those it
//! touched are placed with them). A page of a dropped chunk that the server asks for again
//! (a duplicate fault on a page it placed, or a page the process discarded without the
//! server being told: see `placed`) is answered with zeros, without a fetch
//! ([`Stats::asked_after_release`]). Used without a page server (calling `fetch` directly),
//! nothing is dropped. Bytes read from the disk cache are never kept. Serving the same bytes
//! of the object into several regions at once needs [`Options::release_placed`] off.
//!
//! The page bitmap and the per-chunk state (a few bytes per chunk) are sized by the length
//! the store reports, and allocated zeroed without being written: like the buffer, they take
//! memory only where chunks arrive. A length no machine can hold (a broken or hostile store)
//! fails [`open`] with an error naming the object and the length — the allocation is
//! fallible, never an abort.
//!
//! # Wiring into a handler
//!
//! A handler that takes a memory file takes a URL the same way: [`open`] for `http://`,
//! `https://` and `s3://bucket/key`, the result passed where a
//! [`MappedFile`](userfaultfd::serve::MappedFile) would be. The workspace's `uffd-handler`
//! (Firecracker's page-fault handler) does so; its flags map to the options:
//!
//! | `uffd-handler` flag | [`Options`] field | default |
//! |---|---|---|
//! | `--chunk-size BYTES` | [`chunk_size`](Options::chunk_size) | 4 MiB |
//! | `--parallelism N` | [`parallelism`](Options::parallelism) | 4 |
//! | `--cache-dir DIR` | [`cache_dir`](Options::cache_dir) | none |
//! | `--cache-budget BYTES` | [`cache_budget`](Options::cache_budget) | 64 GiB |
//! | `--backend mmap\|pread` (with `--cache-dir`) | [`cache_mapping`](Options::cache_mapping) | `mmap` (on) |
//! | `--fetch-timeout SECONDS` | [`request_timeout`](Options::request_timeout) | 10 s |
//! | `--fetch-deadline SECONDS` | [`deadline`](Options::deadline) | 120 s |
//! | `--background-fill` | [`background`](Options::background) (and the server's `background_fill`) | off |
//! | `--replay FILE` | [`Options::working_set_from`] and [`page_size`](Options::page_size) from the record (and the server's `replay`) | none |
//! | `--ca-file FILE` (else `SSL_CERT_FILE`) | [`ca_certificates`](Options::ca_certificates) | none |
//! | `--progress SECONDS` | [`ObjectSource::progress_line`], printed by the handler until [`ObjectSource::complete`] | 10 s |
//!
//! Two things differ from a local file. Guest memory on hugetlbfs needs
//! [`page_size`](Options::page_size) set to 2 MiB (answers to the server are whole pages).
//! And a working-set record's identity should come from [`ObjectSource::snapshot_id`]
//! (length and ETag) rather than `SnapshotId::sample`, which would fetch 66 chunks to hash
//! them.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod background;
mod cache;
mod cache_mapping;
mod checksum;
mod error;
mod fetch;
mod http1;
mod memory;
mod options;
mod queue;
mod remote;
mod shared;
mod sigv4;
mod source;
mod stats;
mod store;
#[cfg(feature = "https")]
mod tls;

use std::sync::Arc;

pub use error::{Cause, FetchError, OpenError};
pub use options::{Options, MAX_PARALLELISM};
pub use source::ObjectSource;
pub use stats::Stats;
pub use store::S3Config;

use http1::Http1;
use remote::{Backoff, Direct, Failure, Remote};
use std::sync::atomic::AtomicBool;
use store::{HttpStore, S3Store, Store};

/// Opens the object at `url` (`http://`, `https://` or `s3://bucket/key`) for serving: one
/// request learns its length and ETag, then the fetch threads start (and the working set,
/// if given, starts arriving). `s3://` takes its configuration from the environment
/// ([`S3Config::from_env`]); [`open_s3`] takes it explicitly.
///
/// The result is a [`PageSource`](userfaultfd::serve::PageSource) for
/// [`ServerBuilder::start`](userfaultfd::serve::ServerBuilder::start) (an
/// `Arc<ObjectSource>` coerces to `Arc<dyn PageSource>`).
///
/// # Errors
///
/// The URL or an option is invalid, the S3 configuration is incomplete, or the first
/// request failed (retried until [`Options::deadline`] when transient).
pub fn open(url: &str, options: &Options) -> Result<Arc<ObjectSource>, OpenError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = split_s3(rest, url)?;
        return open_s3(bucket, key, &S3Config::from_env()?, options);
    }
    let https = url.starts_with("https://");
    if !(url.starts_with("http://") || https) {
        return Err(OpenError::Url(format!(
            "{url:?}: not an http://, https:// or s3://bucket/key URL"
        )));
    }
    if https && !cfg!(feature = "https") {
        return Err(OpenError::Url(format!(
            "{url:?}: https needs the cargo feature `https`"
        )));
    }
    start(Arc::new(HttpStore::new(url)), options)
}

/// Opens `key` in `bucket` of the S3-compatible store `config` describes.
///
/// # Errors
///
/// As [`open`].
pub fn open_s3(
    bucket: &str,
    key: &str,
    config: &S3Config,
    options: &Options,
) -> Result<Arc<ObjectSource>, OpenError> {
    // No endpoint: AWS itself, over https.
    if config
        .endpoint
        .as_deref()
        .is_none_or(|e| e.starts_with("https://"))
        && !cfg!(feature = "https")
    {
        return Err(OpenError::Config(
            "an https endpoint needs the cargo feature `https`".into(),
        ));
    }
    start(Arc::new(S3Store::new(bucket, key, config)?), options)
}

fn split_s3<'a>(rest: &'a str, url: &str) -> Result<(&'a str, &'a str), OpenError> {
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok((bucket, key)),
        _ => Err(OpenError::Url(format!("{url:?}: not s3://bucket/key"))),
    }
}

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("userfaultfd-objstore/", env!("CARGO_PKG_VERSION"));

fn start(store: Arc<dyn Store>, options: &Options) -> Result<Arc<ObjectSource>, OpenError> {
    options.validate().map_err(OpenError::Options)?;
    #[cfg_attr(not(feature = "https"), allow(unused_mut))]
    let mut agent = ureq::AgentBuilder::new();
    #[cfg(feature = "https")]
    if let Some(config) = tls_config(&*store, options)? {
        agent = agent.tls_config(config);
    }
    #[cfg(not(feature = "https"))]
    refuse_ca_certificates(options)?;
    let agent = agent
        .timeout_connect(options.connect_timeout)
        .timeout_read(options.request_timeout)
        .timeout_write(options.request_timeout)
        .max_idle_connections(4 * options.parallelism + 4)
        .max_idle_connections_per_host(4 * options.parallelism + 4)
        .user_agent(USER_AGENT)
        .build();
    let (len, etag) = probe(&*store, &agent, options)?;
    let direct = Http1::handles(store.url()).then(|| Direct {
        client: Arc::new(Http1::new(
            4 * options.parallelism + 4,
            options.connect_timeout,
            options.request_timeout,
            USER_AGENT,
        )),
        off: Arc::new(AtomicBool::new(false)),
    });
    let remote = Remote {
        store,
        agent,
        len,
        etag,
        hedge_after: options.hedge_after,
        direct,
    };
    // The memory first: a length no machine can hold fails here, naming the object, before
    // anything is written to the disk cache.
    let name = remote.store.name().to_string();
    let mut shared = shared::Shared::new(remote, options.clone()).map_err(|e| {
        OpenError::Io(
            format!("{name}: an object of {len} bytes (the length its store reports)"),
            e,
        )
    })?;
    if let (Some(dir), Some(etag)) = (&options.cache_dir, &shared.remote.etag) {
        shared.cache = Some(
            cache::DiskCache::open(
                dir,
                &name,
                etag,
                len,
                options.chunk_size as u64,
                options.cache_budget,
                options.cache_mapping,
            )
            .map_err(|e| OpenError::Io(format!("opening the cache in {}", dir.display()), e))?,
        );
    }
    let source = ObjectSource::start(shared)
        .map_err(|e| OpenError::Io("starting the fetch threads".into(), e))?;
    Ok(Arc::new(source))
}

/// The TLS configuration when extra trust roots are given (`None`: ureq's, the public
/// roots): [`Options::ca_certificates`], else `SSL_CERT_FILE` for an https store.
#[cfg(feature = "https")]
fn tls_config(
    store: &dyn Store,
    options: &Options,
) -> Result<Option<Arc<rustls::ClientConfig>>, OpenError> {
    if let Some(path) = &options.ca_certificates {
        return tls::config_with(path, "ca_certificates").map(Some);
    }
    match std::env::var_os(tls::SSL_CERT_FILE).filter(|v| !v.is_empty()) {
        Some(path) if store.https() => {
            tls::config_with(std::path::Path::new(&path), tls::SSL_CERT_FILE).map(Some)
        }
        _ => Ok(None),
    }
}

/// Without TLS, extra trust roots are refused (`SSL_CERT_FILE` is ignored: there is no
/// https to use it for).
#[cfg(not(feature = "https"))]
fn refuse_ca_certificates(options: &Options) -> Result<(), OpenError> {
    match &options.ca_certificates {
        Some(_) => Err(OpenError::Tls(
            "ca_certificates needs the cargo feature `https`".into(),
        )),
        None => Ok(()),
    }
}

/// Whether `len` bytes, rounded up to whole pages of `page` bytes, fit one mapping.
fn mappable(len: u64, page: usize) -> bool {
    usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_next_multiple_of(page))
        .is_some_and(|bytes| bytes <= isize::MAX as usize)
}

/// The length and ETag, retried like any range.
fn probe(
    store: &dyn Store,
    agent: &ureq::Agent,
    options: &Options,
) -> Result<(u64, Option<String>), OpenError> {
    let deadline = remote::after(options.deadline);
    let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max, deadline);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = |cause| {
            OpenError::Fetch(FetchError {
                object: store.name().to_string(),
                range: 0..1,
                cause,
                attempts,
            })
        };
        match Remote::probe(store, agent) {
            // The object is mapped whole, in whole pages: a length beyond what this address
            // space can map (a broken or hostile store) is the store's error, refused here
            // rather than overflowing the buffer's size.
            Ok((len, _)) if !mappable(len, options.page_size) => {
                return Err(error(Cause::Invalid(format!(
                    "Content-Range gives a length of {len} bytes, more than this address \
                     space can map"
                ))))
            }
            Ok(found) => return Ok(found),
            Err(Failure::Fatal(cause)) => return Err(error(cause)),
            Err(Failure::Transient(why)) => {
                if !backoff.wait() {
                    return Err(error(Cause::Deadline(why)));
                }
            }
        }
    }
}
