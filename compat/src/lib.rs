//! Code written the way users of crates.io `userfaultfd` 0.9 write it, built against this
//! workspace's `userfaultfd` with only the edits the migration guide lists (the dependency
//! line, and `use userfaultfd::Errno` instead of `use nix::errno::Errno`). The tests in
//! `tests/` run it and check that it behaves as it did on 0.9, or better where 0.9 was wrong.
//!
//! - [`snapshot_handler`]: a lazy snapshot-restore handler in the shape of Firecracker's
//!   example handlers (defers a fault when a copy meets a pending event, zeroes removed pages).
//! - [`tracer`]: the error handling of a tracer in the shape of mevi's event loop (`errno as
//!   i32`, `SystemError(e) if e == EBUSY`, `desc()` as a `&'static str`).
//! - [`memory`]: test scaffolding (mappings of the three memory types); not 0.9 code.
//!
//! Not published.

pub mod memory;
pub mod snapshot_handler;
pub mod tracer;
