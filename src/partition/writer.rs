//! `PartitionWriter` (Flink's ResultPartitionWriter): what every partition type implements
//! (the pipelined [`ResultPartition`] in shared memory, the blocking
//! [`BlockingResultPartition`] in a file, and [`AnyPartition`], either chosen at run
//! time); and `RecordWriter<S, W>`, the one API a producing task writes records through,
//! with a channel selector, Flink's buffer timeout (flush policy) and its output flusher.
//!
//! ```text
//!  RecordWriter<S, W: PartitionWriter> --select--> W::emit(record, subpartition)
//!                                       broadcast: W::broadcast_emit(record)
//!  flush policy (below) -> W::flush / W::flush_all;  events -> W::broadcast_event
//!  end: W::finish (EndOfPartition / the file's footer), or W::fail
//! ```
//!
//! ```text
//!  buffer timeout   0 ms : every record is visible at once (commit + wake per record)
//!                   N ms : an OutputFlusher thread raises a flag every N ms; the writer
//!                          commits everything on the next record, and a task that goes
//!                          idle calls flush_if_requested / flush_all before it blocks;
//!                          a flag still up at the next tick means the writer's thread is
//!                          away (a source waiting for the outside world): the flusher
//!                          then commits the staged positions itself (FlushHandoff)
//!                  -1    : only full segments become visible (plus explicit flushes)
//! ```
//! A writer that blocks on backpressure always makes everything visible first, so data
//! is never late because its writer is waiting. A record written by a writer that then
//! goes away is visible within two intervals.

use super::blocking::BlockingResultPartition;
use super::flush_handoff::{FlushHandoff, FlushState};
use super::result_partition::ResultPartition;
use super::selector::ChannelSelector;
use super::types::{BatchResult, ResultPartitionId, ResultPartitionType};
use crate::error::{ConfigError, Error, Result};
use crate::event::Event;
use crate::record::Record;
use crate::sync::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How many records [`RecordWriter::emit_batch`] writes between two looks at the buffer
/// timeout's flag, and the most records one of its runs holds back from a reader.
pub const EMIT_BATCH_RUN: usize = 256;

/// Flink's buffer timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferTimeout {
    /// 0: flush after every record.
    EveryRecord,
    /// N ms: at most this late.
    Interval(Duration),
    /// -1: only full segments (and explicit flushes).
    FullSegmentsOnly,
}

impl BufferTimeout {
    /// From Flink's millisecond convention: 0, N > 0, or -1.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] below -1 or above one hour.
    pub fn from_millis(ms: i64) -> Result<Self> {
        match ms {
            -1 => Ok(Self::FullSegmentsOnly),
            0 => Ok(Self::EveryRecord),
            1..=3_600_000 => Ok(Self::Interval(Duration::from_millis(ms as u64))),
            _ => Err(ConfigError::OutOfRange {
                what: "buffer timeout in ms (-1: full segments only, 0: every record)",
                value: ms,
                min: -1,
                max: 3_600_000,
            }
            .into()),
        }
    }

    /// Back to milliseconds.
    pub fn as_millis(self) -> i64 {
        match self {
            Self::EveryRecord => 0,
            Self::Interval(d) => d.as_millis() as i64,
            Self::FullSegmentsOnly => -1,
        }
    }
}

/// A thread that raises a flush flag every interval (Flink's OutputFlusher). Stops and
/// joins when dropped.
pub struct OutputFlusher {
    flag: Arc<AtomicBool>,
    stop: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for OutputFlusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputFlusher")
    }
}

impl OutputFlusher {
    /// Starts a flusher raising its flag every `interval`.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot start.
    pub fn start(interval: Duration) -> Result<Self> {
        Self::start_with(interval, None)
    }

    /// Starts a flusher for `partition`: it raises its flag every `interval`, and when the
    /// flag it raised last is still up (the writer's thread did not write since), it
    /// commits the partition's staged positions itself and wakes their consumers.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot start.
    pub fn start_for(interval: Duration, partition: &mut ResultPartition) -> Result<Self> {
        let handoff = partition.flush_handoff();
        let info = partition.info();
        Self::start_with(interval, Some((partition.arena().clone(), handoff, info.first_channel)))
    }

