//! The execution graph: each job vertex of parallelism p becomes p execution vertices
//! (subtasks); each edge becomes an IntermediateResult with one
//! IntermediateResultPartition per producer subtask, wired to the consumers' input gates by
//! the edge's selector. A vertex with several inputs (a union) has one gate over the
//! channels of all of them.
//!
//! ```text
//!  all-to-all (key-hash, rebalance, broadcast, global): producer i has p_consumer
//!      subpartitions; consumer j reads subpartition j of every producer
//!  pointwise (forward, rescale): each consumer reads a contiguous subset of producers, or
//!      each producer feeds a contiguous subset of consumers
//! ```

use super::job::{Collector, Data, EdgeSpec, JobGraph, TaskInfo};
use crate::error::{Error, Result};
use crate::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use crate::metrics::TaskMetricsHandle;
use crate::partition::{
    AnyPartition, BlockingResultPartition, BufferTimeout, ChannelSelector, FileChannelManager, RecordWriter,
    RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType, SelectorKind,
};
use crate::sync::{AtomicBool, Ordering, WaitPolicy};
use crate::ShuffleEnvironment;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
    /// Subtask index.
    pub subtask: u32,
    /// Parallelism of the vertex.
    pub parallelism: u32,
    /// Its output partition.
    pub output: Option<OutputSpec>,
    /// Its input gate.
    pub input: Option<InputSpecs>,
}

/// The expanded job.
#[derive(Debug, Clone)]
pub struct ExecutionGraph {
    /// Every subtask, vertex by vertex.
    pub subtasks: Vec<SubtaskSpec>,
}

/// The partition id of producer subtask `i` on edge `edge`.
pub fn partition_id(edge: usize, i: u32, attempt: u64) -> ResultPartitionId {
    ResultPartitionId::new(((edge as u64) << 32) | u64::from(i), attempt)
}

impl ExecutionGraph {
    /// Expands `job`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a forward edge between different parallelisms.
    pub fn build(job: &JobGraph, attempt: u64) -> Result<Self> {
        let mut subtasks = Vec::new();
        for (v, vx) in job.vertices.iter().enumerate() {
            // The consumer of this vertex's output, and the edge to it.
            let out_edge = job
                .vertices
                .iter()
                .find_map(|n| n.inputs.iter().find(|(u, _)| *u == v).map(|&(_, e)| (e, n.parallelism)));
            if let Some(&(u, _)) = vx.inputs.iter().find(|(u, _)| *u >= v) {
                return Err(Error::Invalid {
                    what: "job graph",
                    detail: format!("vertex {v} reads vertex {u}, which does not come before it"),
                });
            }
            if vx
                .inputs
                .windows(2)
                .any(|w| w[0].1.partition_type.is_pipelined() != w[1].1.partition_type.is_pipelined())
            {
                return Err(Error::Invalid {
                    what: "job graph",
                    detail: format!("the inputs of vertex {v} ({}) mix pipelined and blocking exchanges", vx.name),
                });
            }
            for i in 0..vx.parallelism {
                let output = out_edge.map(|(e, pc)| OutputSpec {
                    edge: v,
                    partition: {
                        let id = partition_id(v, i, attempt);
                        (id.partition, id.attempt)
                    },
                    partition_type: e.partition_type.code(),
                    num_subpartitions: Self::subpartitions(&e, vx.parallelism, pc, i),
                });
                let input = match vx.inputs.first() {
                    None => None,
                    Some(&(first, e)) => {
                        let mut channels = Vec::new();
                        for &(u, e) in &vx.inputs {
                            let pp = job.vertices[u].parallelism;
                            channels.extend(Self::channels(&e, pp, vx.parallelism, i, u, attempt)?);
                        }
                        Some(InputSpecs { edge: first, channels, partition_type: e.partition_type.code() })
                    }
                };
                subtasks.push(SubtaskSpec { vertex: v, subtask: i, parallelism: vx.parallelism, output, input });
            }
        }
        Ok(Self { subtasks })
    }

    fn subpartitions(e: &EdgeSpec, pp: u32, pc: u32, i: u32) -> u32 {
        match e.selector {
            SelectorKind::Forward => 1,
            SelectorKind::Rescale if pc >= pp => (0..pc).filter(|j| j * pp / pc == i).count().max(1) as u32,
            SelectorKind::Rescale => 1,
            _ => pc,
        }
    }

