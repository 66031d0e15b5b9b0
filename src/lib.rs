//! # shmflow
//!
//! A zero-copy shared-memory shuffle runtime: Apache Flink's network stack (RecordWriter,
//! ResultPartition, InputGate, credit-based flow control, backpressure) for worker processes
//! on one host, rebuilt over one shared-memory arena.
//!
//! ```text
//!  producer process                                           consumer process
//!  BufferBuilder == writes ==> [ segment in the shared arena ] <== reads in place == BufferConsumer
//!       ^                      data ring   (descriptors)  ---->                        |
//!       '--- LocalBufferPool <- credit ring (credits + recycled segments) <------------'
//!                              futex event counts for wake-ups in both directions
//! ```
//!
//! Layers, each using only those below it: [`sync`] (atomics, futex, wait policy) ←
//! [`memory`] (arena, layout, segments) ← [`buffer`] (pools, builder/consumer) ← [`ring`]
//! (SPSC rings, descriptors, channels, notify sets) ← [`record`] (wire format) ←
//! [`partition`] (ResultPartition, RecordWriter, selectors, directory) ← [`gate`]
//! (SingleInputGate, UnionInputGate) ← [`environment`] (ShuffleEnvironment).
//!
//! Invariants that hold everywhere:
//! - nothing in the arena is a pointer; every index or offset read from it is validated;
//! - a segment has exactly one writer, which never writes below its published position;
//! - a segment is recycled exactly once, by its last reader, through the credit ring.
//!
//! # Quick start: the network stack between processes
//!
//! One producer process and two consumer processes share one arena. The producer creates
//! it, passes its fd to the children ([`memory::Arena::inherit_fd_into`]); each child joins
//! it ([`ShuffleEnvironment::join_inherited`]). Records `(key, value)` are routed by key
//! exactly as Flink routes a `Long` key ([`partition::KeyGroupPartitioner::by_key`]), read
//! in place through the batch path ([`gate::SingleInputGate::drain_records`], falling back
//! to [`gate::SingleInputGate::next`] for waiting, events and the end), and every side
//! tears down in order: `finish`, `release_when_consumed`, drop.
//!
//! ```
//! use shmflow::prelude::*;
//! use std::process::{Command, Stdio};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! const PARTITION: ResultPartitionId = ResultPartitionId::new(1, 0);
//! const RECORDS: u64 = 20_000;
//!
//! /// A consumer: reads subpartition `index` to its end, prints "records value-sum".
//! fn consumer(index: u32) -> shmflow::Result<()> {
//!     let env = ShuffleEnvironment::join_inherited()?;
//!     let spec = InputSpec { partition: PARTITION, subpartition: index };
//!     let mut gate = env.create_input_gate(&InputGateConfig::new(vec![spec]))?;
//!     // Where the producer sends each key, to check that every key arrived here.
//!     let mut route = KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0);
//!     route.setup(2);
//!     let (mut n, mut sum) = (0u64, 0u64);
//!     loop {
//!         // Fast path: the whole records already published, borrowed from shared memory.
//!         let drained = gate.drain_records(1024, &mut |_channel, bytes| {
//!             let record: (u64, u64) = FromRecord::from_record(bytes)?;
//!             assert_eq!(route.select_channel(&record), index, "key {} is not mine", record.0);
//!             n += 1;
//!             sum += record.1;
//!             Ok(())
//!         })?;
//!         if drained > 0 {
//!             continue;
//!         }
//!         // Slow path: waits, and hands out records spanning segments, events and the end.
//!         match gate.next(Some(Duration::from_secs(30)))? {
//!             GateItem::Record { data, .. } => {
//!                 let (_key, value): (u64, u64) = FromRecord::from_record(data)?;
//!                 n += 1;
//!                 sum += value;
//!             }
//!             GateItem::End => break,
//!             _ => {}
//!         }
//!     }
//!     println!("{n} {sum}");
//!     // Dropping the gate returns its channels; dropping the environment marks the slot left.
//!     Ok(())
//! }
//!
//! fn main() -> shmflow::Result<()> {
//!     if let Ok(index) = std::env::var("QUICKSTART_CONSUMER") {
//!         return consumer(index.parse().expect("a subpartition index"));
//!     }
//!     let arena = Arc::new(Arena::create_memfd(&ArenaConfig::default(), "quickstart")?);
//!     let mut children = Vec::new();
//!     for index in 0..2 {
//!         let mut cmd = Command::new(std::env::current_exe()?);
//!         cmd.env("QUICKSTART_CONSUMER", index.to_string()).stdout(Stdio::piped());
//!         arena.inherit_fd_into(&mut cmd)?;
//!         children.push(cmd.spawn()?);
//!     }
//!     let env = ShuffleEnvironment::join(arena)?;
//!     let cfg = ResultPartitionConfig::new(PARTITION, ResultPartitionType::PipelinedBounded, 2);
//!     let by_key = KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0);
//!     let mut writer = env.create_record_writer(&cfg, by_key, BufferTimeout::from_millis(100)?)?;
//!     for i in 0..RECORDS {
//!         writer.emit(&(i % 1000, i))?;
//!     }
//!     // Teardown: end every subpartition, wait until the consumers read everything, then
//!     // drop (an unfinished partition would be failed on drop, its consumers told so).
//!     writer.finish()?;
//!     writer.partition_mut().release_when_consumed(Some(Duration::from_secs(30)))?;
//!     drop(writer);
//!     let (mut n, mut sum) = (0, 0);
//!     for child in children {
//!         let out = child.wait_with_output()?;
//!         assert!(out.status.success(), "a consumer failed");
//!         let text = String::from_utf8_lossy(&out.stdout).into_owned();
//!         let mut it = text.split_whitespace().map(|w| w.parse::<u64>().expect("a number"));
//!         n += it.next().expect("records");
//!         sum += it.next().expect("value sum");
//!     }
//!     assert_eq!((n, sum), (RECORDS, RECORDS * (RECORDS - 1) / 2));
//!     Ok(())
//! }
//! ```
//!
//! A process that only reads a named arena attaches it with [`memory::Arena::attach_path`]
//! and joins with [`ShuffleEnvironment::join`]. The `examples/` directory holds the same
//! exchange at scale (`keyed_numbers`, 5 M records, totals checked).
//!
//! # Quick start: the job runtime
//!
//! The [`runtime`] runs a job graph across worker processes: the coordinator starts this
//! same binary as its workers, which build the same graph and run their subtasks; [`runtime::run`]
//! returns the summary in the coordinator and `None` in a worker.
//!
//! ```
//! use shmflow::runtime::accumulators::{self, Accumulator};
//! use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig};
//!
//! /// The sink: one per subtask, in a worker process. Results go back to the coordinator
//! /// as accumulators.
//! struct Totals;
//!
//! impl Collector<(u64, u64)> for Totals {
//!     fn collect(&mut self, (_key, sum): (u64, u64)) -> shmflow::Result<()> {
//!         accumulators::add("keys", 1);
//!         accumulators::add("total", sum as i64);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> shmflow::Result<()> {
//!     let graph = JobBuilder::new("sum-by-key", 2)
//!         .source("numbers", |info, out| {
//!             // Each source subtask emits its share of 0..10_000.
//!             for i in (u64::from(info.subtask)..10_000).step_by(info.parallelism as usize) {
//!                 out.collect((i % 10, i))?;
//!             }
//!             Ok(())
//!         })
//!         .key_by(|r: &(u64, u64)| &r.0)
//!         .reduce("sum", |acc, r| acc.1 += r.1)
//!         // One (key, sum) per key once the input ended.
//!         .sink("totals", |_info| Ok(Box::new(Totals)));
//!     let config = RuntimeConfig { workers: 2, ..RuntimeConfig::default() };
//!     // In a worker process `run` runs its tasks and returns `None`; in the coordinator,
//!     // the summary once every task finished.
//!     if let Some(summary) = run(graph, &config)? {
//!         assert_eq!(summary.records, 10_000, "every record crossed the first exchange");
//!         assert_eq!(summary.accumulators.get("keys"), Some(&Accumulator::Sum(10)));
//!         assert_eq!(summary.accumulators.get("total"), Some(&Accumulator::Sum(10_000 * 9_999 / 2)));
//!         assert_eq!(summary.arena_free_after, summary.arena_segments, "no segment leaked");
//!     }
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

pub mod buffer;
pub mod environment;
pub mod error;
pub mod event;
pub mod gate;
pub mod memory;
pub mod metrics;
pub mod partition;
pub mod record;
pub mod ring;
pub mod runtime;
pub mod sync;

pub use environment::ShuffleEnvironment;

/// The types most programs use, in one import: `use shmflow::prelude::*;`.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate, UnionInputGate};
    pub use crate::memory::{Arena, ArenaConfig};
    pub use crate::partition::{
        BroadcastPartitioner, BufferTimeout, ChannelSelector, ForwardPartitioner, JavaHash, KeyGroupPartitioner,
        RebalancePartitioner, RecordWriter, ResultPartition, ResultPartitionConfig, ResultPartitionId,
        ResultPartitionType,
    };
    pub use crate::record::{FromRecord, Record};
    pub use crate::ShuffleEnvironment;
}
pub use error::{ArenaError, ConfigError, Error, PushError, Result, Violation};