    fn start_with(
        interval: Duration,
        idle: Option<(Arc<crate::memory::Arena>, Arc<FlushHandoff>, u32)>,
    ) -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let stop = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let (f2, s2) = (flag.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("output-flusher".into())
            .spawn(move || {
                let (m, cv) = &*s2;
                let mut stopped = m.lock();
                let mut state = FlushState::default();
                while !*stopped {
                    if cv.wait_for(&mut stopped, interval).timed_out() {
                        // Relaxed: a hint; the writer acts on it at its next record, and
                        // the data it flushes is published by the commit's Release store
                        // (ours by the handoff's Release CAS).
                        let idle_writer = f2.swap(true, Ordering::Relaxed);
                        if let (true, Some((arena, handoff, first))) = (idle_writer, &idle) {
                            handoff.flush_with(arena, &mut state);
                            wake_raised(arena, handoff.slots() as u32 - 1, *first, state.raised());
                        }
                    }
                }
            })
            .map_err(|e| Error::Io { op: "starting the output flusher".into(), source: e })?;
        Ok(Self { flag, stop, thread: Some(thread) })
    }

    /// Whether a flush is due; clears the flag.
    #[inline]
    pub fn take(&self) -> bool {
        // Relaxed: see `start`; a cheap check on every record.
        self.flag.load(Ordering::Relaxed) && self.flag.swap(false, Ordering::Relaxed)
    }
}

/// Wakes the consumers of the handoff slots a flush raised (`subs`: the broadcast slot,
/// whose builder every channel reads; channel ids from `first`), with one fence for all.
fn wake_raised(arena: &crate::memory::Arena, subs: u32, first: u32, raised: &[u32]) {
    if raised.is_empty() {
        return;
    }
    // SeqCst fence: after the flush's Release CASes and before every wake-up below; stands
    // for the fence of each `notify_channel` (pairs with the fences in
    // `ChannelReader::set_gate` and `NotifySet::drain`).
    fence(Ordering::SeqCst);
    for &slot in raised {
        // A wake-up error (a consumer's bad gate id) is the writer's to report at its
        // next flush.
        if slot == subs {
            for c in 0..subs {
                let _ = crate::ring::notify_channel_fenced(arena, first + c);
            }
        } else {
            let _ = crate::ring::notify_channel_fenced(arena, first + slot);
        }
    }
}

impl Drop for OutputFlusher {
    fn drop(&mut self) {
        let (m, cv) = &*self.stop;
        *m.lock() = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What every result partition implements (Flink's ResultPartitionWriter): the record
/// writer and the runtime see partitions only through it. Methods are generic over the
/// record type and called with static dispatch (the per-record path stays inlined); for a
/// type chosen at run time use [`AnyPartition`].
pub trait PartitionWriter {
    /// The partition's id.
    fn id(&self) -> ResultPartitionId;

    /// Its type.
    fn partition_type(&self) -> ResultPartitionType;

    /// Subpartitions (consuming channels).
    fn num_subpartitions(&self) -> u32;

    /// Writes `record` to subpartition `subpartition`.
    ///
    /// # Errors
    /// A subpartition out of range, a finished partition, a record above the limit,
    /// wait, consumer or I/O errors (per implementation).
    fn emit<R: Record + ?Sized>(&mut self, record: &R, subpartition: u32) -> Result<()>;

    /// Writes the records `records` yields, at most `max`, each to the subpartition
    /// `select` picks for it; returns how many (fewer than `max` only when `records`
    /// ended). The default emits them one by one; a partition may write runs of them at
    /// once ([`ResultPartition::emit_batch`]).
    ///
    /// # Errors
    /// As [`emit`](Self::emit), with the number of records written before the failing
    /// one (which was taken from `records` and not written).
    #[inline(always)]
    fn emit_batch<R, T, I, F>(&mut self, records: &mut I, max: usize, mut select: F) -> BatchResult<usize>
    where
        R: Record + ?Sized,
        T: std::borrow::Borrow<R>,
        I: Iterator<Item = T>,
        F: FnMut(&R) -> u32,
    {
        let mut n = 0;
        // Bounded by `max`.
        while n < max {
            let Some(t) = records.next() else { break };
            let c = select(t.borrow());
            if let Err(e) = self.emit(t.borrow(), c) {
                return Err((n, e));
            }
            n += 1;
        }
        Ok(n)
    }

    /// Writes `record` to every subpartition (serialized once).
    ///
    /// # Errors
    /// As [`emit`](Self::emit).
    fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()>;

    /// Sends `event` to every subpartition, after the records written before it.
    ///
    /// # Errors
    /// Per implementation (a partition type that cannot carry the event says so).
    fn broadcast_event(&mut self, event: &Event) -> Result<()>;

    /// Makes what was written to `subpartition` visible to its consumer now.
    ///
    /// # Errors
    /// Per implementation.
    fn flush(&mut self, subpartition: u32) -> Result<()>;

    /// Makes everything written visible now (Flink's flushAll).
    ///
    /// # Errors
    /// Per implementation.
    fn flush_all(&mut self) -> Result<()>;

    /// Ends the output: consumers see the end of every subpartition. Idempotent.
    ///
    /// # Errors
    /// Per implementation; a partition that cannot finish is failed.
    fn finish(&mut self) -> Result<()>;

    /// Fails the partition: its consumers stop with an error instead of waiting.
    fn fail(&mut self);

    /// A flusher thread for buffer timeout `interval`, or `None` when the partition has
    /// nothing to make visible before it finishes (the default).
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot start.
    fn start_flusher(&mut self, interval: Duration) -> Result<Option<OutputFlusher>> {
        let _ = interval;
        Ok(None)
    }
}

/// The error of [`RecordWriter::emit_batch`]: the error of the record that failed and how
/// many records of the batch were written before it.
#[derive(Debug)]
pub struct EmitBatchError {
    /// Records of the batch written before the failing one (as `emit` one by one would
    /// have written them).
    pub written: u64,
    /// Why the failing record was not written.
    pub error: Error,
}

impl std::fmt::Display for EmitBatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after {} records of the batch)", self.error, self.written)
    }
}

