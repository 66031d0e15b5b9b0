//! Events that travel between producer and consumer besides records.
//!
//! EndOfPartition and EndOfData fit in a descriptor; a checkpoint barrier takes three ring
//! slots (aligned barriers on the data ring, unaligned ones on the priority ring, so they
//! overtake queued data); a user event is serialized into its own segment.

pub use crate::ring::BarrierDescriptor as CheckpointBarrier;

/// An event a producer can send to its consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing more will come on this channel.
    EndOfPartition,
    /// The producer's input ended (Flink's EndOfData); events may still follow.
    EndOfData,
    /// A checkpoint barrier.
    CheckpointBarrier(CheckpointBarrier),
    /// Application bytes (at most a segment minus 4 bytes).
    User(Vec<u8>),
}
