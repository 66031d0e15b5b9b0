//! Blocking vs pipelined exchange: `shmflow run wordcount --exchange blocking|pipelined`
//! through the command line, the same generated text, the same parallelism. The blocking
//! run writes every (word, 1) record to a file per producer (one region index per
//! subpartition), waits for all producers to finish, then reads the files through a
//! read-only mapping; the pipelined run streams through the shared-memory arena.
//!
//! Rates are words per second of the job's wall clock (`elapsed_s` of the summary, which
//! includes starting and stopping the worker processes). Repetitions alternate the two
//! exchanges; medians are reported, with the blocking / pipelined ratio.
//!
//! `cargo bench --bench blocking [-- --mb N --reps N --parallelism P]`: argv holds
//! `--bench`, full mode (50 MB, 3 repetitions). Without `--bench` (as
//! `cargo test --benches` runs it): quick mode, 2 MB, one repetition (a few seconds).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{shmflow_exe, Res};

/// The blocking bench's flags.
#[derive(Parser)]
#[command(name = "blocking", about = "Blocking vs pipelined exchange through `shmflow run wordcount`")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Generated text in MB (default 50 in a full run, 2 in a quick one).
    #[arg(long, value_name = "N")]
    mb: Option<u64>,
    /// Repetitions of each exchange (default 3 in a full run, 1 in a quick one).
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Parallelism of the job.
    #[arg(long, value_name = "P", default_value_t = 2)]
    parallelism: u32,
}

struct Args {
    full: bool,
    mb: u64,
    reps: usize,
    parallelism: u32,
    json: Option<std::path::PathBuf>,
}

fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let full = c.bench.full;
    Ok(Args {
        full,
        mb: c.mb.unwrap_or(if full { 50 } else { 2 }),
        reps: c.reps.unwrap_or(if full { 3 } else { 1 }).max(1),
        parallelism: c.parallelism,
        json: c.bench.json,
    })
}

struct Run {
    words: u64,
    distinct: u64,
    elapsed_s: f64,
}

fn run(exe: &PathBuf, exchange: &str, a: &Args) -> Res<Run> {
    let out = Command::new(exe)
        .args(["run", "wordcount", "--generated-mb"])
        .arg(a.mb.to_string())
        .arg("--parallelism")
        .arg(a.parallelism.to_string())
        .args(["--workers", "2", "--exchange", exchange, "--json", "--quiet"])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{exchange} wordcount exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).ok_or_else(|| format!("summary has no {k:?}"));
    Ok(Run { words: get("words")? as u64, distinct: get("distinct_words")? as u64, elapsed_s: get("elapsed_s")? })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let a = parse_args()?;
    let exe = shmflow_exe()?;
    let t0 = Instant::now();
    let (mut pipe, mut block) = (Vec::new(), Vec::new());
    let mut check: Option<(u64, u64)> = None;
    for _ in 0..a.reps {
        for (name, rates) in [("pipelined", &mut pipe), ("blocking", &mut block)] {
            let r = run(&exe, name, &a)?;
            match check {
                None => check = Some((r.words, r.distinct)),
                Some(c) if c != (r.words, r.distinct) => {
                    return Err(format!("{name}: {} words / {} distinct, expected {c:?}", r.words, r.distinct).into())
                }
                Some(_) => {}
            }
            rates.push(r.words as f64 / r.elapsed_s);
        }
    }
    let (p, b) = (median(pipe), median(block));
    let (words, distinct) = check.unwrap_or_default();
    println!(
        "wordcount {} MB, parallelism {}, 2 workers, {} rep(s): {words} words, {distinct} distinct",
        a.mb, a.parallelism, a.reps
    );
    println!("  pipelined: {:>8.2} M words/s", p / 1e6);
    println!("  blocking : {:>8.2} M words/s  ({:.2}x pipelined)", b / 1e6, b / p);
    println!("  ({:.1} s in all)", t0.elapsed().as_secs_f64());
    if let Some(path) = &a.json {
        let run = if a.full { "full" } else { "quick" };
        let rec = |exchange: &str, v: f64| {
            format!(
                "  {{\"bench\":\"blocking\",\"run\":\"{run}\",\"system\":\"shmflow\",\"exchange\":\"{exchange}\",\"text_mb\":{},\"parallelism\":{},\"metric\":\"words_per_s\",\"value\":{v:.1}}}",
                a.mb, a.parallelism
            )
        };
        std::fs::write(path, format!("[\n{},\n{}\n]\n", rec("pipelined", p), rec("blocking", b)))?;
    }
    Ok(())
}
