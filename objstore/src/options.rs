//! [`Options`]: chunk size, parallelism, timeouts, retries, the local cache.

use std::path::PathBuf;
use std::time::Duration;

/// How an object is fetched and cached. Start from [`Options::default`] and change fields.
///
/// The defaults suit a VM snapshot in a bucket in the same region: 4 MiB chunks (one GET per
/// 4 MiB, not per 4 KiB fault), four ranges in flight, a request that sends nothing for
/// 10 seconds abandoned and retried, and faults that wait up to two minutes for a store that
/// is down before the server's error policy decides.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Bytes per range request: a multiple of [`page_size`](Self::page_size). Default 4 MiB.
    pub chunk_size: usize,
    /// The serving granularity: the page size of the regions served from this source (the
    /// base page size, or 2 MiB for hugetlbfs). An answer to the page server is a whole
    /// number of these. Default: the base page size.
    pub page_size: usize,
    /// Range requests in flight at once (fetch threads): 1 to [`MAX_PARALLELISM`]. Default 4.
    pub parallelism: usize,
    /// Connecting to the store gives up after this long (then the request is retried).
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// A request whose response (headers, or the next bytes of its body) does not arrive
    /// within this long is abandoned and retried from the last byte received. Default 10 s.
    pub request_timeout: Duration,
    /// A request that has not answered its headers after this long gets a second, identical
    /// request on another connection; the first to answer is used (a hedge against a slow
    /// tail). `None`: no hedging. Default 1 s.
    pub hedge_after: Option<Duration>,
    /// A range that could not be fetched after this long, counted from its first attempt,
    /// fails, also one whose bytes are still arriving (a store that trickles them, each
    /// read inside [`request_timeout`](Self::request_timeout)): the page server then follows
    /// its error policy (faults never get zeros). While the store is down, faults wait and
    /// requests are retried until then. Default 120 s.
    pub deadline: Duration,
    /// The first retry waits up to this long (full jitter: a random time between zero and
    /// the bound), each next one up to twice as long. Default 50 ms.
    pub backoff_initial: Duration,
    /// The bound on one wait between retries. Default 2 s.
    pub backoff_max: Duration,
    /// Keep fetched chunks in this directory (a sparse file and a bitmap per object version,
    /// keyed by the object's ETag and length), so that the next restore on this host reads
    /// them from disk instead of the network. `None`: no disk cache. Default `None`.
    pub cache_dir: Option<PathBuf>,
    /// The most bytes of chunk data the disk cache holds for one object; chunks past it are
    /// not written. Default 64 GiB.
    pub cache_budget: u64,
    /// Answer faults on verified disk-cache chunks from a read-only mapping of the cache
    /// file, which the kernel copies from straight into the guest (`UFFDIO_COPY`), rather
    /// than with a `pread` into the page server's buffer first (a system call and a copy
    /// more per fault). A disk error or a cache file cut short is safe either way: a mapped
    /// read the kernel cannot complete comes back to the source as an error, which turns
    /// the cache off ([crate docs](crate), "The disk cache"). Turn it off for hugetlbfs
    /// memory on kernels before 5.14, where the page server maps a copy's source by reading
    /// it (a disk error there raises `SIGBUS`). Default `true`.
    pub cache_mapping: bool,
    /// After start, fetch every chunk not yet fetched in the background, in order: on
    /// `parallelism - 1` threads of their own (at least one) at nice 19, the lowest CPU
    /// priority, each starting a chunk only while no fault, working-set or read-ahead fetch
    /// waits. Default `false`: only what is touched, read ahead on sequential access, and
    /// the working set.
    ///
    /// Why threads of their own, rather than a fetch thread lowering its priority for the
    /// length of a background task: an unprivileged thread can raise its nice value but not
    /// lower it again (that needs `CAP_SYS_NICE` or a matching `RLIMIT_NICE`), so the fetch
    /// thread would go on running faults' fetches at nice 19. The fill's threads lower their
    /// priority once, when they start (their hedged requests' threads inherit it), and never
    /// take a fault's or the working set's task; the fetch threads never take fill work and
    /// keep the nice value of the thread that called [`open`](crate::open). So a fetch a
    /// fault waits for never runs at nice 19, even when a fault lands in a chunk the fill is
    /// fetching: the fill's thread notices within one read of the body (or before its next
    /// retry) and hands the rest of the chunk, from its first page not yet arrived, to the
    /// fetch threads ([`Stats::handoffs`](crate::Stats::handoffs)).
    pub background: bool,
    /// Drop a chunk's bytes from the source's memory once the page server has placed every
    /// page of it ([`PageSource::placed`](userfaultfd::serve::PageSource::placed)): a restore
    /// then does not hold the guest's memory twice. A page of a dropped chunk asked for again
    /// is answered with zeros: with one region per byte of the object, the page server asks
    /// for a page it placed only on a duplicate fault (the page is present: the zero page
    /// writes nothing) or for a page the process discarded without the server being told
    /// (zeros are what a discarded page reads). Default `true`.
    ///
    /// An object whose length is not a whole number of pages ends in a page the page server
    /// cannot place (a region lies inside its source, in whole pages): the last chunk is
    /// dropped once its whole pages are placed.
    ///
    /// Set it to `false` when the page server serves the same bytes of the object into
    /// several regions at once: once one region has placed a chunk whole, the other
    /// region's faults in it would get zeros (and bytes a worker was handed but has not yet
    /// copied could be dropped under it).
    pub release_placed: bool,
    /// Byte offsets in the object, in the order a previous run first touched them (a recorded
    /// working set): their chunks are fetched in that order, ahead of faults.
    pub working_set: Vec<u64>,
    /// A PEM file of certificate authorities to trust for `https`, *in addition to* the
    /// public roots compiled in (Mozilla's, from `webpki-roots`): a private CA of an
    /// on-premises store. `None`: the file the standard variable `SSL_CERT_FILE` names, when
    /// set and the object is behind `https`; else the public roots only. A file that cannot
    /// be read or holds no certificate fails [`open`](crate::open) (`OpenError::Tls`). Needs
    /// the `https` feature. Default `None`.
    pub ca_certificates: Option<PathBuf>,
    /// Print a progress line (bytes fetched, rate, requests, retries, cache hits) on standard
    /// error this often while the source lives. `None`: never. Default `None`.
    pub progress: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk_size: 4 << 20,
            page_size: base_page_size(),
            parallelism: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            hedge_after: Some(Duration::from_secs(1)),
            deadline: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            cache_dir: None,
            cache_budget: 64 << 30,
            cache_mapping: true,
            background: false,
            release_placed: true,
            working_set: Vec::new(),
            ca_certificates: None,
            progress: None,
        }
    }
}

