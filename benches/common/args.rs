//! The command line every bench shares (clap): each bench's own `Parser` flattens
//! [`BenchArgs`] and adds its flags. An unknown flag, or a flag without its value, is an
//! error with the usage (exit status 2), never silently ignored; `--help` lists the flags.
//!
//! What cargo passes a harness-less bench: `cargo bench --bench X -- ARGS` runs `X ARGS
//! --bench`, and `cargo test --bench X -- ARGS` (or `--benches`, `--all-targets`) runs `X
//! ARGS`. A user's libtest arguments after `--` reach every target of such a run, so the few
//! that make sense there (`--nocapture`, `--test-threads N`, test-name filters) are accepted
//! and mean nothing to a bench.

#![allow(dead_code)] // each bench uses only some of it

use clap::Args;
use std::path::PathBuf;

/// The flags of every bench.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// The full run, as `cargo bench` asks for it; without it, a quick smoke run (as under
    /// `cargo test`).
    #[arg(long = "bench")]
    pub full: bool,
    /// Write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// libtest's, for `cargo test -- --nocapture` over every target.
    #[arg(long, hide = true)]
    nocapture: bool,
    /// libtest's, for `cargo test -- --test-threads N` over every target.
    #[arg(long, hide = true, value_name = "N")]
    test_threads: Option<usize>,
    /// libtest's test-name filters (`cargo test -- NAME`), which reach every target.
    #[arg(hide = true, value_name = "FILTER")]
    filters: Vec<String>,
}

/// A comma-separated list (`64,1024`) of values of `T`.
pub fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    s.split(',').map(|v| v.trim().parse::<T>().map_err(|e| format!("{v:?}: {e}"))).collect()
}
