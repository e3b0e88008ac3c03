//! Creation without privileges, in a child process that became uid/gid 65534 (nobody): with
//! `/dev/userfaultfd` root-only, the default builder (`user_mode_only`) still succeeds through
//! the `userfaultfd(2)` system call; without `user_mode_only` creation fails with a
//! `CreateFailed` that says why each way failed; `EVENT_FORK` fails with `SystemError(EPERM)`
//! naming CAP_SYS_PTRACE.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use support::{machine_lacks, pattern, run_in_child, MemoryType, Region};
use userfaultfd::{Errno, Error, FeatureFlags, UffdBuilder};

const NOBODY: libc::uid_t = 65534;

/// Drops every privilege: no supplementary groups, gid and uid 65534 (which also clears every
/// capability, CAP_SYS_PTRACE included).
fn become_nobody() -> Result<(), String> {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } == NOBODY {
        return Ok(()); // ci/unprivileged runs the suite as nobody already
    }
    // SAFETY: changes the credentials of this (single-threaded, forked) child only.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(NOBODY) == 0
            && libc::setuid(NOBODY) == 0
    };
    // SAFETY: geteuid has no memory effects.
    if !ok || unsafe { libc::geteuid() } != NOBODY {
        return Err(format!(
            "dropping privileges: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `Some(why)` when this machine cannot run the test: not root, or a /dev/userfaultfd that
/// others may open (then the device, not the system call, would serve nobody).
fn machine_lack() -> Option<String> {
    // SAFETY: geteuid has no memory effects.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && euid != NOBODY {
        return Some("root (to become uid 65534), or running as uid 65534".into());
    }
    if let Ok(meta) = std::fs::metadata("/dev/userfaultfd") {
        if meta.permissions().mode() & 0o006 != 0 || meta.uid() != 0 {
            return Some(format!(
                "a root-only /dev/userfaultfd (it is mode {:o}, owner {})",
                meta.permissions().mode() & 0o777,
                meta.uid()
            ));
        }
    }
    None
}

fn sysctl_unprivileged_userfaultfd() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[test]
fn unprivileged_creation_uses_the_system_call() {
    if let Some(why) = machine_lack() {
        machine_lacks(&why);
        return;
    }
    let region = Region::new(MemoryType::Anonymous, 1).unwrap();
    let outcome = run_in_child(|report| {
        become_nobody()?;
        // The device refuses nobody...
        // SAFETY: opens a path; the descriptor, if any, is closed at once.
        let fd = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR) };
        let device = Errno::last();
        if fd >= 0 {
            return Err("nobody could open /dev/userfaultfd".into());
        }
        report.note(&format!("/dev/userfaultfd: {device}"));
        // ...so the default builder must have used the system call.
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .create()
            .map_err(|e| format!("default builder as nobody: {e}"))?;
        // And the descriptor works.
        uffd.register(region.addr(), region.len())
            .map_err(|e| e.to_string())?;
        let data = pattern(1, region.page_size());
        // SAFETY: the missing page of the child's copy of the test mapping.
        unsafe { uffd.copy(data.as_ptr().cast(), region.addr(), data.len(), true) }
            .map_err(|e| e.to_string())?;
        if region.read_page(0) != data {
            return Err("the copied page differs".into());
        }
        userfaultfd::probe().map_err(|e| format!("probe() as nobody: {e}"))?;
        Ok(())
    });
    outcome.assert_success();
    assert!(
        outcome.report.contains("EACCES") || outcome.report.contains("ENOENT"),
        "{}",
        outcome.report
    );
}

#[test]
fn unprivileged_creation_without_user_mode_only_explains_why_it_failed() {
    if let Some(why) = machine_lack() {
        machine_lacks(&why);
        return;
    }
    match sysctl_unprivileged_userfaultfd() {
        Some(0) => {}
        other => {
            machine_lacks(&format!(
                "vm.unprivileged_userfaultfd = 0 (it is {other:?}: anyone may create \
                 userfaultfds, so there is no failure to explain)"
            ));
            return;
        }
    }
    let outcome = run_in_child(|report| {
        become_nobody()?;
        let err = match UffdBuilder::new().user_mode_only(false).create() {
            Ok(_) => return Err("created a full userfaultfd as nobody".into()),
            Err(e) => e,
        };
        let Error::CreateFailed {
            device,
            syscall,
            unprivileged_userfaultfd,
        } = &err
        else {
            return Err(format!("expected CreateFailed, got {err:?}"));
        };
        if !matches!(*device, Errno::EACCES | Errno::ENOENT)
            || *syscall != Errno::EPERM
            || *unprivileged_userfaultfd != Some(0)
        {
            return Err(format!("unexpected fields: {err:?}"));
        }
        let text = err.to_string();
        report.note(&text);
        for needle in [
            "/dev/userfaultfd",
            "file mode",
            "vm.unprivileged_userfaultfd is 0",
            "CAP_SYS_PTRACE",
            "user_mode_only(true)",
        ] {
            if !text.contains(needle) {
                return Err(format!("the message lacks {needle:?}: {text}"));
            }
        }
        if err.errno() != Some(Errno::EPERM) {
            return Err(format!("errno {:?}", err.errno()));
        }
        Ok(())
    });
    outcome.assert_success();
}

#[test]
fn event_fork_without_cap_sys_ptrace_is_eperm() {
    if let Some(why) = machine_lack() {
        machine_lacks(&why);
        return;
    }
    if support::kernel_lacks(FeatureFlags::EVENT_FORK).is_some() {
        return;
    }
    let outcome = run_in_child(|report| {
        become_nobody()?;
        let err = match UffdBuilder::new()
            .require_features(FeatureFlags::EVENT_FORK)
            .create()
        {
            Ok(_) => return Err("EVENT_FORK enabled without CAP_SYS_PTRACE".into()),
            Err(e) => e,
        };
        if !matches!(err, Error::SystemError(Errno::EPERM)) {
            return Err(format!("expected SystemError(EPERM), got {err:?}"));
        }
        let text = err.to_string();
        report.note(&text);
        if !(text.contains("UFFDIO_API") && text.contains("CAP_SYS_PTRACE")) {
            return Err(format!("the message does not say why: {text}"));
        }
        // The same builder without EVENT_FORK works.
        UffdBuilder::new()
            .require_features(FeatureFlags::EVENT_REMAP)
            .create()
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    outcome.assert_success();
}
