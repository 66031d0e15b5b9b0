//! The control protocol between the coordinator and its workers: one JSON object per line
//! over a Unix socket pair the worker inherits. A line (newline included) is at most
//! [`MAX_MESSAGE`] bytes; both sides refuse longer ones.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Environment variable naming the worker's control socket fd.
pub const CONTROL_FD_ENV: &str = "SHMFLOW_CONTROL_FD";

/// Environment variable in which the coordinator passes its workers the heartbeat interval
/// in milliseconds (a worker without it derives one from its own
/// [`RuntimeConfig`](super::RuntimeConfig)).
pub const HEARTBEAT_INTERVAL_ENV: &str = "SHMFLOW_HEARTBEAT_INTERVAL_MS";

/// Environment variable in which the coordinator passes its workers a token of its own run
/// (unique per `run` call); a worker echoes it in [`FromWorker::Hello`] and the coordinator
/// refuses a worker that brings another.
pub const RUN_TOKEN_ENV: &str = "SHMFLOW_RUN_TOKEN";

/// The produced side of one subtask: its result partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Edge index (= producer vertex index).
    pub edge: usize,
    /// `ResultPartitionId` as (partition, attempt).
    pub partition: (u64, u64),
    /// `ResultPartitionType` code.
    pub partition_type: u32,
    /// Subpartitions.
    pub num_subpartitions: u32,
}

/// The consumed side of one subtask: its gate's channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpecs {
    /// Edge index (= producer vertex index).
    pub edge: usize,
    /// (partition, attempt, subpartition) per channel.
    pub channels: Vec<(u64, u64, u32)>,
    /// `ResultPartitionType` code of the edge (0: pipelined, for older descriptors).
    #[serde(default)]
    pub partition_type: u32,
}

/// One execution vertex: what a TaskExecutor needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSpec {
    /// Job vertex index.
    pub vertex: usize,
    /// The vertex's name in the coordinator's graph: a worker whose graph names that vertex
    /// otherwise built another job and refuses the deployment.
    pub name: String,
    /// Subtask index.
    pub subtask: u32,
    /// Parallelism of the vertex.
    pub parallelism: u32,
    /// Its output partition.
    pub output: Option<OutputSpec>,
    /// Its input gate.
    pub input: Option<InputSpecs>,
}

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
    /// The worker attached to the arena: who it is and which job its `run` call builds.
    /// The coordinator deploys nothing to a worker before its Hello, and refuses one whose
    /// token, job name or graph is not its own (a worker that reached another `run` call of
    /// the same binary, as a `#[test]` binary's other test does).
    Hello {
        /// Its pid.
        pid: u32,
        /// The [`RUN_TOKEN_ENV`] it was started with.
        #[serde(default)]
        token: String,
        /// The name of the job its `run` call builds.
        #[serde(default)]
        job: String,
        /// That job's graph, described ([`JobGraph::shape`](super::JobGraph::shape)).
        #[serde(default)]
        graph: String,
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
        /// Its accumulators.
        #[serde(default)]
        accumulators: super::accumulators::Accumulators,
    },
    /// A subtask failed.
    TaskFailed {
        /// Vertex.
        vertex: usize,
        /// Subtask.
        subtask: u32,
        /// Why.
        error: String,
        /// Whether the error is a consequence of a failure elsewhere (cancelled, consumer
        /// gone, producer failed) rather than a cause: the coordinator reports a cause
        /// first.
        #[serde(default)]
        symptom: bool,
    },
    /// The worker is alive: sent every heartbeat interval by a thread of its own, so a
    /// busy worker still sends it and a stopped or hung one does not.
    Heartbeat,
}

/// The longest control message line, newline included: 16 MiB.
pub const MAX_MESSAGE: usize = 16 << 20;

fn too_long(detail: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("control message exceeds 16 MiB ({detail})"))
}

/// One message as a line, ready to write.
///
/// # Errors
/// A serialization error, or [`std::io::ErrorKind::InvalidData`] when the line would exceed
/// [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(msg: &T) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    if line.len() > MAX_MESSAGE {
        return Err(too_long(format!("{} bytes", line.len())));
    }
    Ok(line)
}

/// Writes one message as a line.
///
/// # Errors
/// The socket's write error, or an [`encode`] error (nothing is written then).
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let line = encode(msg)?;
    w.write_all(&line)?;
    w.flush()
}

/// Reads one message; `Ok(None)` at end of stream. Lines above [`MAX_MESSAGE`] are refused.
///
/// # Errors
/// A read error; [`std::io::ErrorKind::InvalidData`] for a malformed line or one longer
/// than [`MAX_MESSAGE`] ("control message exceeds 16 MiB"; the stream is then mid-line and
/// cannot be read on); [`std::io::ErrorKind::UnexpectedEof`] when the stream ends inside a
/// line (the writer died while writing it).
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_MESSAGE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if n >= MAX_MESSAGE {
            return Err(too_long(format!("no newline in the first {n} bytes")));
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the control stream ended inside a message ({n} bytes without a newline)"),
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad control message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn a_line_over_the_limit_is_reported_as_too_long() {
        let mut big = vec![b'x'; MAX_MESSAGE + 10];
        big.push(b'\n');
        let e = recv::<FromWorker>(&mut BufReader::new(&big[..])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("control message exceeds 16 MiB"), "{e}");
        // Exactly at the limit is a line like any other (here: not JSON).
        let mut edge = vec![b' '; MAX_MESSAGE - 1];
        edge.push(b'\n');
        let e = recv::<FromWorker>(&mut BufReader::new(&edge[..])).unwrap_err();
        assert!(e.to_string().contains("bad control message"), "{e}");
    }

    #[test]
    fn a_truncated_last_line_is_an_unexpected_eof_and_garbage_is_invalid_data() {
        let e = recv::<FromWorker>(&mut BufReader::new(&b"{\"Hello\":{\"pid\":1}"[..])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let e = recv::<FromWorker>(&mut BufReader::new(&b"garbage\n"[..])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let mut r = BufReader::new(&b"\"Heartbeat\"\n{\"Hello\":{\"pid\":7}}\n"[..]);
        assert!(matches!(recv::<FromWorker>(&mut r).unwrap(), Some(FromWorker::Heartbeat)));
        assert!(matches!(recv::<FromWorker>(&mut r).unwrap(), Some(FromWorker::Hello { pid: 7, .. })));
        assert!(recv::<FromWorker>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_anything_is_written() {
        let msg = FromWorker::TaskFailed { vertex: 0, subtask: 0, error: "e".repeat(MAX_MESSAGE), symptom: false };
        let mut out = Vec::new();
        let e = send(&mut out, &msg).unwrap_err();
        assert!(e.to_string().contains("control message exceeds 16 MiB"), "{e}");
        assert!(out.is_empty());
        send(&mut out, &FromWorker::Heartbeat).unwrap();
        assert_eq!(out, b"\"Heartbeat\"\n");
    }
}
