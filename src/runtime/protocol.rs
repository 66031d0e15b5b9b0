//! The control protocol between the coordinator and its workers: one JSON object per line
//! over a Unix socket pair the worker inherits.

use super::execution::SubtaskSpec;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Coordinator to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run these subtasks.
    Deploy {
        /// This worker's slot.
        worker: u32,
        /// The subtasks.
        subtasks: Vec<SubtaskSpec>,
    },
    /// Stop every task and exit.
    Cancel,
}

/// Worker to coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker attached to the arena.
    Hello {
        /// Its pid.
        pid: u32,
    },
    /// A subtask started; its counters are in task metrics block `metrics_slot`.
    TaskRunning {
        /// Vertex.
        vertex: usize,
        /// Subtask.
        subtask: u32,
        /// Task metrics block.
        metrics_slot: u32,
    },
    /// The first record was written into a partition (Flink's "partition consumable").
    PartitionConsumable {
        /// The partition id.
        partition: (u64, u64),
    },
    /// A subtask finished.
    TaskFinished {
        /// Vertex.
        vertex: usize,
        /// Subtask.
        subtask: u32,
    },
    /// A subtask failed.
    TaskFailed {
        /// Vertex.
        vertex: usize,
        /// Subtask.
        subtask: u32,
        /// Why.
        error: String,
    },
}

/// Writes one message as a line.
///
/// # Errors
/// The socket's write error.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one message; `Ok(None)` at end of stream. Lines above 16 MiB are refused.
///
/// # Errors
/// A read error or a malformed line.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, 16 << 20).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad control message: {e}")))
}