impl std::error::Error for EmitBatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<EmitBatchError> for Error {
    fn from(e: EmitBatchError) -> Self {
        e.error
    }
}

/// Writes records into a partition `W` (by default a pipelined [`ResultPartition`]),
/// choosing subpartitions with a selector `S`.
///
/// Dropping it drops its partition (unfinished means failed; for a pipelined partition
/// call [`RecordWriter::finish`] and then `partition_mut().release_when_consumed(..)`
/// first) and stops its flusher thread, if it has one.
pub struct RecordWriter<S, W = ResultPartition> {
    /// First, so it stops (and joins its thread) before the partition drops.
    flusher: Option<OutputFlusher>,
    partition: W,
    selector: S,
    timeout: BufferTimeout,
    /// `timeout` is [`BufferTimeout::EveryRecord`]: kept apart so the per-record check is
    /// one flag, not a match on the timeout.
    flush_each: bool,
    broadcast: bool,
}

impl<S, W: std::fmt::Debug> std::fmt::Debug for RecordWriter<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordWriter({:?}, {:?})", self.partition, self.timeout)
    }
}

impl<S, W: PartitionWriter> RecordWriter<S, W> {
    /// A writer for records of type `R` over `partition`.
    ///
    /// # Errors
    /// [`Error::Io`] if the output flusher cannot start.
    pub fn new<R: ?Sized>(mut partition: W, mut selector: S, timeout: BufferTimeout) -> Result<Self>
    where
        S: ChannelSelector<R>,
    {
        selector.setup(partition.num_subpartitions());
        let broadcast = selector.is_broadcast();
        let flusher = match timeout {
            BufferTimeout::Interval(d) => partition.start_flusher(d)?,
            _ => None,
        };
        let flush_each = matches!(timeout, BufferTimeout::EveryRecord);
        Ok(Self { flusher, partition, selector, timeout, flush_each, broadcast })
    }

    /// Writes `record` to the channel the selector picks (to all, for broadcast).
    ///
    /// # Errors
    /// As [`PartitionWriter::emit`].
    // inline(always), as `ResultPartition::emit`: the fast path belongs in the caller's
    // record loop; with two callers of one record type LLVM kept it out of line (emit
    // bench, 8 B: 3.6 -> 6.1 ns per record).
    #[inline(always)]
    pub fn emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()>
    where
        S: ChannelSelector<R>,
    {
        if self.broadcast {
            return self.broadcast_emit(record);
        }
        let c = self.selector.select_channel(record);
        self.partition.emit(record, c)?;
        self.after_record(Some(c))
    }

