//! `_IOC` encodings of other architectures, checked against their own `asm/ioctl.h`.
//!
//! Request codes are computed by `IocEncoding::TARGET`, chosen by `cfg(target_arch)`. Only
//! the host's encoding can be checked by building for the host; powerpc, mips and sparc
//! encode `_IOC` differently (13 size bits, 3 direction bits). So the same request table is
//! computed with every encoding and compared with what gcc makes of each architecture's own
//! `arch/<arch>/include/uapi/asm/ioctl.h`, from a kernel header tree: `LINUX_HEADERS`, else
//! the newest `/usr/src/linux-headers-6.12.*-common` (Debian's package, which ci/test
//! installs). Without gcc or a tree the test fails in strict mode and is skipped otherwise.

mod c_program;

use std::mem::size_of;
use std::path::PathBuf;

use c_program::{gcc_available, parse, print_line, run_c, Values};
use userfaultfd_sys::ioctl::IocEncoding;
use userfaultfd_sys::*;

#[derive(Clone, Copy)]
enum Dir {
    None,
    Read,
    ReadWrite,
}

/// Each request code: name, direction, type, number, argument size; the kernel's definitions.
fn requests() -> Vec<(&'static str, Dir, u32, u32, usize)> {
    let t = UFFDIO as u32;
    vec![
        (
            "UFFDIO_API",
            Dir::ReadWrite,
            t,
            _UFFDIO_API as u32,
            size_of::<uffdio_api>(),
        ),
        (
            "UFFDIO_REGISTER",
            Dir::ReadWrite,
            t,
            _UFFDIO_REGISTER as u32,
            size_of::<uffdio_register>(),
        ),
        (
            "UFFDIO_UNREGISTER",
            Dir::Read,
            t,
            _UFFDIO_UNREGISTER as u32,
            size_of::<uffdio_range>(),
        ),
        (
            "UFFDIO_WAKE",
            Dir::Read,
            t,
            _UFFDIO_WAKE as u32,
            size_of::<uffdio_range>(),
        ),
        (
            "UFFDIO_COPY",
            Dir::ReadWrite,
            t,
            _UFFDIO_COPY as u32,
            size_of::<uffdio_copy>(),
        ),
        (
            "UFFDIO_ZEROPAGE",
            Dir::ReadWrite,
            t,
            _UFFDIO_ZEROPAGE as u32,
            size_of::<uffdio_zeropage>(),
        ),
        (
            "UFFDIO_WRITEPROTECT",
            Dir::ReadWrite,
            t,
            _UFFDIO_WRITEPROTECT as u32,
            size_of::<uffdio_writeprotect>(),
        ),
        (
            "UFFDIO_CONTINUE",
            Dir::ReadWrite,
            t,
            _UFFDIO_CONTINUE as u32,
            size_of::<uffdio_continue>(),
        ),
        (
            "UFFDIO_POISON",
            Dir::ReadWrite,
            t,
            _UFFDIO_POISON as u32,
            size_of::<uffdio_poison>(),
        ),
        (
            "UFFDIO_MOVE",
            Dir::ReadWrite,
            t,
            _UFFDIO_MOVE as u32,
            size_of::<uffdio_move>(),
        ),
        ("USERFAULTFD_IOC_NEW", Dir::None, USERFAULTFD_IOC, 0, 0),
        (
            "PAGEMAP_SCAN",
            Dir::ReadWrite,
            PROCFS_IOCTL_MAGIC as u32,
            16,
            size_of::<pm_scan_arg>(),
        ),
    ]
}

fn encode(e: IocEncoding, dir: Dir, ty: u32, nr: u32, size: usize) -> u64 {
    let dir = match dir {
        Dir::None => e.none,
        Dir::Read => e.read,
        Dir::ReadWrite => e.read | e.write,
    };
    e.ioc(dir, ty, nr, size) as u64
}

fn table(e: IocEncoding) -> Values {
    requests()
        .into_iter()
        .map(|(name, dir, ty, nr, size)| (name.to_string(), encode(e, dir, ty, nr, size)))
        .collect()
}

/// gcc's values of the same requests, with `asm/ioctl.h` from `include_dir`.
fn gcc_table(arch: &str, include_dirs: &[PathBuf], header: &str) -> Values {
    let mut src = format!("#include <stdio.h>\n#include <{header}>\nint main(void) {{\n");
    for (name, dir, ty, nr, size) in requests() {
        // `char[size]` has the argument's size: _IOC takes sizeof of a type.
        let expr = match dir {
            Dir::None => format!("_IO({ty}, {nr})"),
            Dir::Read => format!("_IOR({ty}, {nr}, char[{size}])"),
            Dir::ReadWrite => format!("_IOWR({ty}, {nr}, char[{size}])"),
        };
        print_line(&mut src, name, &expr);
    }
    src.push_str("  return 0;\n}\n");
    let flags: Vec<String> = include_dirs
        .iter()
        .map(|d| format!("-I{}", d.display()))
        .collect();
    parse(&run_c(arch, &src, &flags))
}

/// The kernel header tree, or `None` (after saying why) outside strict mode.
fn header_tree() -> Option<PathBuf> {
    let tree = std::env::var_os("LINUX_HEADERS")
        .map(PathBuf::from)
        .or_else(|| {
            let mut trees: Vec<PathBuf> = std::fs::read_dir("/usr/src")
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-common"))
                })
                .collect();
            trees.sort();
            trees.pop()
        });
    let usable = tree
        .as_ref()
        .is_some_and(|t| t.join("arch/powerpc/include/uapi/asm/ioctl.h").is_file());
    let strict = std::env::var_os("UFFD_TEST_STRICT").is_some_and(|v| v == "1");
    if usable && gcc_available() {
        return tree;
    }
    let why = "gcc and a kernel header tree with arch/ (LINUX_HEADERS, or Debian's \
               linux-headers-*-common) are needed";
    assert!(!strict, "UFFD_TEST_STRICT=1: {why}");
    eprintln!("SKIPPED: {why}");
    None
}

#[test]
fn target_request_codes_use_the_target_encoding() {
    // Ties the table to the constants users get: the table computed with TARGET must give
    // exactly the exported codes.
    let t = table(IocEncoding::TARGET);
    let exported = [
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
    ];
    for (name, code) in exported {
        assert_eq!(t[name], code as u32 as u64, "{name}");
    }
}

#[test]
fn every_architecture_encoding_matches_its_asm_ioctl_h() {
    let Some(tree) = header_tree() else { return };
    let uapi = tree.join("include/uapi");
    let cases = [
        ("generic", IocEncoding::GENERIC, None),
        ("powerpc", IocEncoding::POWERPC_MIPS_SPARC, Some("powerpc")),
        ("mips", IocEncoding::POWERPC_MIPS_SPARC, Some("mips")),
        ("sparc", IocEncoding::POWERPC_MIPS_SPARC, Some("sparc")),
    ];
    for (name, encoding, arch) in cases {
        let (dirs, header) = match arch {
            Some(arch) => (
                vec![tree.join(format!("arch/{arch}/include/uapi")), uapi.clone()],
                "asm/ioctl.h",
            ),
            None => (vec![uapi.clone()], "asm-generic/ioctl.h"),
        };
        let ours = table(encoding);
        let gcc = gcc_table(name, &dirs, header);
        assert_eq!(ours, gcc, "{name}: ours (left) differ from gcc (right)");
    }
    // The encodings really differ: a wrong choice of TARGET could not pass unnoticed.
    assert_ne!(
        table(IocEncoding::GENERIC),
        table(IocEncoding::POWERPC_MIPS_SPARC)
    );
}
