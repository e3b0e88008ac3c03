//! The fetch threads: each takes the most urgent task, claims its chunk (single flight),
//! splits it at the faulting page, and streams the range into the buffer, marking pages as
//! their bytes arrive; transient failures are retried from the last byte received.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use crate::error::{Cause, FetchError};
use crate::queue::{Priority, Task};
use crate::remote::{Backoff, Body, Failure};
use crate::shared::{Shared, DONE, FAILED, IDLE, QUEUED, RUNNING};

/// Bytes asked of the body per `read`: pages are marked arrived after each.
const READ_STEP: usize = 256 << 10;

impl Shared {
    /// A fetch thread: takes tasks until the source closes.
    pub(crate) fn fetch_loop(self: Arc<Shared>) {
        while let Some(task) = self.queue.pop() {
            self.run(task);
        }
    }

    /// Runs `task`: claims its chunk (unless it is a claimed remainder) and fetches it, or
    /// the part of it the task names; counted in `busy` meanwhile.
    pub(crate) fn run(&self, task: Task) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.run_task(task);
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    fn run_task(&self, task: Task) {
        let k = task.chunk;
        let (first, end) = self.chunk_pages(k);
        let part = if task.claimed {
            task.from..task.to
        } else {
            // The fill takes only chunks nobody asked for: a queued chunk is a fault's or the
            // working set's, fetched at their priority.
            let claimable: &[u8] = if task.priority == Priority::Background {
                &[IDLE]
            } else {
                &[IDLE, QUEUED]
            };
            let claimed = claimable.iter().any(|&from| {
                self.state[k]
                    .compare_exchange(from, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
            if !claimed {
                return;
            }
            let start = task.from.clamp(first, end - 1);
            if start > first {
                self.parts_left[k].store(2, Ordering::Release);
                // The part before the faulting page: next in line, on any free thread.
                self.queue.push(Task {
                    chunk: k,
                    from: first,
                    to: start,
                    claimed: true,
                    priority: Priority::Demand,
                });
            } else {
                self.parts_left[k].store(1, Ordering::Release);
            }
            start..end
        };
        let handoff = (task.priority == Priority::Background).then_some(k);
        match self.fetch_part(part.start, part.end, handoff) {
            Ok(Some(page)) => {
                // A fault wants this chunk: the rest goes to the fetch threads (this part's
                // count in `parts_left` goes with it).
                self.counters.handoff();
                self.queue.push(Task {
                    chunk: k,
                    from: page,
                    to: part.end,
                    claimed: true,
                    priority: Priority::Demand,
                });
            }
            Ok(None) => {
                if self.parts_left[k].fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.chunk_done(k);
                }
            }
            Err(e) => {
                self.errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(k, e);
                self.state[k].store(FAILED, Ordering::Release);
                self.notify();
            }
        }
    }

    /// Chunk `k` has arrived whole from the store: it is written to the disk cache.
    fn chunk_done(&self, k: usize) {
        // Written to the disk cache before the chunk is DONE: only a DONE chunk's bytes may
        // be dropped (`release`), and the cache must not store dropped (zero) bytes.
        if let Some(cache) = &self.cache {
            let span = self.chunk_span(k);
            // SAFETY: every page of the chunk has arrived: its bytes are final, and they are
            // not dropped before the chunk is DONE (below).
            cache.store(k, unsafe {
                self.buffer
                    .read_slice(span.start as usize, (span.end - span.start) as usize)
            });
        }
        self.state[k].store(DONE, Ordering::SeqCst);
        self.counters.chunk_done();
        self.report_arrived(k);
        // Placed whole while it was being fetched (faults take pages as they arrive).
        if self.opts.release_placed && self.all_placed(k) {
            self.release(k);
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.chunks {
            if let Some(cache) = &self.cache {
                cache.persist();
            }
        }
    }

    /// Fetches pages `[from, to)` into the buffer, marking them as their bytes arrive;
    /// retries transient failures from the last byte received until the deadline.
    ///
    /// `handoff`: the chunk, when run by a background thread: once a fault marks it urgent,
    /// this stops and returns the first page not yet arrived (`Ok(Some(page))`), whose
    /// fetch the caller hands over; `Ok(None)`: every page arrived.
    fn fetch_part(
        &self,
        from: usize,
        to: usize,
        handoff: Option<usize>,
    ) -> Result<Option<usize>, FetchError> {
        let start = (from * self.page) as u64;
        let end = ((to * self.page) as u64).min(self.remote.len);
        let deadline = crate::remote::after(self.opts.deadline);
        let mut backoff = self.backoff(deadline);
        let mut pos = start;
        let mut attempts = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(self.remote.error(start..end, Cause::Closed, attempts));
            }
            if self.urgent(handoff) {
                return Ok(Some((pos / self.page as u64) as usize));
            }
            attempts += 1;
            let before = pos;
            let last = match self.remote.open_range(&(pos..end), &self.counters) {
                Ok(body) => match self.stream(body, start, &mut pos, end, handoff, deadline) {
                    Ok(true) => return Ok(None),
                    Ok(false) => return Ok(Some((pos / self.page as u64) as usize)),
                    Err(why) => why,
                },
                Err(Failure::Fatal(cause)) => {
                    return Err(self.remote.error(start..end, cause, attempts))
                }
                Err(Failure::Transient(why)) => why,
            };
            self.counters.retry();
            if self.urgent(handoff) {
                return Ok(Some((pos / self.page as u64) as usize));
            }
            if pos > before {
                // Progress: the store is up; start the backoff over.
                backoff = self.backoff(deadline);
            }
            if !backoff.wait() {
                return Err(self
                    .remote
                    .error(start..end, Cause::Deadline(last), attempts));
            }
        }
    }

    fn backoff(&self, deadline: Instant) -> Backoff {
        Backoff::new(self.opts.backoff_initial, self.opts.backoff_max, deadline)
    }

    /// Whether the background fetch of chunk `handoff` must hand over: a fault waits for it.
    fn urgent(&self, handoff: Option<usize>) -> bool {
        handoff.is_some_and(|k| self.urgent[k].load(Ordering::Acquire))
    }

    /// Reads `body` (the bytes from `*pos` to `end`) into the buffer, marking each page
    /// whose bytes have all arrived (a part starts at `start`, page-aligned). `Ok(true)`:
    /// all arrived; `Ok(false)`: stopped early to hand over (see [`Shared::fetch_part`]).
    ///
    /// Stops with an error once `deadline` has passed: a store that trickles its bytes
    /// (each read answered within the request timeout, the range never done) would
    /// otherwise hold the faults waiting on it past the deadline, for ever.
    fn stream(
        &self,
        mut body: Body,
        start: u64,
        pos: &mut u64,
        end: u64,
        handoff: Option<usize>,
        deadline: Instant,
    ) -> Result<bool, String> {
        let page = self.page as u64;
        let mut marked = (*pos / page).max(start / page) as usize;
        while *pos < end {
            let n = ((end - *pos) as usize).min(READ_STEP);
            // SAFETY: `[pos, pos + n)` lies in the buffer (end <= len <= buffer length); its
            // pages are not marked (they are marked below, once complete) and this thread
            // owns this part of the chunk (single flight).
            let dst = unsafe { self.buffer.write_slice(*pos as usize, n) };
            match body.read(dst) {
                Ok(0) => return Err(format!("body ended {} bytes short", end - *pos)),
                Ok(got) => {
                    *pos += got as u64;
                    self.counters.fetched(got as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the body: {e}")),
            }
            let done = if *pos == end {
                end.div_ceil(page) as usize
            } else {
                (*pos / page) as usize
            };
            if done > marked {
                self.arrived.set(marked, done);
                marked = done;
                self.notify();
            }
            // Closed: stop, unless every byte is in (the chunk is then done and goes to the
            // disk cache, which the closing source persists once this fetch has stopped).
            if *pos < end && self.closed.load(Ordering::Acquire) {
                return Err("the source was closed".into());
            }
            if *pos < end && self.urgent(handoff) {
                // Dropping the body closes its connection.
                return Ok(false);
            }
            if *pos < end && Instant::now() >= deadline {
                return Err(format!(
                    "the body still {} bytes short at the deadline",
                    end - *pos
                ));
            }
        }
        // Read to the end, so that the connection goes back to the pool.
        let mut rest = [0u8; 1];
        let _ = body.read(&mut rest);
        Ok(true)
    }
}