    /// Writes every record `records` yields, as [`emit`](Self::emit) would one by one
    /// (same channels, same bytes, same flushes); returns how many. The batch path for a
    /// producer with many records at hand: on a pipelined partition, consecutive records
    /// of one channel that fit its open segment are written as one run, their write
    /// position and count kept in registers and published once per run
    /// ([`ResultPartition::emit_batch`]); the buffer timeout's flag is looked at every
    /// [`EMIT_BATCH_RUN`] records instead of every record. With a buffer timeout of 0 or
    /// a broadcast selector it is `emit` in a loop.
    ///
    /// A run's records become visible (to a reader polling the data, and to a flush) when
    /// the run ends, at most [`EMIT_BATCH_RUN`] records later: `records` should not wait
    /// for the outside world in `next` (the records of the run so far would wait with it;
    /// such a source calls `emit` per record instead).
    ///
    /// # Errors
    /// As [`emit`](Self::emit): an [`EmitBatchError`] with the error and how many records
    /// were written before the failing one (converts into [`Error`] with `?`). The failing
    /// record was taken from `records` and not written; to go on after it (or retry it),
    /// pass `iter.by_ref()` and keep the iterator: it resumes after the failing record.
    #[inline(always)]
    pub fn emit_batch<R, I>(&mut self, records: I) -> std::result::Result<u64, EmitBatchError>
    where
        R: Record + ?Sized,
        I: IntoIterator,
        I::Item: std::borrow::Borrow<R>,
        S: ChannelSelector<R>,
    {
        use std::borrow::Borrow;
        let mut it = records.into_iter();
        let mut n = 0u64;
        if self.broadcast || self.flush_each {
            for t in it {
                if let Err(error) = self.emit(t.borrow()) {
                    return Err(EmitBatchError { written: n, error });
                }
                n += 1;
            }
            return Ok(n);
        }
        // Bounded: each round takes EMIT_BATCH_RUN records of `it` or ends it.
        loop {
            let selector = &mut self.selector;
            let k = match self.partition.emit_batch(&mut it, EMIT_BATCH_RUN, |r: &R| selector.select_channel(r)) {
                Ok(k) => k,
                Err((k, error)) => return Err(EmitBatchError { written: n + k as u64, error }),
            };
            n += k as u64;
            if let Err(error) = self.flush_if_requested() {
                // The batch's records so far were written; the flush that failed was the
                // buffer timeout's, between two runs.
                return Err(EmitBatchError { written: n, error });
            }
            if k < EMIT_BATCH_RUN {
                return Ok(n);
            }
        }
    }

    /// Writes `record` to channel `c`, bypassing the selector.
    ///
    /// # Errors
    /// As [`PartitionWriter::emit`].
    pub fn emit_to<R: Record + ?Sized>(&mut self, record: &R, c: u32) -> Result<()> {
        self.partition.emit(record, c)?;
        self.after_record(Some(c))
    }

    /// Writes `record` once for every channel (one shared segment).
    ///
    /// # Errors
    /// As [`PartitionWriter::broadcast_emit`].
    pub fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        self.partition.broadcast_emit(record)?;
        self.after_record(None)
    }

    #[inline(always)]
    fn after_record(&mut self, c: Option<u32>) -> Result<()> {
        if self.flush_each {
            return match c {
                Some(c) => self.partition.flush(c),
                None => self.partition.flush_all(),
            };
        }
        // An interval has a flusher (unless the partition needs none); the other
        // timeouts have none.
        self.flush_if_requested()
    }

    /// Flushes if the output flusher asked for it. A task calls this before it blocks on
    /// its input, so nothing it wrote waits longer than the buffer timeout.
    ///
    /// # Errors
    /// As [`PartitionWriter::flush_all`].
    #[inline]
    pub fn flush_if_requested(&mut self) -> Result<()> {
        if self.flusher.as_ref().is_some_and(|f| f.take()) {
            self.partition.flush_all()?;
        }
        Ok(())
    }

    /// Makes everything written visible now.
    ///
    /// # Errors
    /// As [`PartitionWriter::flush_all`].
    pub fn flush_all(&mut self) -> Result<()> {
        self.partition.flush_all()
    }

    /// Sends an event to every channel, ordered after the records written before it
    /// (unaligned barriers overtake them).
    ///
    /// # Errors
    /// As [`PartitionWriter::broadcast_event`].
    pub fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        self.partition.broadcast_event(event)
    }

    /// Ends the output: EndOfPartition on every channel.
    ///
    /// # Errors
    /// As [`PartitionWriter::finish`].
    pub fn finish(&mut self) -> Result<()> {
        self.partition.finish()
    }

    /// Fails the output (see [`PartitionWriter::fail`]).
    pub fn fail(&mut self) {
        self.partition.fail()
    }

    /// The buffer timeout.
    pub fn buffer_timeout(&self) -> BufferTimeout {
        self.timeout
    }

    /// The partition.
    pub fn partition(&self) -> &W {
        &self.partition
    }

    /// The partition, mutably.
    pub fn partition_mut(&mut self) -> &mut W {
        &mut self.partition
    }

    /// Gives the partition back (stops the flusher).
    pub fn into_partition(self) -> W {
        self.partition
    }
}