    fn channels(e: &EdgeSpec, pp: u32, pc: u32, j: u32, edge: usize, attempt: u64) -> Result<Vec<(u64, u64, u32)>> {
        let id = |i: u32| {
            let p = partition_id(edge, i, attempt);
            (p.partition, p.attempt)
        };
        Ok(match e.selector {
            SelectorKind::Forward => {
                if pp != pc {
                    return Err(Error::Invalid {
                        what: "forward edge",
                        detail: format!("parallelism {pp} -> {pc}: forward needs equal parallelism"),
                    });
                }
                let (a, b) = id(j);
                vec![(a, b, 0)]
            }
            SelectorKind::Rescale if pc >= pp => {
                let i = j * pp / pc;
                let index = (0..j).filter(|k| k * pp / pc == i).count() as u32;
                let (a, b) = id(i);
                vec![(a, b, index)]
            }
            SelectorKind::Rescale => (0..pp)
                .filter(|i| i * pc / pp == j)
                .map(|i| {
                    let (a, b) = id(i);
                    (a, b, 0)
                })
                .collect(),
            _ => (0..pp)
                .map(|i| {
                    let (a, b) = id(i);
                    (a, b, j)
                })
                .collect(),
        })
    }

    /// Total channels (subpartitions) the job needs.
    pub fn channels_needed(&self) -> u64 {
        self.subtasks.iter().filter_map(|s| s.output.as_ref()).map(|o| u64::from(o.num_subpartitions)).sum()
    }

    /// Gate blocks the job needs (a notify set per partition and per gate).
    pub fn gates_needed(&self) -> u64 {
        self.subtasks.iter().map(|s| u64::from(s.output.is_some()) + u64::from(s.input.is_some())).sum()
    }
}

/// Runtime settings every task shares.
#[derive(Debug, Clone, Copy)]
pub struct TaskSettings {
    /// Flink's buffer timeout.
    pub buffer_timeout: BufferTimeout,
    /// How tasks wait.
    pub wait_policy: WaitPolicy,
    /// Partition request backoff.
    pub backoff: RequestBackoff,
    /// Buffer debloating on every gate (off when `None`).
    pub debloat: Option<crate::gate::DebloatConfig>,
}

/// Events a task reports to its TaskExecutor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The first record was written into this partition.
    PartitionConsumable((u64, u64)),
}

/// A subtask's access to its input gate and output partition.
pub struct TaskIo {
    env: ShuffleEnvironment,
    spec: SubtaskSpec,
    settings: TaskSettings,
    cancel: Arc<AtomicBool>,
    metrics: Option<TaskMetricsHandle>,
    events: std::sync::mpsc::Sender<TaskEvent>,
    /// Records read from the input.
    pub records_in: u64,
}

impl std::fmt::Debug for TaskIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskIo({:?})", self.spec)
    }
}

/// The output collector of a vertex that ends in an exchange: owns its record writer (no
/// shared cell) over the partition the edge asks for, pipelined or blocking
/// ([`AnyPartition`]), which serializes each record in place. The task flushes it through
/// [`Collector::flush`] when it waits for input.
pub struct ExchangeOut<T, S> {
    writer: RecordWriter<S, AnyPartition>,
    /// Told at the first record (a pipelined partition is consumable once it has data).
    at_first_record: Option<(std::sync::mpsc::Sender<TaskEvent>, (u64, u64))>,
    /// Told once finished (a blocking partition is consumable once complete).
    at_finish: Option<(std::sync::mpsc::Sender<TaskEvent>, (u64, u64))>,
    _t: std::marker::PhantomData<fn(T)>,
}

/// Tells the TaskExecutor that the partition is consumable (once).
#[cold]
fn announce(consumable: &mut Option<(std::sync::mpsc::Sender<TaskEvent>, (u64, u64))>) {
    if let Some((tx, id)) = consumable.take() {
        let _ = tx.send(TaskEvent::PartitionConsumable(id));
    }
}

impl<T: Data, S: ChannelSelector<T>> Collector<T> for ExchangeOut<T, S> {
    #[inline]
    fn collect(&mut self, v: T) -> Result<()> {
        if self.at_first_record.is_some() {
            announce(&mut self.at_first_record);
        }
        self.writer.emit(&v)
    }
    fn finish(&mut self) -> Result<()> {
        self.writer.finish()?;
        announce(&mut self.at_finish);
        // A pipelined partition stays until its consumers read it (they may not even have
        // attached yet); the task ends after that. A blocking one outlives the task.
        self.writer.partition_mut().release_when_consumed(None)
    }
    fn flush(&mut self) -> Result<()> {
        // A blocking partition is read once complete: its flush does nothing.
        self.writer.flush_all()
    }
}

impl TaskIo {
    /// The I/O of subtask `spec`.
    pub fn new(
        env: ShuffleEnvironment,
        spec: SubtaskSpec,
        settings: TaskSettings,
        cancel: Arc<AtomicBool>,
        metrics: Option<TaskMetricsHandle>,
        events: std::sync::mpsc::Sender<TaskEvent>,
    ) -> Self {
        Self { env, spec, settings, cancel, metrics, events, records_in: 0 }
    }