impl Options {
    /// Sets [`working_set`](Self::working_set) from a recorded
    /// [`WorkingSet`](userfaultfd::serve::WorkingSet) (its pages' offsets, in its order).
    pub fn working_set_from(&mut self, ws: &userfaultfd::serve::WorkingSet) -> &mut Self {
        self.working_set = ws.order().iter().map(|&p| p * ws.page_size()).collect();
        self
    }

    /// Checks the settings; the error says which one is wrong and why.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = self.page_size;
        if p == 0 || !p.is_power_of_two() || p < base_page_size() {
            return Err(format!(
                "page_size {p} is not a power of two of at least the base page size"
            ));
        }
        if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(p) {
            return Err(format!(
                "chunk_size {} is not a non-zero multiple of page_size {p}",
                self.chunk_size
            ));
        }
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM {
            return Err(format!(
                "parallelism {} is not between 1 and {MAX_PARALLELISM} (each is a thread with \
                 a connection)",
                self.parallelism
            ));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("a zero timeout".into());
        }
        Ok(())
    }
}

/// The most ranges in flight [`Options::parallelism`] may ask for: each is a thread and a
/// connection, and a store is not helped by more.
pub const MAX_PARALLELISM: usize = 256;

/// The base page size.
pub(crate) fn base_page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let with = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            o.validate()
        };
        assert_eq!(Options::default().validate(), Ok(()));
        assert!(with(|o| o.chunk_size = 4097)
            .unwrap_err()
            .contains("chunk_size 4097"));
        assert!(with(|o| o.page_size = 3000)
            .unwrap_err()
            .contains("page_size 3000"));
        assert!(with(|o| o.parallelism = 0)
            .unwrap_err()
            .contains("parallelism"));
        assert!(with(|o| o.parallelism = usize::MAX)
            .unwrap_err()
            .contains("parallelism"));
        assert_eq!(
            with(|o| {
                o.page_size = 2 << 20;
                o.chunk_size = 4 << 20;
            }),
            Ok(())
        );
    }
}
