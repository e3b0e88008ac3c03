//! What the integration tests share: strict-mode skipping, the three memory types, mappings,
//! and timeouts.
//!
//! Each test file includes this with `mod support;` and uses what it needs.
#![allow(dead_code, unused_imports)]

pub mod memory;
pub mod skip;
pub mod timeout;

pub use memory::{MemoryType, Region};
pub use skip::{kernel_lacks, strict, uffd_for};
pub use timeout::{join_timeout, spawn_named, wait_event, TIMEOUT};