    /// Creates the subtask's output partition and a writer over it.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the vertex has no output edge; partition creation errors.
    pub fn record_writer<T: Data, S: ChannelSelector<T>>(&mut self, selector: S) -> Result<ExchangeOut<T, S>> {
        let out = self.spec.output.clone().ok_or_else(|| Error::Invalid {
            what: "job graph",
            detail: format!("vertex {} has no output edge", self.spec.vertex),
        })?;
        let ptype = ResultPartitionType::from_code(out.partition_type)
            .ok_or_else(|| Error::Invalid { what: "partition type", detail: format!("code {}", out.partition_type) })?;
        let id = ResultPartitionId::new(out.partition.0, out.partition.1);
        let part = if ptype.is_pipelined() {
            let mut cfg = ResultPartitionConfig::new(id, ptype, out.num_subpartitions);
            cfg.wait_policy = self.settings.wait_policy;
            let mut part = self.env.create_result_partition(&cfg)?;
            part.set_cancel_flag(self.cancel.clone());
            if let Some(m) = &self.metrics {
                part.set_task_metrics(m.clone());
            }
            AnyPartition::Pipelined(part)
        } else {
            let files = FileChannelManager::from_env()?;
            let mut part = BlockingResultPartition::new(&files, id, ptype, out.num_subpartitions)?;
            part.register(self.env.partition_manager().clone())?;
            if let Some(m) = &self.metrics {
                part.set_task_metrics(m.clone());
            }
            AnyPartition::Blocking(part)
        };
        let consumable = Some((self.events.clone(), out.partition));
        let (at_first_record, at_finish) = if ptype.is_pipelined() { (consumable, None) } else { (None, consumable) };
        let writer = RecordWriter::new(part, selector, self.settings.buffer_timeout)?;
        Ok(ExchangeOut { writer, at_first_record, at_finish, _t: std::marker::PhantomData })
    }

    fn open_gate(&self) -> Result<Option<SingleInputGate>> {
        let Some(input) = &self.spec.input else {
            return Ok(None);
        };
        let specs = input
            .channels
            .iter()
            .map(|&(p, a, s)| InputSpec { partition: ResultPartitionId::new(p, a), subpartition: s })
            .collect();
        let mut cfg = InputGateConfig::new(specs);
        cfg.wait_policy = self.settings.wait_policy;
        cfg.backoff = self.settings.backoff;
        cfg.debloat = self.settings.debloat;
        let mut gate = self.env.create_input_gate(&cfg)?;
        gate.set_cancel_flag(self.cancel.clone());
        if let Some(m) = &self.metrics {
            gate.set_task_metrics(m.clone());
        }
        Ok(Some(gate))
    }

    /// Reads the whole input, decoding each record as `T` into `out` (without finishing
    /// it). Before it waits for input it flushes `out` (the task's chain, down to its own
    /// output), so nothing it wrote waits on its idleness.
    ///
    /// # Errors
    /// A malformed record, a failed producer, cancellation, or `out`'s error.
    pub fn run_input<T: Data, C: Collector<T>>(&mut self, out: &mut C) -> Result<()> {
        let Some(mut gate) = self.open_gate()? else {
            return Ok(());
        };
        let mut n = 0u64;
        let result = loop {
            let drained = gate.drain_records(4096, &mut |_, data| out.collect(T::from_record(data)?))?;
            if drained > 0 {
                n += drained as u64;
                continue;
            }
            let item = match gate.poll_next()? {
                Some(GateItem::Record { data, .. }) => Some(T::from_record(data)?),
                Some(GateItem::End) => break Ok(()),
                Some(_) => None,
                None => {
                    out.flush()?;
                    // Relaxed: a stop request.
                    if self.cancel.load(Ordering::Relaxed) {
                        break Err(Error::Cancelled);
                    }
                    match gate.next(Some(Duration::from_millis(200))) {
                        Ok(GateItem::Record { data, .. }) => Some(T::from_record(data)?),
                        Ok(GateItem::End) => break Ok(()),
                        Ok(_) => None,
                        Err(Error::Timeout(..)) => None,
                        Err(e) => break Err(e),
                    }
                }
            };
            if let Some(v) = item {
                n += 1;
                out.collect(v)?;
            }
        };
        self.records_in += n;
        result
    }

    /// The task's counters in the arena, if it has a block.
    pub(crate) fn metrics(&self) -> Option<&TaskMetricsHandle> {
        self.metrics.as_ref()
    }

    /// The task's info.
    pub fn info(&self, job: &JobGraph) -> TaskInfo {
        TaskInfo {
            job: job.name.clone(),
            vertex: self.spec.vertex,
            vertex_name: job.vertices[self.spec.vertex].name.clone(),
            subtask: self.spec.subtask,
            parallelism: self.spec.parallelism,
        }
    }
}
