/*
 * The minimal fault handler of the callgrind comparison (ci/callgrind), in C over the raw
 * ioctls of <linux/userfaultfd.h>: the floor the Rust handlers are measured against.
 *
 *   handler MODE N B T
 *
 * serves N faults raised by T threads (each populating its share of an anonymous region
 * with one MADV_POPULATE_READ), resolving each with one UFFDIO_COPY of 4 KiB (MODE copy)
 * or one UFFDIO_ZEROPAGE (MODE zeropage), reading one message per read(2) (B = 1) or up to
 * B messages per read(2). The handler is the main thread (callgrind's thread 1), and does
 * what the Rust handlers of the benchmark do (bench/src/scenarios.rs, serve_populate):
 * read, check the event code, resolve, loop. Prints "reads R events N".
 *
 * The descriptor comes from /dev/userfaultfd (valgrind 3.19 does not know the userfaultfd
 * system call), without UFFD_USER_MODE_ONLY: the faults are taken in kernel mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define PAGE 4096UL

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* For an event other than a page fault: errno says nothing then. */
static void die_event(unsigned code)
{
	fprintf(stderr, "event: code %#x, not a page fault\n", code);
	exit(1);
}

struct share {
	char *start;
	size_t len;
};

static void *populate(void *arg)
{
	struct share *s = arg;

	if (madvise(s->start, s->len, MADV_POPULATE_READ))
		die("MADV_POPULATE_READ");
	return NULL;
}

/* Resolves the fault at `addr`: the same call per fault as the Rust handlers. */
static inline void resolve(int uffd, int zero, const char *source, uint64_t addr)
{
	if (zero) {
		struct uffdio_zeropage z = {
			.range = { .start = addr, .len = PAGE },
		};
		if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0)
			die("UFFDIO_ZEROPAGE");
	} else {
		struct uffdio_copy c = {
			.dst = addr, .src = (uint64_t)(uintptr_t)source, .len = PAGE,
		};
		if (ioctl(uffd, UFFDIO_COPY, &c) < 0)
			die("UFFDIO_COPY");
	}
}

/* Serves `n` faults reading one message per read(2), by ZEROPAGE if `zero` (a constant at
 * each call, so that each loop is compiled for one mode). */
static inline __attribute__((always_inline)) size_t serve_single(int uffd, int zero,
								  const char *source, size_t n)
{
	for (size_t served = 0; served < n; served++) {
		struct uffd_msg msg;
		ssize_t r;
		while ((r = read(uffd, &msg, sizeof(msg))) != sizeof(msg))
			if (r >= 0 || errno != EINTR)
				die("read");
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			die_event(msg.event);
		resolve(uffd, zero, source, msg.arg.pagefault.address);
	}
	return n;
}

/* Serves `n` faults reading up to `batch` messages per read(2) into `msgs`; returns how many
 * reads it took. */
static inline __attribute__((always_inline)) size_t serve_batch(int uffd, int zero,
								 const char *source, size_t n,
								 struct uffd_msg *msgs, size_t batch)
{
	size_t reads = 0;
	for (size_t served = 0; served < n; reads++) {
		ssize_t r = read(uffd, msgs, batch * sizeof(*msgs));
		if (r <= 0 || r % sizeof(*msgs)) {
			if (r < 0 && errno == EINTR)
				continue;
			die("read");
		}
		size_t count = r / sizeof(*msgs);
		for (size_t i = 0; i < count; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				die_event(msgs[i].event);
			resolve(uffd, zero, source, msgs[i].arg.pagefault.address);
		}
		served += count;
	}
	return reads;
}

/* Each mode's and each reading's loop is a function of its own, never inlined (as in the
 * Rust handlers). */
static __attribute__((noinline)) size_t serve_copy_single(int uffd, const char *source, size_t n)
{
	return serve_single(uffd, 0, source, n);
}

static __attribute__((noinline)) size_t serve_zeropage_single(int uffd, const char *source,
							      size_t n)
{
	return serve_single(uffd, 1, source, n);
}

static __attribute__((noinline)) size_t serve_copy_batch(int uffd, const char *source, size_t n,
							 struct uffd_msg *msgs, size_t batch)
{
	return serve_batch(uffd, 0, source, n, msgs, batch);
}

static __attribute__((noinline)) size_t serve_zeropage_batch(int uffd, const char *source,
							     size_t n, struct uffd_msg *msgs,
							     size_t batch)
{
	return serve_batch(uffd, 1, source, n, msgs, batch);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s copy|zeropage N B T\n", argv[0]);
		return 2;
	}
	int zero = strcmp(argv[1], "zeropage") == 0;
	if (!zero && strcmp(argv[1], "copy") != 0) {
		fprintf(stderr, "MODE is copy or zeropage\n");
		return 2;
	}
	size_t n = strtoul(argv[2], NULL, 10), batch = strtoul(argv[3], NULL, 10),
	       threads = strtoul(argv[4], NULL, 10);
	if (!n || !batch || !threads || n % threads) {
		fprintf(stderr, "N, B, T at least 1, N a multiple of T\n");
		return 2;
	}

	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		die("open /dev/userfaultfd");
	int uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
	if (uffd < 0)
		die("USERFAULTFD_IOC_NEW");
	close(dev);
	struct uffdio_api api = { .api = UFFD_API };
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");

	char *region = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	char *source = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED || source == MAP_FAILED)
		die("mmap");
	memset(source, 0x5a, PAGE);
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)region, .len = n * PAGE },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");

	pthread_t *tids = calloc(threads, sizeof(*tids));
	struct share *shares = calloc(threads, sizeof(*shares));
	for (size_t t = 0; t < threads; t++) {
		shares[t].len = n / threads * PAGE;
		shares[t].start = region + t * shares[t].len;
		if (pthread_create(&tids[t], NULL, populate, &shares[t]))
			die("pthread_create");
	}

	/* The mode is a constant of each loop, as in the Rust handlers (bench/src/scenarios.rs):
	 * no loop tests it per fault. */
	size_t reads;
	if (batch == 1) {
		reads = zero ? serve_zeropage_single(uffd, source, n) : serve_copy_single(uffd, source, n);
	} else {
		struct uffd_msg *msgs = calloc(batch, sizeof(*msgs));
		if (!msgs)
			die("calloc");
		reads = zero ? serve_zeropage_batch(uffd, source, n, msgs, batch)
			     : serve_copy_batch(uffd, source, n, msgs, batch);
		free(msgs);
	}

	for (size_t t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	printf("reads %zu events %zu\n", reads, n);
	return 0;
}
