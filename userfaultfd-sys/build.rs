//! Generates the userfaultfd bindings at build time.
//!
//! Order of preference:
//! 1. bindgen over `include/wrapper.h`, reading the kernel headers of the build host, or of the
//!    tree named by `LINUX_HEADERS` (a kernel source or headers tree with `include/` and
//!    `include/uapi/`, the same meaning as in userfaultfd-sys 0.6).
//! 2. When libclang cannot be loaded (a machine without it, docs.rs), or when
//!    `USERFAULTFD_SYS_USE_FALLBACK=1`, the bindings the project generated itself and keeps in
//!    `src/generated.rs`. A `cargo:warning` says so.
//!
//! Either way the result lands in `$OUT_DIR/bindings.rs`, which `src/lib.rs` includes.
//!
//! `USERFAULTFD_SYS_BINDINGS_OUT=<file>` also writes the freshly generated bindings there and
//! fails if bindgen cannot run: `ci/regen-bindings` uses it to refresh and to check
//! `src/generated.rs`.

use std::env;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::process;

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

fn main() {
    for var in [
        "LINUX_HEADERS",
        "USERFAULTFD_SYS_USE_FALLBACK",
        "USERFAULTFD_SYS_BINDINGS_OUT",
        "DOCS_RS",
        "LIBCLANG_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=include/wrapper.h");
    println!("cargo:rerun-if-changed=include/newest.h");
    println!("cargo:rerun-if-changed=src/generated.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let header_tree = env::var_os("LINUX_HEADERS").map(PathBuf::from);
    if let Some(tree) = &header_tree {
        check_header_tree(tree);
        println!("cargo:rerun-if-changed={}", tree.display());
    }
    let regen_out = env::var_os("USERFAULTFD_SYS_BINDINGS_OUT").map(PathBuf::from);

    let forced_fallback = env::var_os("USERFAULTFD_SYS_USE_FALLBACK").is_some_and(|v| v == "1")
        || env::var_os("DOCS_RS").is_some();
    let generated = if forced_fallback && regen_out.is_none() {
        Err("USERFAULTFD_SYS_USE_FALLBACK=1 or DOCS_RS is set".to_string())
    } else {
        generate(&manifest_dir, header_tree.as_deref())
    };

    let bindings = match (generated, &regen_out) {
        (Ok(bindings), Some(path)) => {
            fs::write(path, &bindings).unwrap_or_else(|e| {
                fail(&format!(
                    "USERFAULTFD_SYS_BINDINGS_OUT={}: cannot write the bindings: {e}",
                    path.display()
                ))
            });
            bindings
        }
        (Ok(bindings), None) => bindings,
        (Err(why), Some(path)) => fail(&format!(
            "USERFAULTFD_SYS_BINDINGS_OUT={} asks for freshly generated bindings, but bindgen \
             could not run: {why}",
            path.display()
        )),
        (Err(why), None) => {
            println!(
                "cargo:warning=using the checked-in bindings (src/generated.rs, \
                 newest kernel API) because bindgen could not run: {why}"
            );
            let fallback = manifest_dir.join("src/generated.rs");
            fs::read_to_string(&fallback)
                .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", fallback.display())))
        }
    };
    let target = out_dir.join("bindings.rs");
    fs::write(&target, bindings)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", target.display())));
}

/// Rejects an unusable `LINUX_HEADERS` with one message that names the variable, the path and
/// what was expected, before bindgen gets a chance to fail obscurely.
fn check_header_tree(tree: &Path) {
    let expected = "a kernel tree with include/ and include/uapi/linux/userfaultfd.h \
                    (a kernel source tree, or Debian's /usr/src/linux-headers-*-common)";
    if !tree.is_dir() {
        fail(&format!(
            "LINUX_HEADERS={}: no such directory; expected {expected}",
            tree.display()
        ));
    }
    let header = tree.join("include/uapi/linux/userfaultfd.h");
    if !header.is_file() {
        fail(&format!(
            "LINUX_HEADERS={}: {} does not exist; expected {expected}",
            tree.display(),
            header.display()
        ));
    }
}

/// Runs bindgen. A missing libclang makes bindgen panic rather than return an error, so the
/// panic is caught (with the default hook silenced) and turned into the reason for the fallback.
fn generate(manifest_dir: &Path, header_tree: Option<&Path>) -> Result<String, String> {
    let mut builder = bindgen::Builder::default()
        .header(manifest_dir.join("include/wrapper.h").display().to_string())
        .clang_arg(format!("-I{}", manifest_dir.join("include").display()))
        .blocklist_item(REQUEST_CODES)
        // Macros such as `((__u64)1 << 0)` carry casts that bindgen's own macro parser
        // gives up on; clang evaluates them instead.
        .clang_macro_fallback()
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
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "bindgen panicked".to_string());
            Err(why.lines().next().unwrap_or_default().to_string())
        }
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
    file.items.sort_by_cached_key(|item| {
        use quote_free_key::key;
        key(item)
    });
    Ok(prettyplease::unparse(&file))
}

/// The sort key of a generated item: its kind, then its name (for an impl, the type's name and
/// then the trait's), so that each impl follows the type it belongs to.
mod quote_free_key {
    use syn::{Item, Type};

    pub fn key(item: &Item) -> (u8, String, String) {
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

fn fail(message: &str) -> ! {
    eprintln!("error: userfaultfd-sys: {message}");
    process::exit(1);
}
