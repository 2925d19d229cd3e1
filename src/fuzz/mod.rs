//! Entry points of the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer).
//!
//! Each target is one module with `pub fn run(data: &[u8])`: it turns the fuzzer's bytes
//! into the input of one parser or rule of the proxy, runs it, and asserts what must hold
//! of every answer (a panic is a finding). The input formats are described per module; the
//! seeds in `fuzz/corpus/<target>/` show them.
//!
//! Built with the feature `fuzzing` (for `fuzz/`) and in this crate's own tests, where
//! `replay` runs every seed and every saved crash (`fuzz/regressions/<target>/`) on stable
//! Rust, in seconds.

pub mod accept_encoding;
pub mod discovery;
pub mod forwarding_headers;
pub mod jwks;
pub mod proxy_protocol;
pub mod tls_chain;

#[cfg(test)]
mod replay;
