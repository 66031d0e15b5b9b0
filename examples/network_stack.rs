//! The network stack without the job runtime: one producer process writes records through a
//! `RecordWriter` (key-hash selector) into a result partition; two consumer processes read
//! their subpartition through an `InputGate`, in place from shared memory.
//!
//! ```sh
//! cargo run --release --example network_stack
//! ```

use shmflow::prelude::*;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const PARTITION: ResultPartitionId = ResultPartitionId::new(1, 0);
const RECORDS: u64 = 1_000_000;

fn consumer(index: u32) -> shmflow::Result<()> {
    let env = ShuffleEnvironment::join_inherited()?;
    let mut gate =
        env.create_input_gate(&InputGateConfig::new(vec![InputSpec { partition: PARTITION, subpartition: index }]))?;
    let (mut n, mut sum) = (0u64, 0u64);
    loop {
        match gate.next(Some(Duration::from_secs(30)))? {
            GateItem::Record { data, .. } => {
                // Borrowed straight from the producer's segment: no copy.
                let (key, value): (&str, u64) = FromRecord::from_record(data)?;
                debug_assert!(key.starts_with("user-"));
                n += 1;
                sum += value;
            }
            GateItem::End => break,
            _ => {}
        }
    }
    println!("consumer {index}: {n} records, value sum {sum}");
    Ok(())
}

fn main() -> shmflow::Result<()> {
    if let Ok(i) = std::env::var("EXAMPLE_CONSUMER") {
        return consumer(i.parse().unwrap_or(0));
    }
    let arena = Arc::new(Arena::create_memfd(&ArenaConfig::default(), "example")?);
    let mut children = Vec::new();
    for i in 0..2 {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env("EXAMPLE_CONSUMER", i.to_string());
        arena.inherit_fd_into(&mut cmd)?;
        children.push(cmd.spawn()?);
    }
    let env = ShuffleEnvironment::join(arena)?;
    let cfg = ResultPartitionConfig::new(PARTITION, ResultPartitionType::PipelinedBounded, 2);
    // Routed by the key as Flink routes a String key.
    let selector = KeyGroupPartitioner::by_key(|r: &(String, u64)| r.0.as_str());
    let mut writer = env.create_record_writer(&cfg, selector, BufferTimeout::from_millis(100)?)?;
    let start = std::time::Instant::now();
    for i in 0..RECORDS {
        writer.emit(&(format!("user-{}", i % 5000), i))?;
    }
    writer.finish()?;
    writer.partition_mut().release_when_consumed(Some(Duration::from_secs(30)))?;
    for mut c in children {
        let _ = c.wait();
    }
    println!(
        "producer: {RECORDS} records in {:.3} s; expected value sum {}",
        start.elapsed().as_secs_f64(),
        RECORDS * (RECORDS - 1) / 2
    );
    Ok(())
}
