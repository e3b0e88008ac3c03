//! Skipping with a reason, and strict mode.
//!
//! A test that cannot run prints why and returns early. Under `UFFD_TEST_STRICT=1` (set by
//! ci/test) only one reason is accepted: the running kernel lacks the feature, as `probe()`
//! reports. Any other reason (no huge pages reserved, no privilege) fails the test.

use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};

use super::MemoryType;

/// Whether strict mode is on.
pub fn strict() -> bool {
    std::env::var_os("UFFD_TEST_STRICT").is_some_and(|v| v == "1")
}

/// Reports a skip because this machine (not the kernel) lacks something: fails in strict mode.
#[track_caller]
pub fn machine_lacks(what: &str) {
    if strict() {
        panic!("UFFD_TEST_STRICT=1 and this machine lacks {what}");
    }
    eprintln!(
        "SKIPPED at {}: machine lacks {what}",
        std::panic::Location::caller()
    );
}

/// `Some(missing)` (and prints a skip notice) when the running kernel lacks any of
/// `features`; `None` when it has them all. Allowed in strict mode: it is the kernel's answer.
#[track_caller]
pub fn kernel_lacks(features: FeatureFlags) -> Option<FeatureFlags> {
    let caps = userfaultfd::probe().expect("probe() must work where the tests run");
    let missing = caps.missing(features);
    if missing.is_empty() {
        None
    } else {
        eprintln!(
            "SKIPPED at {}: the running kernel lacks {missing:?}",
            std::panic::Location::caller()
        );
        Some(missing)
    }
}

/// A non-blocking descriptor with the features needed to register `memory` in `mode`, plus
/// `extra`; `None` (skip) when the kernel lacks them. Read it with
/// [`wait_event`](super::wait_event), which times out.
#[track_caller]
pub fn uffd_for(memory: MemoryType, mode: RegisterMode, extra: FeatureFlags) -> Option<Uffd> {
    let features = memory.features_for(mode) | extra;
    if kernel_lacks(features).is_some() {
        return None;
    }
    Some(new_uffd(features).expect("creating a userfaultfd with supported features"))
}

/// A close-on-exec, non-blocking descriptor with `features` (the tests' usual kind).
pub fn new_uffd(features: FeatureFlags) -> userfaultfd::Result<Uffd> {
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .require_features(features)
        .create()
}

/// Whether the tests run with root's privileges (CAP_SYS_PTRACE in particular). ci/unprivileged
/// runs the suite again as uid 65534.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no memory effects.
    (unsafe { libc::geteuid() }) == 0
}

/// For an operation the tests' process is not privileged to do: asserts that it failed, and
/// that its message says why (each of `reasons` appears in it). What is not allowed must fail
/// clearly, so this is a result, not a skip.
#[track_caller]
pub fn assert_refused_for_privilege<T: std::fmt::Debug>(
    what: &str,
    result: userfaultfd::Result<T>,
    reasons: &[&str],
) {
    let err = match result {
        Ok(v) => panic!("{what} succeeded without privilege: {v:?}"),
        Err(e) => e,
    };
    let shown = err.to_string();
    for reason in reasons {
        assert!(
            shown.contains(reason),
            "{what}: {shown:?} does not mention {reason:?}"
        );
    }
    eprintln!("unprivileged, as expected: {what}: {shown}");
}
