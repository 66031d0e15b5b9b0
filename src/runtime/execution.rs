//! A running subtask's I/O ([`TaskIo`]): its output partition and record writer
//! ([`ExchangeOut`]), and its input gate, read into the vertex's operator chain.

use super::protocol::SubtaskSpec;
use super::task::{Collector, Data};
use crate::error::GraphError;
use crate::error::{Error, Result};
use crate::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use crate::metrics::TaskMetricsHandle;
use crate::partition::{
    AnyPartition, BlockingResultPartition, BufferTimeout, ChannelSelector, FileChannelManager, RecordWriter,
    RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use crate::sync::{AtomicBool, Ordering, WaitPolicy};
use crate::ShuffleEnvironment;
use std::sync::Arc;
use std::time::Duration;

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
    /// Pin each subtask's thread to a CPU ([`RuntimeConfig::pin_cpus`](super::RuntimeConfig::pin_cpus)).
    pub pin_cpus: bool,
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
    // inline(always): the per-record path into the writer's (inline(always)) emit; left to
    // LLVM it went out of line for a generator whose record serializes in a few more
    // instructions (a call per record, its Result through memory).
    #[inline(always)]
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
    /// [`GraphError::NoOutput`] if the vertex has no output edge, [`GraphError::Deployment`]
    /// for an unknown partition type code; partition creation errors.
    pub fn record_writer<T: Data, S: ChannelSelector<T>>(&mut self, selector: S) -> Result<ExchangeOut<T, S>> {
        let out = self.spec.output.clone().ok_or(GraphError::NoOutput { vertex: self.spec.vertex })?;
        let ptype = ResultPartitionType::from_code(out.partition_type)
            .ok_or_else(|| GraphError::Deployment(format!("unknown partition type code {}", out.partition_type)))?;
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
            let drained = drain_into::<T, C>(&mut gate, out)?;
            if drained > 0 {
                n += drained as u64;
                // Relaxed: a stop request, checked once per batch so that a slow sink
                // stops without first working through what is in flight.
                if self.cancel.load(Ordering::Relaxed) {
                    break Err(Error::Cancelled);
                }
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

    /// The subtask read in turns (co-scheduling, [`super::TaskSteps`]): each turn reads what
    /// its input holds now into `out`, without waiting, and finishes `out` at the end of
    /// the input. The gate is opened at the first turn (its producers' partitions must be
    /// registered by then: the task this one shares a thread with registers its own when
    /// it starts, before it first waits).
    pub fn into_steps<T: Data, C: Collector<T> + 'static>(self, out: C) -> InputSteps<T, C> {
        InputSteps { io: self, gate: None, out, records: 0, flushed: true, _t: std::marker::PhantomData }
    }

    /// The task's counters in the arena, if it has a block.
    pub(crate) fn metrics(&self) -> Option<&TaskMetricsHandle> {
        self.metrics.as_ref()
    }

    /// The subtask this is the I/O of.
    pub fn spec(&self) -> &SubtaskSpec {
        &self.spec
    }
}

/// Up to a batch of the records `gate` holds now, decoded into `out`. `run_input` and a
/// co-scheduled turn both read through it, so a chain has one drain loop (one closure
/// type): with a loop of its own per caller, LLVM kept what the loop calls per record out
/// of line (the 16 B shuffle's record decoding: 12.6% of the job's CPU in the call, 19.9
/// vs 18.9 ns per record; WordCount's reduce).
fn drain_into<T: Data, C: Collector<T>>(gate: &mut SingleInputGate, out: &mut C) -> Result<usize> {
    gate.drain_records(4096, &mut |_, data| out.collect(T::from_record(data)?))
}

/// A subtask fed by an exchange, read in turns on a thread it shares with other tasks
/// ([`TaskIo::into_steps`]).
pub struct InputSteps<T, C> {
    io: TaskIo,
    gate: Option<SingleInputGate>,
    out: C,
    records: u64,
    /// Whether `out` was flushed since the last record it took.
    flushed: bool,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Data, C: Collector<T>> super::TaskSteps for InputSteps<T, C> {
    fn step(&mut self) -> Result<super::Turn> {
        use super::Turn;
        if self.gate.is_none() {
            self.gate = self.io.open_gate()?;
        }
        let Some(gate) = self.gate.as_mut() else {
            // A vertex without an input has nothing to read.
            self.out.finish()?;
            return Ok(Turn::Ended);
        };
        let drained = drain_into::<T, C>(gate, &mut self.out)?;
        if drained > 0 {
            self.records += drained as u64;
            self.flushed = false;
            // Relaxed: a stop request, checked once per batch (as `run_input`).
            if self.io.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            return Ok(Turn::Busy);
        }
        match gate.poll_next()? {
            Some(GateItem::Record { data, .. }) => {
                let v = T::from_record(data)?;
                self.records += 1;
                self.flushed = false;
                self.out.collect(v)?;
                Ok(Turn::Busy)
            }
            Some(GateItem::End) => {
                self.io.records_in += std::mem::take(&mut self.records);
                self.out.finish()?;
                Ok(Turn::Ended)
            }
            Some(_) => Ok(Turn::Busy),
            None => {
                // As `run_input` before it waits: what the chain holds goes out now.
                if !self.flushed {
                    self.out.flush()?;
                    self.flushed = true;
                }
                // Relaxed: a stop request.
                if self.io.cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                Ok(Turn::Idle)
            }
        }
    }
}
