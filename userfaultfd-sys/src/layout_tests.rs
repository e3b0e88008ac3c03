//! Sizes and offsets of the kernel structs. They are the same on every architecture (every
//! field is a naturally aligned `__u64`/`__s64`, and `uffd_msg` is packed), which is what lets
//! one checked-in bindings file serve all targets.

use core::mem::{offset_of, size_of};

use crate::*;

#[test]
fn struct_sizes_match_the_kernel() {
    assert_eq!(size_of::<uffdio_api>(), 24);
    assert_eq!(size_of::<uffdio_range>(), 16);
    assert_eq!(size_of::<uffdio_register>(), 32);
    assert_eq!(size_of::<uffdio_copy>(), 40);
    assert_eq!(size_of::<uffdio_zeropage>(), 32);
    assert_eq!(size_of::<uffdio_writeprotect>(), 24);
    assert_eq!(size_of::<uffdio_continue>(), 32);
    assert_eq!(size_of::<uffdio_poison>(), 32);
    assert_eq!(size_of::<uffdio_move>(), 40);
    assert_eq!(size_of::<uffd_msg>(), 32);
    assert_eq!(size_of::<pm_scan_arg>(), 96);
    assert_eq!(size_of::<page_region>(), 24);
}

#[test]
fn result_fields_are_last() {
    assert_eq!(offset_of!(uffdio_copy, copy), 32);
    assert_eq!(offset_of!(uffdio_zeropage, zeropage), 24);
    assert_eq!(offset_of!(uffdio_continue, mapped), 24);
    assert_eq!(offset_of!(uffdio_poison, updated), 24);
    assert_eq!(offset_of!(uffdio_move, move_), 32);
    assert_eq!(offset_of!(uffdio_register, ioctls), 24);
    assert_eq!(offset_of!(pm_scan_arg, walk_end), 32);
    assert_eq!(offset_of!(pm_scan_arg, return_mask), 88);
}

#[test]
fn uffd_msg_is_packed_with_the_kernel_offsets() {
    assert_eq!(core::mem::align_of::<uffd_msg>(), 1);
    assert_eq!(offset_of!(uffd_msg, event), 0);
    assert_eq!(offset_of!(uffd_msg, arg), 8);
    let mut msg = uffd_msg::default();
    msg.arg.pagefault.flags = 1;
    msg.arg.pagefault.address = 0x1122_3344_5566_7788;
    msg.arg.pagefault.feat.ptid = 0xdead_beef;
    // SAFETY: uffd_msg is 32 plain bytes with no padding and no invalid bit patterns.
    let bytes: [u8; 32] = unsafe { core::mem::transmute(msg) };
    assert_eq!(bytes[8], 1);
    assert_eq!(&bytes[16..24], &0x1122_3344_5566_7788_u64.to_ne_bytes());
    assert_eq!(&bytes[24..28], &0xdead_beef_u32.to_ne_bytes());
}

#[test]
fn api_ioctls_mask() {
    assert_eq!(UFFD_API_IOCTLS, 0x8000_0000_0000_0003);
}
