//! `RecordWriter`: the API a producing task writes records through, with Flink's buffer
//! timeout (flush policy) and its output flusher.
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

use super::flush_handoff::FlushHandoff;
use super::result_partition::ResultPartition;
use super::selector::ChannelSelector;
use crate::error::{ConfigError, Error, Result};
use crate::event::Event;
use crate::record::Record;
use crate::sync::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
                while !*stopped {
                    if cv.wait_for(&mut stopped, interval).timed_out() {
                        // Relaxed: a hint; the writer acts on it at its next record, and
                        // the data it flushes is published by the commit's Release store
                        // (ours by the handoff's Release CAS).
                        let idle_writer = f2.swap(true, Ordering::Relaxed);
                        if let (true, Some((arena, handoff, first))) = (idle_writer, &idle) {
                            let subs = handoff.slots() as u32 - 1;
                            handoff.flush(arena, |slot| {
                                // A wake-up error (a consumer's bad gate id) is the
                                // writer's to report at its next flush.
                                if slot as u32 == subs {
                                    for c in 0..subs {
                                        let _ = crate::ring::notify_channel(arena, first + c);
                                    }
                                } else {
                                    let _ = crate::ring::notify_channel(arena, first + slot as u32);
                                }
                            });
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

/// Writes records into a [`ResultPartition`], choosing channels with a selector `S`.
///
/// Dropping it drops its partition (see [`ResultPartition`]: unfinished means failed; call
/// [`RecordWriter::finish`] and then `partition_mut().release_when_consumed(..)` first)
/// and stops its flusher thread, if it has one.
pub struct RecordWriter<S> {
    /// First, so it stops (and joins its thread) before the partition drops.
    flusher: Option<OutputFlusher>,
    partition: ResultPartition,
    selector: S,
    timeout: BufferTimeout,
    broadcast: bool,
}

impl<S> std::fmt::Debug for RecordWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordWriter({:?}, {:?})", self.partition, self.timeout)
    }
}

impl<S> RecordWriter<S> {
    /// A writer for records of type `R` over `partition`.
    ///
    /// # Errors
    /// [`Error::Io`] if the output flusher cannot start.
    pub fn new<R: ?Sized>(mut partition: ResultPartition, mut selector: S, timeout: BufferTimeout) -> Result<Self>
    where
        S: ChannelSelector<R>,
    {
        selector.setup(partition.num_subpartitions());
        let broadcast = selector.is_broadcast();
        let flusher = match timeout {
            BufferTimeout::Interval(d) => Some(OutputFlusher::start_for(d, &mut partition)?),
            _ => None,
        };
        Ok(Self { flusher, partition, selector, timeout, broadcast })
    }

    /// Writes `record` to the channel the selector picks (to all, for broadcast).
    ///
    /// # Errors
    /// As [`ResultPartition::emit`].
    #[inline]
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

    /// Writes `record` to channel `c`, bypassing the selector.
    ///
    /// # Errors
    /// As [`ResultPartition::emit`].
    pub fn emit_to<R: Record + ?Sized>(&mut self, record: &R, c: u32) -> Result<()> {
        self.partition.emit(record, c)?;
        self.after_record(Some(c))
    }

    /// Writes `record` once for every channel (one shared segment).
    ///
    /// # Errors
    /// As [`ResultPartition::broadcast_emit`].
    pub fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        self.partition.broadcast_emit(record)?;
        self.after_record(None)
    }

    #[inline]
    fn after_record(&mut self, c: Option<u32>) -> Result<()> {
        match self.timeout {
            BufferTimeout::EveryRecord => match c {
                Some(c) => self.partition.flush(c),
                None => self.partition.flush_all(),
            },
            BufferTimeout::Interval(_) => self.flush_if_requested(),
            BufferTimeout::FullSegmentsOnly => Ok(()),
        }
    }

    /// Flushes if the output flusher asked for it. A task calls this before it blocks on
    /// its input, so nothing it wrote waits longer than the buffer timeout.
    ///
    /// # Errors
    /// As [`ResultPartition::flush_all`].
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
    /// As [`ResultPartition::flush_all`].
    pub fn flush_all(&mut self) -> Result<()> {
        self.partition.flush_all()
    }

    /// Sends an event to every channel, ordered after the records written before it
    /// (unaligned barriers overtake them).
    ///
    /// # Errors
    /// As [`ResultPartition::broadcast_event`].
    pub fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        self.partition.broadcast_event(event)
    }

    /// Ends the output: EndOfPartition on every channel.
    ///
    /// # Errors
    /// As [`ResultPartition::finish`].
    pub fn finish(&mut self) -> Result<()> {
        self.partition.finish()
    }

    /// The buffer timeout.
    pub fn buffer_timeout(&self) -> BufferTimeout {
        self.timeout
    }

    /// The partition.
    pub fn partition(&self) -> &ResultPartition {
        &self.partition
    }

    /// The partition, mutably.
    pub fn partition_mut(&mut self) -> &mut ResultPartition {
        &mut self.partition
    }

    /// Gives the partition back (stops the flusher).
    pub fn into_partition(self) -> ResultPartition {
        self.partition
    }
}
