//! Puts the userfaultfd bindings in `$OUT_DIR/bindings.rs`, which `src/lib.rs` includes.
//!
//! Where they come from:
//! 1. With the cargo feature `bindgen` (the default): bindgen over `include/wrapper.h`, reading
//!    the kernel headers of the build host, or of the tree named by `LINUX_HEADERS` (a kernel
//!    source or headers tree with `include/` and `include/uapi/`, the same meaning as in
//!    userfaultfd-sys 0.6). See `generate.rs`.
//! 2. The bindings the project generated itself and keeps in `src/generated.rs`:
//!    - without the feature `bindgen` (`default-features = false`: no libclang needed and a
//!      much shorter build), silently;
//!    - with it, when bindgen cannot be used: libclang cannot be loaded (a machine without it),
//!      bindgen fails, or its output lacks an item of `src/generated.rs` (see `required.rs`);
//!      and when `USERFAULTFD_SYS_USE_FALLBACK=1` or `DOCS_RS` is set. A `cargo:warning` then
//!      says why, with bindgen's whole error.
//!
//! `USERFAULTFD_SYS_BINDINGS_OUT=<file>` also writes the freshly generated bindings there and
//! fails if bindgen cannot run: `ci/regen-bindings` uses it to refresh and to check
//! `src/generated.rs`.
//!
//! The build never writes into the source folder (it may be read-only: vendored sources,
//! distribution packages, Nix), so concurrent builds of one source folder do not interfere.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process;

#[cfg(feature = "bindgen")]
mod generate;
#[cfg(feature = "bindgen")]
mod required;

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
    let fallback_path = manifest_dir.join("src/generated.rs");
    let fallback = fs::read_to_string(&fallback_path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", fallback_path.display())));

    let bindings = bindings(&manifest_dir, &out_dir, fallback);
    let target = out_dir.join("bindings.rs");
    fs::write(&target, bindings)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", target.display())));
}

/// Without the `bindgen` feature: the checked-in bindings. Settings that only mean something
/// to bindgen are refused or reported rather than silently ignored.
#[cfg(not(feature = "bindgen"))]
fn bindings(_manifest_dir: &Path, _out_dir: &Path, fallback: String) -> String {
    if let Some(path) = env::var_os("USERFAULTFD_SYS_BINDINGS_OUT") {
        fail(&format!(
            "USERFAULTFD_SYS_BINDINGS_OUT={} asks for freshly generated bindings, but the cargo \
             feature `bindgen` of userfaultfd-sys is off",
            Path::new(&path).display()
        ));
    }
    if let Some(tree) = env::var_os("LINUX_HEADERS") {
        warn(&format!(
            "LINUX_HEADERS={} is ignored: the cargo feature `bindgen` is off, so the checked-in \
             bindings (src/generated.rs, newest kernel API) are used",
            Path::new(&tree).display()
        ));
    }
    fallback
}

/// With the `bindgen` feature: bindgen's output when it is complete, else the checked-in
/// bindings and a warning saying why.
#[cfg(feature = "bindgen")]
fn bindings(manifest_dir: &Path, out_dir: &Path, fallback: String) -> String {
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
        generate::generate(manifest_dir, out_dir, header_tree.as_deref())
            .and_then(|bindings| required::check(&bindings, &fallback).map(|()| bindings))
    };

    match (generated, regen_out) {
        (Ok(bindings), Some(path)) => {
            fs::write(&path, &bindings).unwrap_or_else(|e| {
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
             could not make them: {why}",
            path.display()
        )),
        (Err(why), None) => {
            warn(&format!(
                "using the checked-in bindings (src/generated.rs, newest kernel API) because \
                 bindgen could not make them: {why}"
            ));
            fallback
        }
    }
}

/// Rejects an unusable `LINUX_HEADERS` with one message that names the variable, the path and
/// what was expected, before bindgen gets a chance to fail obscurely.
#[cfg(feature = "bindgen")]
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

/// A `cargo:warning` per line: cargo cuts a warning at its first newline, and bindgen's errors
/// (clang diagnostics) span several lines that all matter.
fn warn(message: &str) {
    for line in message.lines() {
        println!("cargo:warning={line}");
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: userfaultfd-sys: {message}");
    process::exit(1);
}
