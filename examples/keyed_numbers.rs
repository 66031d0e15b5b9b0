//! The network stack without the job runtime, at scale: one producer process moves keyed
//! `(u64, u64)` records (key `i % 1000`, value `i`) through a `RecordWriter` routing by key
//! as Flink routes a `Long`, into two consumer processes that read their subpartition with
//! the `drain_records` batch path. Each consumer checks that every key it got is routed to
//! it; the producer checks the consumers' record counts and value sums against the exact
//! totals and fails otherwise.
//!
//! ```sh
//! cargo run --release --example keyed_numbers            # 5 M records
//! cargo run --release --example keyed_numbers -- 100000  # any count
//! cargo run --release --example keyed_numbers -- 5000000 next  # consumers read with next() only
//! ```

use shmflow::prelude::*;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITION: ResultPartitionId = ResultPartitionId::new(1, 0);
const KEYS: u64 = 1000;
const CONSUMERS: u32 = 2;
/// Set in the consumer processes: the subpartition they read.
const ROLE_ENV: &str = "KEYED_NUMBERS_CONSUMER";
/// Set in the consumer processes to read with `next()` only (to compare with the batch path).
const NEXT_ONLY_ENV: &str = "KEYED_NUMBERS_NEXT_ONLY";

/// Routes by key as Flink routes a `Long` key, over the two consumers.
fn by_key() -> impl ChannelSelector<(u64, u64)> {
    let mut s = KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0);
    s.setup(CONSUMERS);
    s
}

fn consumer(index: u32) -> shmflow::Result<()> {
    let env = ShuffleEnvironment::join_inherited()?;
    let mut gate =
        env.create_input_gate(&InputGateConfig::new(vec![InputSpec { partition: PARTITION, subpartition: index }]))?;
    let mut route = by_key();
    let (mut n, mut sum, mut misrouted) = (0u64, 0u64, 0u64);
    let mut take = |record: (u64, u64)| {
        if route.select_channel(&record) != index {
            misrouted += 1;
        }
        n += 1;
        sum = sum.wrapping_add(record.1);
    };
    let next_only = std::env::var_os(NEXT_ONLY_ENV).is_some();
    loop {
        if !next_only {
            let drained = gate.drain_records(4096, &mut |_, bytes| {
                take(FromRecord::from_record(bytes)?);
                Ok(())
            })?;
            if drained > 0 {
                continue;
            }
        }
        match gate.next(Some(Duration::from_secs(60)))? {
            GateItem::Record { data, .. } => take(FromRecord::from_record(data)?),
            GateItem::End => break,
            _ => {}
        }
    }
    println!("{n} {sum} {misrouted}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(i) = std::env::var(ROLE_ENV) {
        return Ok(consumer(i.parse()?)?);
    }
    let records: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| format!("the record count {a:?} is not a number"))?,
        None => 5_000_000,
    };
    let arena = Arc::new(Arena::create_memfd(&ArenaConfig::default(), "keyed-numbers")?);
    let mut children = Vec::new();
    for i in 0..CONSUMERS {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, i.to_string()).stdout(Stdio::piped());
        if std::env::args().nth(2).as_deref() == Some("next") {
            cmd.env(NEXT_ONLY_ENV, "1");
        }
        arena.inherit_fd_into(&mut cmd)?;
        children.push(cmd.spawn()?);
    }
    let env = ShuffleEnvironment::join(arena)?;
    let cfg = ResultPartitionConfig::new(PARTITION, ResultPartitionType::PipelinedBounded, CONSUMERS);
    let mut writer = env.create_record_writer(&cfg, by_key(), BufferTimeout::from_millis(100)?)?;
    let start = Instant::now();
    for i in 0..records {
        writer.emit(&(i % KEYS, i))?;
    }
    writer.finish()?;
    writer.partition_mut().release_when_consumed(Some(Duration::from_secs(60)))?;
    let secs = start.elapsed().as_secs_f64();
    drop(writer);
    let (mut n, mut sum, mut misrouted) = (0u64, 0u64, 0u64);
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("consumer {i} failed ({}): {text}", out.status).into());
        }
        let v: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [cn, cs, cm] = v[..] else {
            return Err(format!("consumer {i} said {text:?}, not three numbers").into());
        };
        println!("consumer {i}: {cn} records");
        n += cn;
        sum = sum.wrapping_add(cs);
        misrouted += cm;
    }
    let want_sum = (u128::from(records) * u128::from(records.saturating_sub(1)) / 2) as u64;
    if (n, sum, misrouted) != (records, want_sum, 0) {
        return Err(format!(
            "totals differ: {n} records (expected {records}), value sum {sum} (expected {want_sum}), \
             {misrouted} records at the wrong consumer"
        )
        .into());
    }
    println!(
        "{records} records through the network stack in {secs:.3} s ({:.1} M records/s); totals match",
        records as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}
