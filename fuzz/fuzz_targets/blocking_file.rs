//! cargo-fuzz entry point; the harness is `shmflow_fuzz::blocking_file` (replayed on stable
//! by `cargo test --manifest-path fuzz/Cargo.toml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmflow_fuzz::blocking_file(data));
