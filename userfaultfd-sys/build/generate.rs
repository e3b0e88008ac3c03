//! Runs bindgen over `include/wrapper.h` and puts its output in a canonical order.

use std::fs;
use std::panic;
use std::path::Path;

use bindgen::callbacks::{IntKind, ParseCallbacks};

/// Names whose values are ioctl request codes. Their encoding differs between architectures, so
/// `src/ioctl.rs` computes them in Rust for the target instead of taking a value from whichever
/// header (or checked-in file) the bindings came from.
const REQUEST_CODES: &str = "UFFDIO_(API|REGISTER|UNREGISTER|WAKE|COPY|ZEROPAGE|WRITEPROTECT|CONTINUE|POISON|MOVE)|USERFAULTFD_IOC_NEW|PAGEMAP_SCAN";

/// Everything the crate exports from the headers: the userfaultfd items and the PAGEMAP_SCAN
/// items of `linux/fs.h`.
const ALLOWLIST: [&str; 10] = [
    "UFFD.*",
    "uffd.*",
    "_UFFDIO_.*",
    "USERFAULTFD_IOC",
    "PROCFS_IOCTL_MAGIC",
    "PAGE_IS_.*",
    "PM_SCAN_.*",
    "pm_scan_arg",
    "page_region",
    "UFFDIO",
];

/// Runs bindgen. A missing libclang makes bindgen panic rather than return an error, so the
/// panic is caught (with the default hook silenced) and turned into the reason for the fallback.
///
/// bindgen's clang macro fallback writes a C file and a precompiled header; by default into the
/// working directory (the source folder, for a build script) and next to `wrapper.h`. A
/// read-only source folder then makes it drop every macro it could not parse itself, without an
/// error, and two builds of one source folder overwrite each other's files. Both go to
/// `$OUT_DIR/bindgen` instead, which belongs to this build alone.
pub fn generate(
    manifest_dir: &Path,
    out_dir: &Path,
    header_tree: Option<&Path>,
) -> Result<String, String> {
    let scratch = out_dir.join("bindgen");
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let mut builder = bindgen::Builder::default()
        .header(manifest_dir.join("include/wrapper.h").display().to_string())
        .clang_arg(format!("-I{}", manifest_dir.join("include").display()))
        .blocklist_item(REQUEST_CODES)
        // Macros such as `((__u64)1 << 0)` carry casts that bindgen's own macro parser
        // gives up on; clang evaluates them instead.
        .clang_macro_fallback()
        .clang_macro_fallback_build_dir(&scratch)
        .parse_callbacks(Box::new(KernelIntTypes))
        .generate_comments(false)
        .layout_tests(false)
        .derive_default(true)
        .use_core()
        .formatter(bindgen::Formatter::Prettyplease);
    for pattern in ALLOWLIST {
        builder = builder.allowlist_item(pattern);
    }
    if let Some(tree) = header_tree {
        builder = builder
            .clang_arg(format!("-isystem{}", tree.join("include/uapi").display()))
            .clang_arg(format!("-isystem{}", tree.join("include").display()));
    }

    let previous_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(panic::AssertUnwindSafe(move || builder.generate()));
    panic::set_hook(previous_hook);

    match result {
        Ok(Ok(bindings)) => canonical_order(&bindings.to_string()),
        Ok(Err(e)) => Err(format!("bindgen failed: {e}")),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "bindgen panicked".to_string())),
    }
}

/// Sorts the generated items by kind and name and prints them again.
///
/// bindgen emits items in declaration order, and an item that `include/newest.h` supplies is
/// declared later than the same item in a newer header. Sorting makes the text depend only on
/// what the items are, so bindings from the 6.1 header plus `newest.h`, from the 6.12 header,
/// and the checked-in fallback can be compared byte for byte.
fn canonical_order(generated: &str) -> Result<String, String> {
    let mut file = syn::parse_file(generated)
        .map_err(|e| format!("bindgen produced code that does not parse: {e}"))?;
    file.items.sort_by_cached_key(sort_key);
    Ok(prettyplease::unparse(&file))
}

/// The sort key of a generated item: its kind, then its name (for an impl, the type's name and
/// then the trait's), so that each impl follows the type it belongs to.
fn sort_key(item: &syn::Item) -> (u8, String, String) {
    use syn::{Item, Type};
    match item {
        Item::Const(c) => (0, c.ident.to_string(), String::new()),
        Item::Struct(s) => (1, s.ident.to_string(), String::new()),
        Item::Union(u) => (1, u.ident.to_string(), String::new()),
        Item::Impl(i) => {
            let ty = match &*i.self_ty {
                Type::Path(p) => p
                    .path
                    .segments
                    .last()
                    .map(|s| s.ident.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let tr = i
                .trait_
                .as_ref()
                .and_then(|(_, path, _)| path.segments.last())
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            (1, ty, format!("~{tr}"))
        }
        _ => (2, String::new(), String::new()),
    }
}

/// Gives each integer macro the type the kernel uses it with, so callers need no casts:
/// feature, mode, flag and ioctl-bit masks are `__u64` fields in the kernel's structs.
#[derive(Debug)]
struct KernelIntTypes;

impl ParseCallbacks for KernelIntTypes {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        const U64_PREFIXES: [&str; 8] = [
            "UFFD_API",
            "UFFD_FEATURE_",
            "UFFD_PAGEFAULT_FLAG_",
            "UFFDIO_",
            "_UFFDIO_",
            "PAGE_IS_",
            "PM_SCAN_",
            "UFFD_API_",
        ];
        // The same types userfaultfd-sys 0.6 gave these, so code written against it compiles.
        match name {
            "UFFDIO" => Some(IntKind::U8),
            _ if name.starts_with("UFFD_EVENT_") => Some(IntKind::U8),
            "UFFD_USER_MODE_ONLY" | "USERFAULTFD_IOC" => Some(IntKind::U32),
            _ if U64_PREFIXES.iter().any(|p| name.starts_with(p)) => Some(IntKind::U64),
            _ => None,
        }
    }
}
