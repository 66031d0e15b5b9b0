//! The library example of README.md ("As a library"), verbatim below this comment:
//! `tests/examples.rs` checks that README's block is this file's code and runs it. A
//! keyed sum over 4 subtasks: each source subtask emits its share of 0..1_000_000 (key
//! `i % 100`), the sums come back to the coordinator as accumulators and it prints one
//! line per key, `key NN: sum`.
//!
//! ```sh
//! cargo run --release --example readme_sums
//! ```

use shmflow::runtime::accumulators::{self, Accumulator};
use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig};

/// The sink: one per subtask, in a worker process. A worker's stdin and stdout are
/// /dev/null (a `println!` there prints nothing), so results go back to the coordinator as
/// accumulators (stderr is inherited: `eprintln!` works for diagnostics).
struct Sums;

impl Collector<(u64, u64)> for Sums {
    fn collect(&mut self, (key, sum): (u64, u64)) -> shmflow::Result<()> {
        accumulators::add(&format!("key {key:02}"), sum as i64);
        Ok(())
    }
}

fn main() -> shmflow::Result<()> {
    let job = JobBuilder::new("my-job", 4)
        .source("numbers", |info, out: &mut dyn Collector<(u64, u64)>| {
            // Each of the 4 source subtasks emits its own share of 0..1_000_000.
            for i in (u64::from(info.subtask)..1_000_000).step_by(info.parallelism as usize) {
                out.collect((i % 100, i))?;
            }
            Ok(())
        })
        .key_by(|r: &(u64, u64)| &r.0)
        .reduce("sum", |acc, r| acc.1 += r.1)
        .sink("sums", |_| Ok(Box::new(Sums) as Box<dyn Collector<(u64, u64)>>));
    // This process is the coordinator; the workers re-run this binary with the same
    // arguments and get `None` (see `run`'s docs).
    if let Some(summary) = run(job, &RuntimeConfig::default())? {
        for (name, a) in &summary.accumulators {
            if let Accumulator::Sum(sum) = a {
                println!("{name}: {sum}");
            }
        }
    }
    Ok(())
}
