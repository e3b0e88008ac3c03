//! Generating, compiling (gcc) and running the C programs the tests compare against.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `key -> value`, keys like `const UFFD_API`, `ioctl UFFDIO_COPY`, `sizeof uffdio_copy`,
/// `offsetof uffdio_copy.dst`.
pub type Values = BTreeMap<String, u64>;

/// Which headers the program reads.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    /// `include/wrapper.h`: the header plus `include/newest.h`, as bindgen reads it.
    Wrapper,
    /// The kernel header alone.
    HeaderOnly,
}

/// Whether `gcc` can be run.
pub fn gcc_available() -> bool {
    Command::new("gcc").arg("--version").output().is_ok()
}

/// The userfaultfd-sys directory.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The include flags the build used: `LINUX_HEADERS`'s tree, or the host's defaults.
fn header_flags() -> Vec<String> {
    match std::env::var_os("LINUX_HEADERS") {
        Some(tree) => {
            let tree = PathBuf::from(tree);
            vec![
                format!("-isystem{}", tree.join("include/uapi").display()),
                format!("-isystem{}", tree.join("include").display()),
            ]
        }
        None => Vec::new(),
    }
}

/// The struct whose presence a macro proves, for headers that may lack the struct.
fn struct_guard(name: &str) -> &'static str {
    match name {
        "uffdio_writeprotect" => "defined(UFFDIO_WRITEPROTECT)",
        "uffdio_continue" => "defined(UFFDIO_CONTINUE)",
        "uffdio_poison" => "defined(UFFDIO_POISON)",
        "uffdio_move" => "defined(UFFDIO_MOVE)",
        "pm_scan_arg" | "page_region" => "defined(PAGEMAP_SCAN)",
        _ => "1",
    }
}

/// The C statement printing `key`'s value, guarded so that a header without the item skips it.
fn print_statement(key: &str) -> String {
    let (kind, item) = key.split_once(' ').expect("key is `kind item`");
    let (guard, expr) = match kind {
        "const" => (
            format!("defined({item})"),
            format!("(unsigned long long)({item})"),
        ),
        "ioctl" => (
            format!("defined({item})"),
            format!("(unsigned long long)(unsigned int)({item})"),
        ),
        "sizeof" => (
            struct_guard(item).to_string(),
            format!("(unsigned long long)sizeof(struct {item})"),
        ),
        "offsetof" => {
            let (s, field) = item.split_once('.').expect("struct.field");
            (
                struct_guard(s).to_string(),
                format!("(unsigned long long)offsetof(struct {s}, {field})"),
            )
        }
        other => panic!("unknown key kind {other}"),
    };
    format!("#if {guard}\n  printf(\"{key} %llu\\n\", {expr});\n#endif\n")
}

/// Compiles and runs a program printing gcc's value of every key of `keys` that the headers
/// of `flavor` define.
pub fn compile_and_run(flavor: Flavor, keys: &Values) -> Values {
    let mut src = String::from("#include <stdio.h>\n#include <stddef.h>\n");
    match flavor {
        Flavor::Wrapper => src.push_str("#include \"wrapper.h\"\n"),
        Flavor::HeaderOnly => src.push_str(
            // Raw kernel trees use `__packed` without defining it (the kernel's compiler
            // headers do); the same one-line fixup wrapper.h makes. It defines no item.
            "#ifndef __packed\n#define __packed __attribute__((packed))\n#endif\n\
             #include <linux/types.h>\n#include <linux/ioctl.h>\n\
             #include <linux/userfaultfd.h>\n#include <linux/fs.h>\n",
        ),
    }
    src.push_str("int main(void) {\n");
    for key in keys.keys() {
        src.push_str(&print_statement(key));
    }
    src.push_str("  return 0;\n}\n");

    let mut flags = header_flags();
    flags.push(format!("-I{}", manifest_dir().join("include").display()));
    parse(&run_c(&format!("{flavor:?}"), &src, &flags))
}

/// Writes `src` to a temporary directory, compiles it with `flags`, runs it, and returns its
/// standard output. Panics with gcc's diagnostics on failure.
pub fn run_c(tag: &str, src: &str, flags: &[String]) -> String {
    let dir = std::env::temp_dir().join(format!("uffd-sys-c-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .expect("running gcc");
    assert!(
        out.status.success(),
        "gcc failed on {}:\n{}",
        c.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("running the C program");
    assert!(run.status.success(), "the C program failed");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(run.stdout).unwrap()
}

/// Parses `key value` lines (the key itself contains one space).
pub fn parse(stdout: &str) -> Values {
    stdout
        .lines()
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("key value");
            (key.to_string(), value.parse().expect("decimal value"))
        })
        .collect()
}

/// Appends a `printf` of `name` = `expr` to `src` (for programs built by other tests).
pub fn print_line(src: &mut String, name: &str, expr: &str) {
    writeln!(
        src,
        "  printf(\"{name} %llu\\n\", (unsigned long long)(unsigned int)({expr}));"
    )
    .unwrap();
}
