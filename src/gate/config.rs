//! How a gate is made: its channels ([`InputSpec`]) and settings ([`InputGateConfig`]), a
//! plain descriptor a task gets from its deployment.

use super::debloat::DebloatConfig;
use crate::partition::{FileChannelManager, RequestBackoff, ResultPartitionId};
use crate::sync::WaitPolicy;
use std::time::Duration;

/// One channel of a gate: which subpartition of which partition it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    /// The producer's partition.
    pub partition: ResultPartitionId,
    /// The subpartition this gate reads.
    pub subpartition: u32,
}

/// How to create a gate (a plain descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputGateConfig {
    /// One channel per entry, in this order.
    pub inputs: Vec<InputSpec>,
    /// Exclusive credits per channel (Flink: buffers-per-channel, 2).
    pub exclusive_credits: u32,
    /// Floating credits of the gate, granted to channels with the largest backlog (8).
    pub floating_credits: u32,
    /// How the gate waits for input.
    pub wait_policy: WaitPolicy,
    /// Partition request backoff while producers have not registered yet.
    pub backoff: RequestBackoff,
    /// Records served from one channel before moving to the next (fairness).
    pub batch: u32,
    /// The consumer's worker slot, recorded in each channel so producers can tell if this
    /// process dies (set by the ShuffleEnvironment).
    pub worker: Option<u32>,
    /// Buffer debloating (Flink's FLIP-183), off when `None`.
    pub debloat: Option<DebloatConfig>,
    /// How often a waiting gate checks that its producers are alive: a dead producer is
    /// reported within about this long (default 100 ms).
    pub liveness_interval: Duration,
    /// Where the files of blocking input partitions are (`None`: from the environment,
    /// [`FileChannelManager::from_env`], when the gate meets a blocking partition).
    pub blocking_files: Option<FileChannelManager>,
}

impl InputGateConfig {
    /// Flink's defaults over `inputs`.
    pub fn new(inputs: Vec<InputSpec>) -> Self {
        Self {
            inputs,
            exclusive_credits: 2,
            floating_credits: 8,
            wait_policy: WaitPolicy::adaptive(),
            backoff: RequestBackoff::default(),
            batch: 64,
            worker: None,
            debloat: None,
            liveness_interval: Duration::from_millis(100),
            blocking_files: None,
        }
    }
}
