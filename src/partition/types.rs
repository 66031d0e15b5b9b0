//! `ResultPartitionType` and `ResultPartitionId`.

use crate::error::{ConfigError, Error, Result};

/// How a result partition behaves, with Flink's five flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ResultPartitionType {
    /// Consumed while produced, bounded by the pool (backpressure). Flink's PIPELINED is
    /// unbounded in theory; here memory is always bounded, so both pipelined kinds behave
    /// alike and differ only in their flags.
    Pipelined = 1,
    /// Pipelined with a bounded number of buffers: Flink's default for streaming.
    PipelinedBounded = 2,
    /// Pipelined, and may lose data on failure in exchange for faster recovery.
    PipelinedApproximate = 3,
    /// Written completely to files before consumption; released after consumption.
    Blocking = 4,
    /// Blocking, and kept until released explicitly.
    BlockingPersistent = 5,
}

impl ResultPartitionType {
    /// Can the partition be consumed while being produced?
    pub fn is_pipelined(self) -> bool {
        matches!(self, Self::Pipelined | Self::PipelinedBounded | Self::PipelinedApproximate)
    }

    /// Does the partition produce back pressure when not consumed?
    pub fn has_back_pressure(self) -> bool {
        self.is_pipelined()
    }

    /// Does it use a limited number of (network) buffers?
    pub fn is_bounded(self) -> bool {
        matches!(self, Self::PipelinedBounded | Self::PipelinedApproximate)
    }

    /// Is it kept after consumption until released explicitly?
    pub fn is_persistent(self) -> bool {
        matches!(self, Self::BlockingPersistent)
    }

    /// Can a consumer reconnect and read it again?
    pub fn is_reconnectable(self) -> bool {
        matches!(self, Self::PipelinedApproximate | Self::Blocking | Self::BlockingPersistent)
    }

    /// Whether a partition of this type lives in the arena (a [`ResultPartition`](super::ResultPartition)).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for the blocking types: they are files, written by a
    /// [`BlockingResultPartition`](super::BlockingResultPartition).
    pub fn check_supported(self) -> Result<()> {
        if self.is_pipelined() {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{self:?} result partitions in the arena (blocking partitions are files: use BlockingResultPartition)"
            )))
        }
    }

    /// The code stored in the partition directory.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// From a directory code (read from shared memory).
    pub fn from_code(c: u32) -> Option<Self> {
        Some(match c {
            1 => Self::Pipelined,
            2 => Self::PipelinedBounded,
            3 => Self::PipelinedApproximate,
            4 => Self::Blocking,
            5 => Self::BlockingPersistent,
            _ => return None,
        })
    }
}

impl std::str::FromStr for ResultPartitionType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "pipelined" => Self::Pipelined,
            "pipelined_bounded" => Self::PipelinedBounded,
            "pipelined_approximate" => Self::PipelinedApproximate,
            "blocking" => Self::Blocking,
            "blocking_persistent" => Self::BlockingPersistent,
            _ => {
                return Err(ConfigError::Unknown {
                    what: "result partition type",
                    name: s.into(),
                    known: "pipelined, pipelined_bounded, pipelined_approximate, blocking, blocking_persistent",
                }
                .into())
            }
        })
    }
}

/// Identifies one result partition: the intermediate result partition and the producing
/// execution attempt (Flink's IntermediateResultPartitionID + ExecutionAttemptID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultPartitionId {
    /// The intermediate result partition.
    pub partition: u64,
    /// The producing attempt.
    pub attempt: u64,
}

impl ResultPartitionId {
    /// An id.
    pub const fn new(partition: u64, attempt: u64) -> Self {
        Self { partition, attempt }
    }
}

impl std::fmt::Display for ResultPartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}@{:x}", self.partition, self.attempt)
    }
}

/// The result of a partition's batch write: on an error, how many records were written
/// before the failing one, and the error.
pub type BatchResult<T> = std::result::Result<T, (usize, Error)>;
