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
pub use error::{ArenaError, Error, Result};
