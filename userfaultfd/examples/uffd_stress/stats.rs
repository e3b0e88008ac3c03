//! The faults one handler thread served in a bounce, and the per-bounce report line.

use std::fmt::Write;

/// What one fault-handler thread counted during one bounce.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultStats {
    /// Missing faults this thread resolved with its own `UFFDIO_COPY` (not those the
    /// background copy got to first).
    pub missing: u64,
    /// Write-protect faults resolved by removing the protection.
    pub wp: u64,
    /// Minor faults (never registered by this program, as in the kernel's 6.12 version; the
    /// column exists so that the report has the same form).
    pub minor: u64,
}

/// The report of one bounce, in the kernel program's exact form (so that the two outputs can
/// be compared line by line): `userfaults: <total> missing (<cpu0>+<cpu1>+\b) <total> wp
/// (...\b) ` and likewise `minor`, each part only when its total is non-zero. The `\b`
/// (backspace) erases the last `+` on a terminal.
pub fn report(per_cpu: &[FaultStats]) -> String {
    let mut line = String::from("userfaults: ");
    type Column = (&'static str, fn(&FaultStats) -> u64, &'static str);
    let columns: [Column; 3] = [
        ("missing", |s| s.missing, " "),
        ("wp", |s| s.wp, " "),
        ("minor", |s| s.minor, ""),
    ];
    for (name, get, after) in columns {
        let total: u64 = per_cpu.iter().map(get).sum();
        if total == 0 {
            continue;
        }
        let _ = write!(line, "{total} {name} (");
        for stats in per_cpu {
            let _ = write!(line, "{}+", get(stats));
        }
        let _ = write!(line, "\u{8}){after}");
    }
    line
}