impl PartitionWriter for ResultPartition {
    fn id(&self) -> ResultPartitionId {
        ResultPartition::id(self)
    }

    fn partition_type(&self) -> ResultPartitionType {
        ResultPartition::partition_type(self)
    }

    fn num_subpartitions(&self) -> u32 {
        ResultPartition::num_subpartitions(self)
    }

    #[inline(always)]
    fn emit<R: Record + ?Sized>(&mut self, record: &R, subpartition: u32) -> Result<()> {
        // Into the caller's record loop (the fast path is a few instructions; as a call
        // it cost the throughput bench's 1x1 8 B producer its registers).
        ResultPartition::emit(self, record, subpartition)
    }

    #[inline(always)]
    fn emit_batch<R, T, I, F>(&mut self, records: &mut I, max: usize, select: F) -> BatchResult<usize>
    where
        R: Record + ?Sized,
        T: std::borrow::Borrow<R>,
        I: Iterator<Item = T>,
        F: FnMut(&R) -> u32,
    {
        ResultPartition::emit_batch(self, records, max, select)
    }

    fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        ResultPartition::broadcast_emit(self, record)
    }

    fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        ResultPartition::broadcast_event(self, event)
    }

    #[inline]
    fn flush(&mut self, subpartition: u32) -> Result<()> {
        ResultPartition::flush(self, subpartition)
    }

    fn flush_all(&mut self) -> Result<()> {
        ResultPartition::flush_all(self)
    }

    fn finish(&mut self) -> Result<()> {
        ResultPartition::finish(self)
    }

    fn fail(&mut self) {
        ResultPartition::fail(self)
    }

    /// An [`OutputFlusher`] that also commits the staged positions of a writer that went
    /// away ([`OutputFlusher::start_for`]).
    fn start_flusher(&mut self, interval: Duration) -> Result<Option<OutputFlusher>> {
        OutputFlusher::start_for(interval, self).map(Some)
    }
}

/// A blocking partition makes nothing visible before it finishes: flushes are no-ops and
/// it needs no flusher. Of the events, EndOfPartition finishes it; EndOfData and
/// checkpoint barriers carry nothing a later reader of the file needs (a blocking exchange
/// is not checkpointed; its end is the file's end) and are dropped; user events cannot be
/// stored in its file format ([`Error::Unsupported`]).
impl PartitionWriter for BlockingResultPartition {
    fn id(&self) -> ResultPartitionId {
        BlockingResultPartition::id(self)
    }

    fn partition_type(&self) -> ResultPartitionType {
        BlockingResultPartition::partition_type(self)
    }

    fn num_subpartitions(&self) -> u32 {
        BlockingResultPartition::num_subpartitions(self)
    }

    #[inline]
    fn emit<R: Record + ?Sized>(&mut self, record: &R, subpartition: u32) -> Result<()> {
        BlockingResultPartition::emit(self, record, subpartition)
    }

    fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        BlockingResultPartition::broadcast_emit(self, record)
    }

    fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::EndOfPartition => BlockingResultPartition::finish(self),
            Event::EndOfData | Event::CheckpointBarrier(_) => Ok(()),
            Event::User(_) => Err(Error::Unsupported("user events in a blocking partition".into())),
        }
    }

    #[inline]
    fn flush(&mut self, _subpartition: u32) -> Result<()> {
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        BlockingResultPartition::finish(self)
    }

    fn fail(&mut self) {
        BlockingResultPartition::fail(self)
    }
}

/// A partition whose type is chosen at run time (the runtime's output of a task): one
/// predictable branch per call, then the partition's own inlined path.
// Not boxed: the enum is built once per task and stays in its writer; a box would add a
// pointer hop to every record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyPartition {
    /// In shared memory (PIPELINED, PIPELINED_BOUNDED).
    Pipelined(ResultPartition),
    /// In a file (BLOCKING, BLOCKING_PERSISTENT).
    Blocking(BlockingResultPartition),
}

/// Evaluates `$e` with `$x` bound to whichever partition `$p` holds.
macro_rules! either {
    ($p:expr, $x:ident => $e:expr) => {
        match $p {
            AnyPartition::Pipelined($x) => $e,
            AnyPartition::Blocking($x) => $e,
        }
    };
}

impl AnyPartition {
    /// The pipelined partition stays until its consumers read it: waits for that, then
    /// releases it ([`ResultPartition::release_when_consumed`]). A blocking partition
    /// outlives its producer (its consumers release it): nothing to wait for.
    ///
    /// # Errors
    /// As [`ResultPartition::release_when_consumed`].
    pub fn release_when_consumed(&mut self, timeout: Option<Duration>) -> Result<()> {
        match self {
            Self::Pipelined(p) => p.release_when_consumed(timeout),
            Self::Blocking(_) => Ok(()),
        }
    }
}

/// A blocking partition's emit, out of line: [`AnyPartition::emit`] inlines only the
/// pipelined path into the record loop.
#[inline(never)]
fn blocking_emit<R: Record + ?Sized>(p: &mut BlockingResultPartition, record: &R, subpartition: u32) -> Result<()> {
    PartitionWriter::emit(p, record, subpartition)
}

impl PartitionWriter for AnyPartition {
    fn id(&self) -> ResultPartitionId {
        either!(self, p => PartitionWriter::id(p))
    }

    fn partition_type(&self) -> ResultPartitionType {
        either!(self, p => PartitionWriter::partition_type(p))
    }

    fn num_subpartitions(&self) -> u32 {
        either!(self, p => PartitionWriter::num_subpartitions(p))
    }

    #[inline(always)]
    fn emit<R: Record + ?Sized>(&mut self, record: &R, subpartition: u32) -> Result<()> {
        match self {
            // The pipelined fast path (ResultPartition::emit, #[inline]) goes into the
            // caller's record loop; the blocking partition's emit stays a call.
            AnyPartition::Pipelined(p) => p.emit(record, subpartition),
            AnyPartition::Blocking(p) => blocking_emit(p, record, subpartition),
        }
    }

    #[inline(always)]
    fn emit_batch<R, T, I, F>(&mut self, records: &mut I, max: usize, select: F) -> BatchResult<usize>
    where
        R: Record + ?Sized,
        T: std::borrow::Borrow<R>,
        I: Iterator<Item = T>,
        F: FnMut(&R) -> u32,
    {
        match self {
            AnyPartition::Pipelined(p) => p.emit_batch(records, max, select),
            AnyPartition::Blocking(p) => PartitionWriter::emit_batch(p, records, max, select),
        }
    }

    fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        either!(self, p => PartitionWriter::broadcast_emit(p, record))
    }

    fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        either!(self, p => PartitionWriter::broadcast_event(p, event))
    }

    #[inline]
    fn flush(&mut self, subpartition: u32) -> Result<()> {
        either!(self, p => PartitionWriter::flush(p, subpartition))
    }

    fn flush_all(&mut self) -> Result<()> {
        either!(self, p => PartitionWriter::flush_all(p))
    }

    fn finish(&mut self) -> Result<()> {
        either!(self, p => PartitionWriter::finish(p))
    }

    fn fail(&mut self) {
        either!(self, p => PartitionWriter::fail(p))
    }

    fn start_flusher(&mut self, interval: Duration) -> Result<Option<OutputFlusher>> {
        either!(self, p => PartitionWriter::start_flusher(p, interval))
    }
}
