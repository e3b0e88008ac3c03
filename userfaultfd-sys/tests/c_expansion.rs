//! The bindings against the C compiler's own reading of the kernel headers.
//!
//! bindgen and our `const fn` request codes are two programs' interpretation of the header;
//! gcc's is the reference. For every integer constant the bindings export, every ioctl request
//! code, and the size of every struct and the offset of every field, a C program generated
//! here prints gcc's value, and the test compares it with ours. Two programs are compiled:
//!
//! - **header**: the header alone (the build host's `/usr/include`, or the tree named by
//!   `LINUX_HEADERS`, as the build used). Items it has must be identical to ours: this is the
//!   proof that `include/newest.h` only adds, and never changes, what a real header defines.
//!   The aggregate masks (`UFFD_API_FEATURES`, `UFFD_API_RANGE_IOCTLS`, `..._BASIC`) are the
//!   documented exception: ours always have the newest kernel's value.
//! - **wrapper**: `include/wrapper.h`, exactly what bindgen reads. Every item must be present
//!   and identical.
//!
//! The lists of names are read from the bindings themselves (and from `src/ioctl.rs` for the
//! request codes), so a constant added to the allowlist is checked without editing this file.
//! Needs `gcc`; without it the test fails in strict mode (`UFFD_TEST_STRICT=1`) and is skipped
//! with a message otherwise.

mod c_program;

use c_program::{compile_and_run, gcc_available, Flavor, Values};
use std::mem::{offset_of, size_of};
use userfaultfd_sys::*;

/// The generated bindings this crate was built with.
const BINDINGS: &str = include_str!(concat!(env!("OUT_DIR"), "/bindings.rs"));
/// The request codes' source.
const IOCTL_RS: &str = include_str!("../src/ioctl.rs");

/// Masks that `include/newest.h` redefines to the newest kernel's value on purpose.
const NEWEST_BY_DESIGN: &[&str] = &[
    "UFFD_API_FEATURES",
    "UFFD_API_RANGE_IOCTLS",
    "UFFD_API_RANGE_IOCTLS_BASIC",
];

/// `pub const NAME: TYPE = VALUE;` items of the bindings, with their values.
fn binding_constants() -> Vec<(String, u64)> {
    BINDINGS
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .map(|rest| {
            let (name, rest) = rest.split_once(':').expect("pub const NAME: ...");
            let value = rest.split_once('=').expect("= VALUE").1.trim();
            // A literal may carry a type suffix (`102u8`, for a character constant).
            let value = value.trim_end_matches(';').replace('_', "");
            let value = value.split(['u', 'i']).next().unwrap_or_default();
            let value = value.parse::<u64>().unwrap_or_else(|_| {
                panic!("constant {name} has a value this test cannot parse: {value}")
            });
            (name.trim().to_string(), value)
        })
        .collect()
}

/// Our request codes, by name. Every `pub const X: libc::Ioctl` of src/ioctl.rs must be here
/// (checked by `request_codes_are_all_listed`).
fn request_codes() -> Vec<(&'static str, u64)> {
    [
        ("UFFDIO_API", UFFDIO_API),
        ("UFFDIO_REGISTER", UFFDIO_REGISTER),
        ("UFFDIO_UNREGISTER", UFFDIO_UNREGISTER),
        ("UFFDIO_WAKE", UFFDIO_WAKE),
        ("UFFDIO_COPY", UFFDIO_COPY),
        ("UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE),
        ("UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT),
        ("UFFDIO_CONTINUE", UFFDIO_CONTINUE),
        ("UFFDIO_POISON", UFFDIO_POISON),
        ("UFFDIO_MOVE", UFFDIO_MOVE),
        ("USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW),
        ("PAGEMAP_SCAN", PAGEMAP_SCAN),
    ]
    .into_iter()
    // The C side prints the code as an unsigned 32-bit value.
    .map(|(name, code)| (name, code as u32 as u64))
    .collect()
}

/// A struct's C name, size, and fields with their offsets (Rust field names; `move_` is C's
/// `move`).
struct Layout {
    name: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize)>,
}

macro_rules! layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        Layout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: vec![$((stringify!($field), offset_of!($ty, $field))),*],
        }
    };
}

/// Every named struct of the bindings (checked by `struct_layouts_are_all_listed`).
fn layouts() -> Vec<Layout> {
    vec![
        layout!(uffd_msg {
            event,
            reserved1,
            reserved2,
            reserved3,
            arg
        }),
        layout!(uffdio_api {
            api,
            features,
            ioctls
        }),
        layout!(uffdio_range { start, len }),
        layout!(uffdio_register {
            range,
            mode,
            ioctls
        }),
        layout!(uffdio_copy {
            dst,
            src,
            len,
            mode,
            copy
        }),
        layout!(uffdio_zeropage {
            range,
            mode,
            zeropage
        }),
        layout!(uffdio_writeprotect { range, mode }),
        layout!(uffdio_continue {
            range,
            mode,
            mapped
        }),
        layout!(uffdio_poison {
            range,
            mode,
            updated
        }),
        layout!(uffdio_move {
            dst,
            src,
            len,
            mode,
            move_
        }),
        layout!(page_region {
            start,
            end,
            categories
        }),
        layout!(pm_scan_arg {
            size,
            flags,
            start,
            end,
            walk_end,
            vec,
            vec_len,
            max_pages,
            category_inverted,
            category_mask,
            category_anyof_mask,
            return_mask,
        }),
    ]
}

