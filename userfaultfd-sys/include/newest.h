/*
 * Userfaultfd and PAGEMAP_SCAN items of the newest kernel this crate knows
 * (Linux 6.18), for build hosts whose headers are older (Debian bookworm
 * ships 6.1).
 *
 * Each block is guarded by a macro that arrived in the same kernel release
 * as everything in the block, so an item is defined here only when the
 * header lacks it, and then with exactly the layout and value the newest
 * header gives it. The test `bindings_do_not_depend_on_header_version`
 * (ci/test) proves that: bindings generated from the 6.1 header plus this
 * file are identical to bindings generated from the 6.12 header plus this
 * file, and to the checked-in fallback.
 *
 * The three aggregate masks at the end are the one exception: every header
 * defines them, with the value of its own kernel release. This crate
 * redefines them to the newest kernel's value so that they, too, do not
 * depend on the build host.
 */
#ifndef USERFAULTFD_SYS_NEWEST_H
#define USERFAULTFD_SYS_NEWEST_H

/* 5.11: userfaultfd(2) flag for descriptors that only handle user-mode faults. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* 6.1: /dev/userfaultfd. */
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

/* 6.4: write-protect unpopulated anonymous pages; CONTINUE with write-protect. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED		(1<<13)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP			((__u64)1<<1)
#endif

/* 6.6: UFFDIO_POISON. */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON			(1<<14)
#define _UFFDIO_POISON			(0x08)
#define UFFDIO_POISON		_IOWR(UFFDIO, _UFFDIO_POISON, \
				      struct uffdio_poison)
struct uffdio_poison {
	struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE		((__u64)1<<0)
	__u64 mode;
	__s64 updated;
};
#endif

/* 6.7: asynchronous write-protect faults and PAGEMAP_SCAN. */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC			(1<<15)
#endif
#ifndef PAGEMAP_SCAN
#define PROCFS_IOCTL_MAGIC 'f'
#define PAGEMAP_SCAN	_IOWR(PROCFS_IOCTL_MAGIC, 16, struct pm_scan_arg)
#define PAGE_IS_WPALLOWED	(1 << 0)
#define PAGE_IS_WRITTEN		(1 << 1)
#define PAGE_IS_FILE		(1 << 2)
#define PAGE_IS_PRESENT		(1 << 3)
#define PAGE_IS_SWAPPED		(1 << 4)
#define PAGE_IS_PFNZERO		(1 << 5)
#define PAGE_IS_HUGE		(1 << 6)
#define PAGE_IS_SOFT_DIRTY	(1 << 7)
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};
#define PM_SCAN_WP_MATCHING	(1 << 0)
#define PM_SCAN_CHECK_WPASYNC	(1 << 1)
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};
#endif

/* 6.8: UFFDIO_MOVE. */
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE			(1<<16)
#define _UFFDIO_MOVE			(0x05)
#define UFFDIO_MOVE		_IOWR(UFFDIO, _UFFDIO_MOVE,	\
				      struct uffdio_move)
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE		((__u64)1<<0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES	((__u64)1<<1)
	__u64 mode;
	__s64 move;
};
#endif

/* 6.15: guard regions (MADV_GUARD_INSTALL) reported by PAGEMAP_SCAN. */
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD		(1 << 8)
#endif

/* The aggregate masks, as the newest kernel defines them. */
#undef UFFD_API_FEATURES
#define UFFD_API_FEATURES (UFFD_FEATURE_PAGEFAULT_FLAG_WP |	\
			   UFFD_FEATURE_EVENT_FORK |		\
			   UFFD_FEATURE_EVENT_REMAP |		\
			   UFFD_FEATURE_EVENT_REMOVE |		\
			   UFFD_FEATURE_EVENT_UNMAP |		\
			   UFFD_FEATURE_MISSING_HUGETLBFS |	\
			   UFFD_FEATURE_MISSING_SHMEM |		\
			   UFFD_FEATURE_SIGBUS |		\
			   UFFD_FEATURE_THREAD_ID |		\
			   UFFD_FEATURE_MINOR_HUGETLBFS |	\
			   UFFD_FEATURE_MINOR_SHMEM |		\
			   UFFD_FEATURE_EXACT_ADDRESS |		\
			   UFFD_FEATURE_WP_HUGETLBFS_SHMEM |	\
			   UFFD_FEATURE_WP_UNPOPULATED |	\
			   UFFD_FEATURE_POISON |		\
			   UFFD_FEATURE_WP_ASYNC |		\
			   UFFD_FEATURE_MOVE)
#undef UFFD_API_RANGE_IOCTLS
#define UFFD_API_RANGE_IOCTLS			\
	((__u64)1 << _UFFDIO_WAKE |		\
	 (__u64)1 << _UFFDIO_COPY |		\
	 (__u64)1 << _UFFDIO_ZEROPAGE |		\
	 (__u64)1 << _UFFDIO_MOVE |		\
	 (__u64)1 << _UFFDIO_WRITEPROTECT |	\
	 (__u64)1 << _UFFDIO_CONTINUE |		\
	 (__u64)1 << _UFFDIO_POISON)
#undef UFFD_API_RANGE_IOCTLS_BASIC
#define UFFD_API_RANGE_IOCTLS_BASIC		\
	((__u64)1 << _UFFDIO_WAKE |		\
	 (__u64)1 << _UFFDIO_COPY |		\
	 (__u64)1 << _UFFDIO_WRITEPROTECT |	\
	 (__u64)1 << _UFFDIO_CONTINUE |		\
	 (__u64)1 << _UFFDIO_POISON)

#endif /* USERFAULTFD_SYS_NEWEST_H */
