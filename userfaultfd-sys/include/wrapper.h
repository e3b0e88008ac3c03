/*
 * The translation unit bindgen reads: the build host's (or LINUX_HEADERS')
 * userfaultfd and pagemap headers, then newest.h, which supplies whatever
 * those headers are too old to define.
 */
/*
 * A kernel tree's include/uapi (LINUX_HEADERS) has not been through
 * `make headers_install`, which rewrites the kernel-internal `__packed` to
 * the compiler attribute. Without this, `struct uffd_msg { ... } __packed;`
 * would declare a variable named __packed and lose the packed layout.
 */
#ifndef __packed
#define __packed __attribute__((packed))
#endif

#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>
#include <linux/fs.h>

#include "newest.h"