/// Everything we claim, as `key -> value` lines the C program prints in the same form.
fn ours() -> Values {
    let mut v = Values::default();
    for (name, value) in binding_constants() {
        v.insert(format!("const {name}"), value);
    }
    v.insert("const UFFD_API_IOCTLS".into(), UFFD_API_IOCTLS);
    for (name, code) in request_codes() {
        v.insert(format!("ioctl {name}"), code);
    }
    for layout in layouts() {
        v.insert(format!("sizeof {}", layout.name), layout.size as u64);
        for (field, offset) in &layout.fields {
            let c_field = field.trim_end_matches('_');
            v.insert(
                format!("offsetof {}.{c_field}", layout.name),
                *offset as u64,
            );
        }
    }
    v
}

/// The items of `ours` whose value differs in `theirs`, and those `theirs` lacks.
fn mismatches(ours: &Values, theirs: &Values, require_all: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in ours.iter() {
        match theirs.get(key) {
            Some(c) if c == value => {}
            Some(c) => out.push(format!("{key}: ours {value:#x}, gcc {c:#x}")),
            None if require_all => out.push(format!("{key}: gcc does not have it")),
            None => {}
        }
    }
    out
}

/// `None` (after printing why) when gcc is missing outside strict mode.
fn gcc_or_skip() -> Option<()> {
    if gcc_available() {
        return Some(());
    }
    let strict = std::env::var_os("UFFD_TEST_STRICT").is_some_and(|v| v == "1");
    assert!(!strict, "UFFD_TEST_STRICT=1 and gcc is not installed");
    eprintln!("SKIPPED: gcc is not installed; the C comparison cannot run");
    None
}

#[test]
fn every_item_equals_the_c_expansion_of_wrapper_h() {
    let Some(()) = gcc_or_skip() else { return };
    let ours = ours();
    let gcc = compile_and_run(Flavor::Wrapper, &ours);
    let bad = mismatches(&ours, &gcc, true);
    assert!(
        bad.is_empty(),
        "bindings differ from gcc:\n{}",
        bad.join("\n")
    );
    // The comparison covered everything: 60+ constants, 12 codes, 12 structs.
    assert!(ours.len() > 100, "only {} items compared", ours.len());
}

#[test]
fn items_of_the_real_header_are_identical_to_ours() {
    let Some(()) = gcc_or_skip() else { return };
    let mut ours = ours();
    for name in NEWEST_BY_DESIGN {
        ours.remove(&format!("const {name}"));
    }
    let header = compile_and_run(Flavor::HeaderOnly, &ours);
    let bad = mismatches(&ours, &header, false);
    assert!(
        bad.is_empty(),
        "newest.h changed items the header has:\n{}",
        bad.join("\n")
    );
    // Every header has the Linux 4.3 core; that it was found proves the program read it.
    for key in ["ioctl UFFDIO_COPY", "const UFFD_API", "sizeof uffd_msg"] {
        assert!(
            header.contains_key(key),
            "the header program did not report {key}"
        );
    }
    eprintln!(
        "header provides {} of {} items; newest.h supplies the rest",
        header.len(),
        ours.len()
    );
}

#[test]
fn a_wrong_value_is_reported() {
    // The comparison itself can fail: one changed value, one missing item.
    let ours = ours();
    let mut theirs = ours.clone();
    theirs.insert("const UFFD_API".into(), 0xab);
    theirs.remove("sizeof uffdio_move");
    let bad = mismatches(&ours, &theirs, true);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad.iter().any(|m| m.starts_with("const UFFD_API:")));
    assert!(bad.iter().any(|m| m.starts_with("sizeof uffdio_move:")));
}

#[test]
fn request_codes_are_all_listed() {
    let declared: Vec<&str> = IOCTL_RS
        .lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .filter(|l| l.contains(": libc::Ioctl"))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    let listed: Vec<&str> = request_codes().iter().map(|(n, _)| *n).collect();
    assert_eq!(declared.len(), 12, "src/ioctl.rs declares {declared:?}");
    for name in declared {
        assert!(listed.contains(&name), "{name} is not compared with gcc");
    }
}

#[test]
fn struct_layouts_are_all_listed() {
    let layouts = layouts();
    let mut current: Option<(&str, Vec<&str>)> = None;
    let mut seen = 0;
    for line in BINDINGS.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split_whitespace().next().unwrap();
            current = (!name.contains("bindgen")).then(|| (name, Vec::new()));
        } else if let Some((_, fields)) = current.as_mut() {
            if let Some(field) = line.strip_prefix("pub ") {
                fields.push(field.split(':').next().unwrap().trim());
            } else if line == "}" {
                let (name, fields) = current.take().unwrap();
                let layout = layouts
                    .iter()
                    .find(|l| l.name == name)
                    .unwrap_or_else(|| panic!("struct {name} is not compared with gcc"));
                let listed: Vec<&str> = layout.fields.iter().map(|(f, _)| *f).collect();
                assert_eq!(listed, fields, "fields of {name}");
                seen += 1;
            }
        }
    }
    assert_eq!(
        seen,
        layouts.len(),
        "every listed struct exists in the bindings"
    );
}
