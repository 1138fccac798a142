//! Fuzz targets for `mxsend-proto` and the checks they run.
//!
//! Each target in `fuzz_targets/` is one call into [`checks`]. The test
//! `crates/mxsend-proto/tests/fuzz_regressions.rs` includes the same module
//! by path and replays every file under `corpus/` and `regressions/`, so a
//! fuzz input that breaks an invariant also fails the normal `cargo test`.

#![forbid(unsafe_code)]

pub mod checks;
