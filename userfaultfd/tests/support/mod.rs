//! What the integration tests share: strict-mode skipping, the three memory types, mappings,
//! timeouts and watchdogs, child processes, and knowing that a thread is blocked in a fault.
//!
//! Each test file includes this with `mod support;` and uses what it needs.
#![allow(dead_code, unused_imports)]

pub mod blocked;
pub mod child;
pub mod dirty;
pub mod memory;
pub mod serve;
pub mod skip;
pub mod timeout;
pub mod watchdog;

pub use blocked::{blocked_in_userfault, gettid, wait_blocked_in_userfault};
pub use child::{run_in_child, spawn_child, ChildExit, ChildOutcome, Reporter, RunningChild};
pub use memory::{pattern, MemoryType, Region};
pub use skip::{
    assert_refused_for_privilege, kernel_lacks, machine_lacks, new_uffd, privileged, strict,
    uffd_for,
};
pub use timeout::{
    join_timeout, spawn_named, wait_event, wait_readable, wait_until, wait_until_showing, Waitable,
    TIMEOUT,
};
