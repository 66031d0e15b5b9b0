//! The `keyed_numbers` exchange through the job runtime: sources emit `(i % 1000, i)`, a
//! keyed reduce sums the values per key, and each sink subtask checks, when its input ends,
//! that every key routed to it arrived with its exact sum (and no other key did), and hands
//! its keys' sums back to the coordinator as accumulators, which checks the grand total. A
//! wrong total fails the job.
//!
//! ```sh
//! cargo run --release --example keyed_numbers_job            # 5 M records
//! cargo run --release --example keyed_numbers_job -- 100000  # any count
//! ```

use shmflow::partition::{ChannelSelector, KeyGroupPartitioner};
use shmflow::runtime::accumulators::{self, Accumulator};
use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig, TaskInfo};
use std::collections::HashMap;

const KEYS: u64 = 1000;
const PARALLELISM: u32 = 2;

/// The exact sum of the values `i < records` with `i % KEYS == key`.
fn expected_sum(records: u64, key: u64) -> u64 {
    // i = key + KEYS * j for j in 0..count.
    let count = if key < records { (records - key).div_ceil(KEYS) } else { 0 };
    key * count + KEYS * (count * count.saturating_sub(1) / 2)
}

/// Keeps the sum of each key (the reduce emits one per key when its input ends); checks
/// them all when its own input ends.
struct CheckSums {
    records: u64,
    subtask: u32,
    last: HashMap<u64, u64>,
}

impl Collector<(u64, u64)> for CheckSums {
    fn collect(&mut self, (key, sum): (u64, u64)) -> shmflow::Result<()> {
        self.last.insert(key, sum);
        Ok(())
    }

    fn finish(&mut self) -> shmflow::Result<()> {
        // The keys the key-by exchange routes to this subtask.
        let mut route = KeyGroupPartitioner::by_key(|k: &u64| k);
        route.setup(PARALLELISM);
        for key in (0..KEYS.min(self.records)).filter(|k| route.select_channel(k) == self.subtask) {
            let want = expected_sum(self.records, key);
            match self.last.remove(&key) {
                Some(got) if got == want => {
                    // Back to the coordinator, summed over every subtask.
                    accumulators::add("keys", 1);
                    accumulators::add("value sum", i64::try_from(got).unwrap_or(i64::MAX));
                }
                got => {
                    return Err(shmflow::Error::JobFailed(format!(
                        "key {key}: sum {got:?}, expected {want} (subtask {})",
                        self.subtask
                    )))
                }
            }
        }
        if let Some(k) = self.last.keys().next() {
            return Err(shmflow::Error::JobFailed(format!("key {k} reached the wrong subtask {}", self.subtask)));
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| format!("the record count {a:?} is not a number"))?,
        None => 5_000_000,
    };
    let graph = JobBuilder::new("keyed-numbers", PARALLELISM)
        .source("numbers", move |info: &TaskInfo, out| {
            for i in (u64::from(info.subtask)..records).step_by(info.parallelism as usize) {
                out.collect((i % KEYS, i))?;
            }
            Ok(())
        })
        .key_by(|r: &(u64, u64)| &r.0)
        .reduce("sum", |acc, r| acc.1 += r.1)
        .sink("check", move |info| Ok(Box::new(CheckSums { records, subtask: info.subtask, last: HashMap::new() })));
    if let Some(s) = run(graph, &RuntimeConfig { workers: 2, ..RuntimeConfig::default() })? {
        if s.records != records {
            return Err(format!("{} records crossed the key-by exchange, expected {records}", s.records).into());
        }
        let want = (u128::from(records) * u128::from(records.saturating_sub(1)) / 2) as i64;
        let got = (s.accumulators.get("keys"), s.accumulators.get("value sum"));
        let keys = KEYS.min(records) as i64;
        if got != (Some(&Accumulator::Sum(keys)), Some(&Accumulator::Sum(want))) {
            return Err(format!("the sinks handed back {got:?}, expected {keys} keys summing to {want}").into());
        }
        println!(
            "{records} records through the runtime in {:.3} s ({:.1} M records/s); every key's sum matches, \
             and so does their total in the accumulators",
            s.elapsed_s,
            s.records_per_s / 1e6
        );
    }
    Ok(())
}
