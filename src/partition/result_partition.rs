//! `ResultPartition`: one producer task's output for one intermediate result, with one
//! subpartition (channel) per consumer.
//!
//! ```text
//!  emit(record, c) --> subpartition c: BufferBuilder over a segment of the LocalBufferPool
//!                        published on channel c's data ring when opened; committed per the
//!                        flush policy; finished when full (the record continues in the next)
//!  broadcast_emit  --> one BufferBuilder with refcount = n, published on every channel
//!  credits / recycled segments come back through the credit rings; consumers mark the
//!  partition's notify set, so the writer drains only channels that have something.
//! ```
//!
//! A writer with no credit on its channel, or an empty pool, blocks (parks on the notify
//! set's wake-up) after making everything it wrote visible: that is backpressure, and the
//! time spent there is counted.

use super::flush_handoff::FlushHandoff;
use super::manager::{PartitionInfo, ResultPartitionManager, PARTITION_FAILED, PARTITION_FINISHED, PARTITION_RELEASED};
use super::types::BatchResult;
use super::types::{ResultPartitionId, ResultPartitionType};
use crate::buffer::{BufferBuilder, LocalBufferPool, LocalPoolConfig};
use crate::error::{ConfigError, Error, Result};
use crate::event::Event;
use crate::memory::liveness::{self, Liveness};
use crate::memory::Arena;
use crate::metrics::TaskMetricsHandle;
use crate::record::{write_record, write_spanning_head, Record, WriteOutcome, DEFAULT_MAX_RECORD, LEN_PREFIX};
use crate::ring::{ChannelWriter, Descriptor, EventCode, NotifySet};
use crate::sync::{fence, now_nanos, AtomicBool, Ordering, WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// The smallest segment fill buffer debloating may ask for (a record larger than that
/// still spans segments correctly).
pub const MIN_DEBLOAT_BYTES: u32 = 1024;

/// [`ResultPartitionConfig::attach_timeout`]'s default: 60 s, six times Flink's partition
/// request backoff (10 s), so a consumer still being deployed is not cut short.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// How to create a [`ResultPartition`] (a plain descriptor: a worker needs only this and
/// the arena).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPartitionConfig {
    /// The id consumers look it up by.
    pub id: ResultPartitionId,
    /// The type (pipelined types only in this build).
    pub partition_type: ResultPartitionType,
    /// One subpartition per consuming channel.
    pub num_subpartitions: u32,
    /// Segments kept in the pool at all times (Flink: subpartitions + 1).
    pub pool_min: u32,
    /// The pool's quota (Flink: subpartitions * buffers-per-channel + floating per gate).
    pub pool_max: u32,
    /// Flink's max-buffers-per-channel: how many segments one channel may hold (10).
    pub max_buffers_per_channel: u32,
    /// How a blocked writer waits.
    pub wait_policy: WaitPolicy,
    /// The longest a writer blocks before it gives up with [`Error::Timeout`] (None:
    /// forever, as Flink's back-pressure; consumers that die are reported by the failure
    /// detector instead).
    pub timeout: Option<Duration>,
    /// The longest a writer waits for the consumer of a subpartition that never attached
    /// (a consumer that failed before it came, asked for the wrong subpartition or
    /// partition, or was never deployed) before it gives up with [`Error::NoConsumer`]
    /// naming the subpartition (default [`DEFAULT_ATTACH_TIMEOUT`]). Liveness covers
    /// consumers once they attached; this covers the ones that never do.
    pub attach_timeout: Duration,
    /// Worker slot of the producing process (for ownership records).
    pub worker: u32,
    /// How often a blocked writer checks that its consumers are alive: a dead consumer is
    /// reported within about this long (default 100 ms).
    pub liveness_interval: Duration,
}

impl ResultPartitionConfig {
    /// Flink's defaults for `n` subpartitions: min n + 1, max n * 2 + 8, 10 per channel.
    pub fn new(id: ResultPartitionId, partition_type: ResultPartitionType, n: u32) -> Self {
        Self {
            id,
            partition_type,
            num_subpartitions: n,
            pool_min: n + 1,
            pool_max: n * 2 + 8,
            max_buffers_per_channel: 10,
            wait_policy: WaitPolicy::adaptive(),
            timeout: None,
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            worker: 0,
            liveness_interval: Duration::from_millis(100),
        }
    }
}

/// Counters of one partition (also mirrored in the arena's channel blocks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    /// Records written (a broadcast record counts once).
    pub records_out: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// Segments published (a broadcast segment counts once).
    pub segments_out: u64,
    /// Nanoseconds blocked for credit or segments on channels whose consumer had attached
    /// (Flink's back-pressured time).
    pub back_pressured_ns: u64,
    /// Nanoseconds blocked for the first credit of a channel whose consumer had not attached
    /// yet, or for consumers to finish reading a finished partition (a consumer still
    /// starting up, or one reading the last data, is not back-pressure).
    pub awaiting_consumer_ns: u64,
    /// Times the writer parked.
    pub parks: u64,
    /// Records that spanned segments.
    pub spanning_records: u64,
}

/// What a blocked writer waits on (decides how its waiting time is counted).
#[derive(Clone, Copy)]
enum WaitOn {
    /// One channel's credit or ring room.
    Channel(usize),
    /// Every channel's credit (broadcast).
    Every,
    /// Consumers finishing the partition.
    Drain,
}

struct Subpartition {
    writer: ChannelWriter,
    builder: Option<BufferBuilder>,
    /// The open builder's number in the flush handoff (see [`FlushHandoff`]).
    epoch: u32,
    dirty: bool,
    /// Records and payload bytes written, up to the last fold (see `pending`).
    records: u64,
    bytes: u64,
    /// Records the per-record fast path framed into the open builder since the last fold:
    /// the only counter it touches. Folded into `records`, `bytes` and the partition's
    /// stats (the bytes from the builder's position) when the segment closes and before
    /// any other write into it, so counters are published per segment, not per record.
    pending: u32,
    /// The open builder's position at the last fold.
    folded_at: u32,
    /// The consumer died and the segments it held were taken back.
    settled: bool,
}

impl Subpartition {
    /// The records and payload bytes the fast path wrote since the last fold: each took
    /// its payload and a length prefix of the open builder.
    fn unfolded(&self) -> (u64, u64) {
        let n = u64::from(self.pending);
        let Some(b) = &self.builder else { return (0, 0) };
        debug_assert!(b.position() >= self.folded_at);
        let framed = u64::from(b.position().saturating_sub(self.folded_at));
        (n, framed.saturating_sub(LEN_PREFIX as u64 * n))
    }
}

/// A producer's result partition.
///
/// Teardown: [`ResultPartition::finish`] (every subpartition ends, consumers see
/// `GateItem::End`), then [`ResultPartition::release_when_consumed`] (waits until the
/// consumers read everything), then drop. Dropping a partition that was not finished
/// fails it: its consumers stop with [`crate::Error::ProducerFailed`]. Dropping a finished
/// one that was not released yet releases it if its consumers already read everything;
/// otherwise its directory entry stays "finished" and consumers can still read what was
/// published, but the segments they hold then come back to the arena only through
/// recovery ([`crate::memory::recovery`]): call `release_when_consumed` first.
pub struct ResultPartition {
    arena: Arc<Arena>,
    manager: ResultPartitionManager,
    id: ResultPartitionId,
    partition_type: ResultPartitionType,
    slot: u32,
    first_channel: u32,
    set_id: u32,
    pool: LocalBufferPool,
    subs: Vec<Subpartition>,
    dirty: Vec<u32>,
    broadcast: Option<BufferBuilder>,
    /// The broadcast builder's number in the flush handoff.
    broadcast_epoch: u32,
    /// Set when a flusher thread may commit idle builders (see [`FlushHandoff`]): slot `c`
    /// is subpartition `c`'s builder, slot `subs.len()` the broadcast builder.
    handoff: Option<Arc<FlushHandoff>>,
    scratch: Vec<u8>,
    marked: Vec<u32>,
    /// Member indices `flush_all` marks in one go (reused, so a flush allocates nothing
    /// once it has grown).
    wake_scratch: Vec<u32>,
    waiter: Waiter,
    timeout: Option<Duration>,
    attach_timeout: Duration,
    finished: bool,
    released: bool,
    stats: PartitionStats,
    task: Option<TaskMetricsHandle>,
    reported: (u64, u64),
    cancel: Option<Arc<AtomicBool>>,
    liveness_interval: Duration,
}

impl std::fmt::Debug for ResultPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResultPartition({}, {} subpartitions)", self.id, self.subs.len())
    }
}

impl ResultPartition {
    /// Creates and registers a partition: claims a directory entry, channel blocks and a
    /// notify set, draws the pool's minimum, then publishes the entry.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for blocking types, [`Error::OutOfSlots`] /
    /// [`Error::PoolExhausted`] when the arena is too small, [`ConfigError::OutOfRange`]
    /// for a subpartition count of 0 or above the arena's channels per gate.
    pub fn new(arena: Arc<Arena>, cfg: &ResultPartitionConfig) -> Result<Self> {
        cfg.partition_type.check_supported()?;
        let n = cfg.num_subpartitions;
        let ac = arena.config();
        if n == 0 || n > ac.max_channels_per_gate {
            return Err(ConfigError::OutOfRange {
                what: "subpartition count (at most the arena's max channels per gate)",
                value: n.into(),
                min: 1,
                max: ac.max_channels_per_gate.into(),
            }
            .into());
        }
        let manager = ResultPartitionManager::new(arena.clone());
        let slot = manager.claim_entry(cfg.id)?;
        let undo_entry = |e: Error| {
            manager.set_state(slot, PARTITION_RELEASED);
            e
        };
        let first_channel = manager.claim_channels(n).map_err(undo_entry)?;
        let set_id = match manager.claim_gate(n) {
            Ok(g) => g,
            Err(e) => {
                manager.release_channels(first_channel, n);
                return Err(undo_entry(e));
            }
        };
        let release_all = |e: Error| {
            manager.release_gate(set_id);
            manager.release_channels(first_channel, n);
            manager.set_state(slot, PARTITION_RELEASED);
            e
        };
        let pool = LocalBufferPool::new(
            arena.clone(),
            slot,
            cfg.worker,
            LocalPoolConfig {
                min: cfg.pool_min.min(cfg.pool_max),
                max: cfg.pool_max,
                max_per_channel: cfg.max_buffers_per_channel,
                channels: n,
            },
        )
        .map_err(release_all)?;
        let mut subs = Vec::with_capacity(n as usize);
        for i in 0..n {
            let writer = ChannelWriter::open(arena.clone(), first_channel + i).map_err(release_all)?;
            writer.set_producer_set(set_id, i);
            let b = writer.block();
            // Published by the directory's Release store below.
            b.set_origin(slot, i);
            b.set_producer_worker(cfg.worker);
            subs.push(Subpartition {
                writer,
                builder: None,
                epoch: 0,
                dirty: false,
                records: 0,
                pending: 0,
                folded_at: 0,
                bytes: 0,
                settled: false,
            });
        }
        let e = &arena.partitions()[slot as usize];
        // Relaxed (both): statistics, published with the entry.
        e.pool_max.store(u64::from(cfg.pool_max), Ordering::Relaxed);
        e.producer_worker.store(cfg.worker + 1, Ordering::Relaxed);
        manager.publish(slot, cfg.partition_type, n, first_channel);
        Ok(Self {
            arena,
            manager,
            id: cfg.id,
            partition_type: cfg.partition_type,
            slot,
            first_channel,
            set_id,
            pool,
            subs,
            dirty: Vec::new(),
            broadcast: None,
            broadcast_epoch: 0,
            handoff: None,
            scratch: Vec::new(),
            marked: Vec::new(),
            wake_scratch: Vec::new(),
            waiter: Waiter::new(cfg.wait_policy),
            timeout: cfg.timeout,
            attach_timeout: cfg.attach_timeout,
            finished: false,
            released: false,
            stats: PartitionStats::default(),
            task: None,
            reported: (0, 0),
            cancel: None,
            liveness_interval: cfg.liveness_interval.max(Duration::from_millis(1)),
        })
    }

    /// The id.
    pub fn id(&self) -> ResultPartitionId {
        self.id
    }

    /// The type.
    pub fn partition_type(&self) -> ResultPartitionType {
        self.partition_type
    }

    /// Number of subpartitions.
    pub fn num_subpartitions(&self) -> u32 {
        self.subs.len() as u32
    }

    /// Where consumers find it.
    pub fn info(&self) -> PartitionInfo {
        PartitionInfo {
            slot: self.slot,
            partition_type: self.partition_type,
            num_subpartitions: self.subs.len() as u32,
            first_channel: self.first_channel,
            state: if self.finished { PARTITION_FINISHED } else { super::manager::PARTITION_REGISTERED },
        }
    }

    /// A flag that, once set, makes every blocking wait of this partition end with
    /// [`Error::Cancelled`] (checked at least every park slice).
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    fn cancelled(&self) -> bool {
        // Relaxed: a stop request; acting on it a little late is fine.
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Reports this partition's output and back-pressured time to a task's metrics block.
    pub fn set_task_metrics(&mut self, task: TaskMetricsHandle) {
        // Relaxed: bookkeeping for observers.
        self.arena.partitions()[self.slot as usize].producer_task.store(task.slot() + 1, Ordering::Relaxed);
        self.task = Some(task);
    }

    fn report(&mut self) {
        let e = &self.arena.partitions()[self.slot as usize];
        // Relaxed: a statistic (outPoolUsage).
        e.pool_segments.store(u64::from(self.pool.outstanding()), Ordering::Relaxed);
        if let Some(t) = &self.task {
            let (r, b) = self.reported;
            t.add_out(self.stats.records_out - r, self.stats.bytes_out - b);
            self.reported = (self.stats.records_out, self.stats.bytes_out);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PartitionStats {
        let mut s = self.stats;
        s.parks = self.waiter.parks;
        // The records of open segments not folded yet.
        for sub in &self.subs {
            let (n, bytes) = sub.unfolded();
            s.records_out += n;
            s.bytes_out += bytes;
        }
        s
    }

    /// Moves subpartition `c`'s fast-path count into its counters and the partition's.
    fn fold(&mut self, c: usize) {
        let sub = &mut self.subs[c];
        let (n, bytes) = sub.unfolded();
        if n != 0 {
            sub.records += n;
            sub.bytes += bytes;
            self.stats.records_out += n;
            self.stats.bytes_out += bytes;
        }
        sub.pending = 0;
        sub.folded_at = sub.builder.as_ref().map_or(0, |b| b.position());
    }

    /// The pool (usage, outstanding segments).
    pub fn pool(&self) -> &LocalBufferPool {
        &self.pool
    }

    /// Segments published on subpartition `c` and not yet released by its consumer.
    pub fn in_flight(&self, c: u32) -> u32 {
        self.subs.get(c as usize).map_or(0, |s| s.writer.in_flight())
    }

    /// Credit currently available on subpartition `c`.
    pub fn credit(&self, c: u32) -> u32 {
        self.subs.get(c as usize).map_or(0, |s| s.writer.credit())
    }

    fn check_open(&self) -> Result<()> {
        if self.finished {
            return Err(Error::PartitionFinished(self.id.to_string()));
        }
        Ok(())
    }

    /// Drains the credit rings of channels whose consumers marked the notify set.
    fn reclaim_marked(&mut self) -> Result<()> {
        let set = NotifySet::new(&self.arena, self.set_id)?;
        let mut marked = std::mem::take(&mut self.marked);
        marked.clear();
        set.drain(self.subs.len() as u32, |i| marked.push(i));
        let mut r = Ok(());
        for &i in &marked {
            if let Err(e) = self.subs[i as usize].writer.reclaim(&mut self.pool) {
                r = Err(e);
                break;
            }
        }
        self.marked = marked;
        r
    }

    /// Makes everything written visible (before blocking, so nothing waits on us).
    fn commit_all(&mut self) -> Result<()> {
        self.flush_all()
    }

    /// Whether a wait on `on` is for consumers (to attach, or to finish reading) rather than
    /// back-pressure.
    fn awaits_attach(&self, on: WaitOn) -> bool {
        let unattached = |s: &Subpartition| !s.writer.consumer_attached();
        match on {
            WaitOn::Channel(c) => unattached(&self.subs[c]),
            WaitOn::Every => self.subs.iter().any(unattached),
            // Everything is written: waiting for consumers to finish is not back-pressure.
            WaitOn::Drain => true,
        }
    }

    /// Waits until `f` yields, parking on the partition's notify set; counts the time as
    /// back-pressured, or as awaiting a consumer while the consumer of `on` has not
    /// attached yet.
    fn block_until<T>(
        &mut self,
        what: &'static str,
        on: WaitOn,
        mut f: impl FnMut(&mut Self) -> Result<Option<T>>,
    ) -> Result<T> {
        if let Some(v) = f(self)? {
            return Ok(v);
        }
        self.commit_all()?;
        let arena = self.arena.clone();
        let set = NotifySet::new(&arena, self.set_id)?;
        let mut waiter = std::mem::replace(&mut self.waiter, Waiter::new(WaitPolicy::park()));
        let start = now_nanos();
        let deadline = self.timeout.map(|t| start + t.as_nanos() as u64);
        let result = loop {
            // Wait at most a liveness-probe interval at a time, so a dead consumer is
            // noticed even when nothing wakes us.
            let slice = self.liveness_interval;
            let now = now_nanos();
            let remaining = deadline.map_or(slice, |d| Duration::from_nanos(d.saturating_sub(now)).min(slice));
            // Never sleep past the attach deadline of a consumer that has not come.
            let attach_left = Duration::from_nanos((start + self.attach_timeout.as_nanos() as u64).saturating_sub(now));
            let remaining = if self.unattached_on(on).is_some() { remaining.min(attach_left) } else { remaining };
            let slice_start = now_nanos();
            let awaiting = self.awaits_attach(on);
            let out = waiter.wait(set.wake(), Some(remaining), || {
                if self.cancelled() {
                    return Some(Err(Error::Cancelled));
                }
                f(self).transpose()
            });
            // Report back-pressured time slice by slice, so observers see a writer that
            // stays blocked for a long time.
            let waited = now_nanos().saturating_sub(slice_start);
            if awaiting {
                self.stats.awaiting_consumer_ns += waited;
            } else {
                self.stats.back_pressured_ns += waited;
                if let Some(t) = &self.task {
                    t.add_back_pressured(waited);
                }
            }
            match out {
                WaitOutcome::Ready(r) => break r,
                WaitOutcome::TimedOut => {
                    if deadline.is_some_and(|d| now_nanos() >= d) {
                        break Err(Error::Timeout(self.timeout.unwrap_or_default(), what));
                    }
                    let waited = Duration::from_nanos(now_nanos().saturating_sub(start));
                    if waited >= self.attach_timeout {
                        if let Some(c) = self.unattached_on(on) {
                            break Err(Error::NoConsumer {
                                partition: self.id.to_string(),
                                subpartition: c as u32,
                                waited,
                            });
                        }
                    }
                    if let Err(e) = self.check_consumers() {
                        break Err(e);
                    }
                }
            }
        };
        self.waiter = waiter;
        result
    }

    /// The subpartition whose consumer has not attached that a wait on `on` waits for.
    fn unattached_on(&self, on: WaitOn) -> Option<usize> {
        let unattached = |s: &Subpartition| !s.writer.consumer_attached();
        match on {
            WaitOn::Channel(c) => unattached(&self.subs[c]).then_some(c),
            WaitOn::Every => self.subs.iter().position(unattached),
            WaitOn::Drain => self.subs.iter().position(|s| unattached(s) && !s.writer.is_consumed()),
        }
    }

    /// Fails with [`Error::PeerDied`] if the consumer of an unconsumed subpartition died:
    /// one that a reclaimer marked dead, or one this check finds dead itself (it then
    /// reclaims the dead process: the first live process to notice does). Either way the
    /// segments the dead consumer held come back to the pool first.
    fn check_consumers(&mut self) -> Result<()> {
        if let Some(e) = self.settle_dead_consumers() {
            return Err(e);
        }
        let mut memo = liveness::LivenessMemo::new();
        for (i, s) in self.subs.iter().enumerate() {
            if s.writer.is_consumed() {
                continue;
            }
            let Some(w) = s.writer.block().consumer_worker() else {
                continue;
            };
            if let Liveness::Dead { pid } = memo.liveness(&self.arena, w) {
                liveness::declare_dead(&self.arena, w);
                super::reclaim::reclaim_slot(&self.arena, w);
                if let Some(e) = self.settle_dead_consumers() {
                    return Err(e);
                }
                return Err(Error::PeerDied {
                    role: "consumer",
                    place: format!("partition {} subpartition {i}", self.id),
                    pid,
                });
            }
        }
        Ok(())
    }

    /// Takes back the segments in flight to consumers that a reclaimer found dead (they
    /// will never release them); returns the error for the first such subpartition.
    fn settle_dead_consumers(&mut self) -> Option<Error> {
        let mut first = None;
        for (i, s) in self.subs.iter_mut().enumerate() {
            if !s.writer.consumer_is_dead() {
                continue;
            }
            if !s.settled {
                s.settled = true;
                // What the reader released before it died is in the credit ring.
                let _ = s.writer.reclaim(&mut self.pool);
                for seg in s.writer.take_in_flight() {
                    // Errors only for a segment not ours: nothing to take back then.
                    let _ = self.pool.release_share(seg, false, true);
                }
            }
            if first.is_none() {
                first = Some(Error::PeerDied {
                    role: "consumer",
                    place: format!("partition {} subpartition {i}", self.id),
                    // Written by the reclaimer before its Release CAS, which
                    // `consumer_is_dead` Acquired.
                    pid: s.writer.block().dead_peer(),
                });
            }
        }
        first
    }

    fn open_builder(&mut self, c: usize) -> Result<()> {
        let seg = self.block_until("credit and a free segment", WaitOn::Channel(c), |p| {
            p.reclaim_marked()?;
            if !p.subs[c].writer.reserve_credit() {
                p.subs[c].writer.want_credit()?;
                return Ok(None);
            }
            p.pool.request(Some(c as u32))
        })?;
        self.report();
        let mut b = BufferBuilder::new(seg, 1);
        // A size hint from the consumer's buffer debloater; any value is safe (clamped to
        // the segment), it only changes where segments end.
        if let Some(want) = self.subs[c].writer.block().segment_fill_wanted() {
            b.set_limit(want.max(MIN_DEBLOAT_BYTES));
        }
        let idx = b.index();
        let sub = &mut self.subs[c];
        sub.writer.publish(Descriptor::Buffer(idx))?;
        if let Some(h) = &self.handoff {
            sub.epoch = next_epoch(sub.epoch);
            h.open(c, sub.epoch, idx);
        }
        sub.pending = 0;
        sub.folded_at = b.position();
        sub.builder = Some(b);
        self.stats.segments_out += 1;
        Ok(())
    }

    /// The arena this partition lives in.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Lets a flusher thread commit this partition's open builders while its writer is
    /// away (the buffer timeout of a writer whose thread waits elsewhere): returns the
    /// handoff to pass to [`FlushHandoff::flush`] (slot `c`: subpartition `c`, slot
    /// [`num_subpartitions`](Self::num_subpartitions): the broadcast builder). Builders
    /// already open take part from now on.
    pub fn flush_handoff(&mut self) -> Arc<FlushHandoff> {
        if let Some(h) = &self.handoff {
            return h.clone();
        }
        let h = Arc::new(FlushHandoff::new(self.subs.len() + 1));
        for (c, s) in self.subs.iter_mut().enumerate() {
            if let Some(b) = &s.builder {
                s.epoch = next_epoch(s.epoch);
                h.open(c, s.epoch, b.index());
                h.stage(c, s.epoch, b.position());
            }
        }
        if let Some(b) = &self.broadcast {
            self.broadcast_epoch = next_epoch(self.broadcast_epoch);
            h.open(self.subs.len(), self.broadcast_epoch, b.index());
            h.stage(self.subs.len(), self.broadcast_epoch, b.position());
        }
        self.handoff = Some(h.clone());
        h
    }

    fn close_builder(&mut self, c: usize) -> Result<()> {
        self.fold(c);
        let sub = &mut self.subs[c];
        if let Some(mut b) = sub.builder.take() {
            if let Some(h) = &self.handoff {
                h.retire(c, sub.epoch);
            }
            b.finish();
            sub.dirty = false;
            let blk = sub.writer.block();
            // Relaxed (both): statistics for observers.
            blk.records_out.store(sub.records, Ordering::Relaxed);
            blk.bytes_out.store(sub.bytes, Ordering::Relaxed);
            sub.writer.notify_consumer()?;
        }
        Ok(())
    }

    fn mark_dirty(&mut self, c: usize) {
        if !self.subs[c].dirty {
            self.subs[c].dirty = true;
            self.dirty.push(c as u32);
        }
    }

    /// Writes `record` to subpartition `c`, serializing it in place (or across segments
    /// when it does not fit). Blocks for credit or segments (backpressure).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for a channel out of range, [`Error::PartitionFinished`],
    /// [`Error::TooLarge`] above 256 MiB, wait and consumer errors.
    // inline(always): the fast path belongs in the caller's record loop (a call per record,
    // its Result returned through memory, cost the 16 B shuffle job's generator).
    #[inline(always)]
    pub fn emit<R: Record + ?Sized>(&mut self, record: &R, c: u32) -> Result<()> {
        // Fast path: the channel's segment is open and has room to spare. No look at the
        // broadcast builder: while it is open no channel has one (`broadcast_emit` closes
        // them first, `emit_slow` closes it before opening one).
        if let Some(sub) = self.subs.get_mut(c as usize) {
            if let Some(b) = sub.builder.as_mut() {
                debug_assert!(self.broadcast.is_none());
                let len = record.serialized_len();
                if len <= DEFAULT_MAX_RECORD && b.try_write_framed(record, len) {
                    if let Some(h) = &self.handoff {
                        // SAFETY: c < subs.len() (`get_mut` above), and the handoff has a
                        // slot per subpartition plus one (`flush_handoff`).
                        unsafe { h.stage_unchecked(c as usize, sub.epoch, b.position()) };
                    }
                    // The one counter per record; folded per segment (`fold`). Tried in
                    // session 9 and not kept (emit bench p10, AMD EPYC, interleaved with
                    // this code): counting only records of another length than the last
                    // slow-path one (the rest from the position; no store per record),
                    // 3.43-3.68 ns vs 3.15 (8 B); loading `handoff`, `epoch`, `dirty` and
                    // `pending` before the record's stores and taking the position from
                    // the builder's return, 3.64 vs 3.17; marking this branch and the
                    // builder's unaligned-prefix one cold, 3.37-3.42 vs 3.13-3.16.
                    sub.pending += 1;
                    if !sub.dirty {
                        sub.dirty = true;
                        self.dirty.push(c);
                    }
                    return Ok(());
                }
            }
        }
        self.emit_slow(record, c)
    }

    /// Writes the records `records` yields, at most `max`, each to the subpartition
    /// `select` picks for it, as [`emit`](Self::emit) would one by one; returns how many
    /// (fewer than `max` only when `records` ended). The batch path: consecutive records
    /// of one subpartition that fit its open segment go in one run
    /// ([`crate::buffer::FramedRun`]) whose write position and count stay in registers and
    /// whose records are published in the data together, by one Release store, with one
    /// staged position and one count for the run; the rest takes `emit`'s slow path.
    ///
    /// A run's records become visible to a reader polling the data (and to a flush) when
    /// the run ends: at the end of the segment, of the batch, or at the first record of
    /// another subpartition. `records` runs between the run's writes: an iterator that
    /// waits in `next` (for the outside world) holds back the records of the run so far.
    ///
    /// # Errors
    /// As [`emit`](Self::emit), with the number of records written before the failing
    /// one (which was taken from `records` and not written).
    // inline(always): the batch's loop belongs in the caller's, with its iterator.
    #[inline(always)]
    pub fn emit_batch<R, T, I, F>(&mut self, records: &mut I, max: usize, mut select: F) -> BatchResult<usize>
    where
        R: Record + ?Sized,
        T: std::borrow::Borrow<R>,
        I: Iterator<Item = T>,
        F: FnMut(&R) -> u32,
    {
        let mut n = 0usize;
        // A record pulled for a run that did not take it: the next one written.
        let mut held: Option<(T, u32)> = None;
        while n < max {
            let (t, c) = match held.take() {
                Some(x) => x,
                None => match records.next() {
                    Some(t) => {
                        let c = select(t.borrow());
                        (t, c)
                    }
                    None => break,
                },
            };
            n += 1;
            if let Some(sub) = self.subs.get_mut(c as usize) {
                if let Some(b) = sub.builder.as_mut() {
                    // As in `emit`: no channel has a builder while the broadcast one is open.
                    debug_assert!(self.broadcast.is_none());
                    let r = t.borrow();
                    let len = r.serialized_len();
                    let run = if len <= DEFAULT_MAX_RECORD { b.start_run(r, len) } else { None };
                    if let Some(mut run) = run {
                        // Bounded by `max`.
                        while n < max {
                            let Some(t) = records.next() else { break };
                            let r = t.borrow();
                            let next = select(r);
                            let len = r.serialized_len();
                            if next != c || len > DEFAULT_MAX_RECORD || !run.try_push(r, len) {
                                held = Some((t, next));
                                break;
                            }
                            n += 1;
                        }
                        // Publishes the run (see `FramedRun`), then stages and counts it
                        // as `emit` does one record.
                        let (k, pos) = run.finish();
                        sub.pending += k;
                        if let Some(h) = &self.handoff {
                            // SAFETY: c < subs.len() (`get_mut` above), and the handoff
                            // has a slot per subpartition plus one (`flush_handoff`).
                            unsafe { h.stage_unchecked(c as usize, sub.epoch, pos) };
                        }
                        if !sub.dirty {
                            sub.dirty = true;
                            self.dirty.push(c);
                        }
                        continue;
                    }
                }
            }
            if let Err(e) = self.emit_slow(t.borrow(), c) {
                // `n` counts the failing record.
                return Err((n - 1, e));
            }
        }
        debug_assert!(held.is_none(), "a held record is written before the batch ends");
        Ok(n)
    }

    fn emit_slow<R: Record + ?Sized>(&mut self, record: &R, c: u32) -> Result<()> {
        let c = c as usize;
        if c >= self.subs.len() {
            return Err(ConfigError::OutOfRange {
                what: "channel",
                value: c as i64,
                min: 0,
                max: self.subs.len() as i64 - 1,
            }
            .into());
        }
        self.check_open()?;
        let len = record.serialized_len();
        if len > DEFAULT_MAX_RECORD {
            return Err(Error::TooLarge { what: "record", len, max: DEFAULT_MAX_RECORD });
        }
        if self.broadcast.is_some() {
            // The shared segment comes first on every channel: end it, so what follows is
            // read after it.
            self.close_broadcast()?;
        }
        // This record is counted below, not by the position: fold what came before it.
        self.fold(c);
        loop {
            if self.subs[c].builder.is_none() {
                self.open_builder(c)?;
            }
            let b = self.subs[c].builder.as_mut().expect("opened above");
            match write_record(b, record) {
                WriteOutcome::Written => break,
                WriteOutcome::NeedsNewSegment => self.close_builder(c)?,
                WriteOutcome::Spans if starts_next_segment(b, len) => self.close_builder(c)?,
                WriteOutcome::Spans => {
                    self.write_spanning(record, Some(c))?;
                    break;
                }
            }
        }
        let sub = &mut self.subs[c];
        sub.records += 1;
        sub.bytes += len as u64;
        sub.pending = 0;
        sub.folded_at = sub.builder.as_ref().map_or(0, |b| b.position());
        self.stats.records_out += 1;
        self.stats.bytes_out += len as u64;
        if self.subs[c].builder.as_ref().is_some_and(|b| b.is_full()) {
            self.close_builder(c)?;
        } else {
            self.mark_dirty(c);
            if let (Some(h), Some(b)) = (&self.handoff, &self.subs[c].builder) {
                h.stage(c, self.subs[c].epoch, b.position());
            }
        }
        Ok(())
    }

    /// Writes a record that does not fit the current segment of channel `c` (None: the
    /// broadcast builder) across as many segments as it needs.
    fn write_spanning<R: Record + ?Sized>(&mut self, record: &R, c: Option<usize>) -> Result<()> {
        if let Some(payload) = record.as_serialized() {
            // Already bytes: copied straight into the segments.
            self.stats.spanning_records += 1;
            return self.write_spanning_bytes(payload, c);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        // No clear() first: serialize_into overwrites every byte, so only growth is zeroed.
        scratch.resize(record.serialized_len(), 0);
        record.serialize_into(&mut scratch);
        let r = self.write_spanning_bytes(&scratch, c);
        if scratch.capacity() <= 1 << 20 {
            self.scratch = scratch;
        }
        self.stats.spanning_records += 1;
        r
    }

    fn write_spanning_bytes(&mut self, payload: &[u8], c: Option<usize>) -> Result<()> {
        let mut off = {
            let b = self.builder_mut(c).expect("caller holds an open builder");
            debug_assert!(b.remaining() as usize >= LEN_PREFIX);
            write_spanning_head(b, payload)
        };
        while off < payload.len() {
            self.close(c)?;
            self.open(c)?;
            let b = self.builder_mut(c).expect("opened above");
            off += b.append(&payload[off..]);
        }
        // Behind the tail: the "nothing yet" word a polling reader may look at next.
        if let Some(b) = self.builder_mut(c) {
            b.end_record();
        }
        Ok(())
    }

    fn builder_mut(&mut self, c: Option<usize>) -> Option<&mut BufferBuilder> {
        match c {
            Some(c) => self.subs[c].builder.as_mut(),
            None => self.broadcast.as_mut(),
        }
    }

    fn open(&mut self, c: Option<usize>) -> Result<()> {
        match c {
            Some(c) => self.open_builder(c),
            None => self.open_broadcast(),
        }
    }

    fn close(&mut self, c: Option<usize>) -> Result<()> {
        match c {
            Some(c) => self.close_builder(c),
            None => self.close_broadcast(),
        }
    }

    /// Waits for a credit on every channel and a free segment (what a broadcast segment or
    /// a user event needs), reserving the credits.
    fn segment_for_every_channel(&mut self) -> Result<crate::memory::MemorySegment> {
        self.block_until("credit on every channel and a free segment", WaitOn::Every, |p| {
            p.reclaim_marked()?;
            let mut all = true;
            for s in &mut p.subs {
                if !s.writer.reserve_credit() {
                    s.writer.want_credit()?;
                    all = false;
                }
            }
            if !all {
                return Ok(None);
            }
            p.pool.request(None)
        })
    }

    fn open_broadcast(&mut self) -> Result<()> {
        let seg = self.segment_for_every_channel()?;
        let b = BufferBuilder::new(seg, self.subs.len() as u32);
        let idx = b.index();
        self.pool.expect_readers(idx, self.subs.len() as u32);
        for s in &mut self.subs {
            s.writer.publish(Descriptor::Buffer(idx))?;
        }
        if let Some(h) = &self.handoff {
            self.broadcast_epoch = next_epoch(self.broadcast_epoch);
            h.open(self.subs.len(), self.broadcast_epoch, idx);
        }
        self.broadcast = Some(b);
        self.stats.segments_out += 1;
        Ok(())
    }

    fn close_broadcast(&mut self) -> Result<()> {
        if let Some(mut b) = self.broadcast.take() {
            if let Some(h) = &self.handoff {
                h.retire(self.subs.len(), self.broadcast_epoch);
            }
            b.finish();
            for s in &mut self.subs {
                s.writer.notify_consumer()?;
            }
        }
        Ok(())
    }

    /// Writes `record` once into a segment that every subpartition reads (Flink's
    /// BroadcastRecordWriter): one copy in memory, reference counted by the readers.
    ///
    /// # Errors
    /// As [`emit`](Self::emit).
    pub fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        self.check_open()?;
        let len = record.serialized_len();
        if len > DEFAULT_MAX_RECORD {
            return Err(Error::TooLarge { what: "record", len, max: DEFAULT_MAX_RECORD });
        }
        // Per-channel builders would reorder against the shared one: close them first.
        if self.subs.iter().any(|s| s.builder.is_some()) {
            for c in 0..self.subs.len() {
                self.close_builder(c)?;
            }
        }
        loop {
            if self.broadcast.is_none() {
                self.open_broadcast()?;
            }
            let b = self.broadcast.as_mut().expect("opened above");
            match write_record(b, record) {
                WriteOutcome::Written => break,
                WriteOutcome::NeedsNewSegment => self.close_broadcast()?,
                WriteOutcome::Spans => {
                    self.write_spanning(record, None)?;
                    break;
                }
            }
        }
        self.stats.records_out += 1;
        self.stats.bytes_out += len as u64;
        if self.broadcast.as_ref().is_some_and(|b| b.is_full()) {
            self.close_broadcast()?;
        } else {
            if !self.dirty.contains(&u32::MAX) {
                self.dirty.push(u32::MAX);
            }
            if let (Some(h), Some(b)) = (&self.handoff, &self.broadcast) {
                h.stage(self.subs.len(), self.broadcast_epoch, b.position());
            }
        }
        Ok(())
    }

    /// Makes what was written to subpartition `c` visible and wakes its consumer.
    ///
    /// # Errors
    /// A consumer that corrupted its channel's gate routing.
    pub fn flush(&mut self, c: u32) -> Result<()> {
        let c = c as usize;
        if let Some(sub) = self.subs.get_mut(c) {
            if let Some(b) = sub.builder.as_mut() {
                if b.commit() {
                    sub.writer.notify_consumer()?;
                }
            }
            sub.dirty = false;
        }
        Ok(())
    }

    /// Makes everything written visible (Flink's flushAll).
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn flush_all(&mut self) -> Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut r = Ok(());
        if dirty.len() > 1 && !dirty.contains(&u32::MAX) {
            // Many channels: commit them all, one fence, then notify them all (one fence
            // for the lot instead of one per channel; consumers in other processes see
            // the positions as soon as each commit's store lands).
            dirty.retain(|&c| {
                let sub = &mut self.subs[c as usize];
                sub.dirty = false;
                sub.builder.as_mut().is_some_and(|b| {
                    let raised = b.commit();
                    // The writer comes back to this segment only after the others.
                    b.prefetch_next_line();
                    raised
                })
            });
            // SeqCst fence: stands for the fence of every `NotifySet::mark` below (see
            // `mark_fenced`); pairs with the fence in `NotifySet::drain`.
            fence(Ordering::SeqCst);
            r = self.wake_flushed(&dirty);
        } else {
            for &c in &dirty {
                let res = if c == u32::MAX { self.flush_broadcast() } else { self.flush(c) };
                if res.is_err() && r.is_ok() {
                    r = res;
                }
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        r
    }

    /// Wakes the consumers of the channels `flush_all` just committed (after its fence):
    /// the members of one gate's notify set are marked together, one load (and at most
    /// one read-modify-write) per bitmap word instead of per channel; a channel whose gate
    /// is not known yet is woken on its own. Returns the first error.
    fn wake_flushed(&mut self, committed: &[u32]) -> Result<()> {
        let mut r = Ok(());
        let mut members = std::mem::take(&mut self.wake_scratch);
        let mut i = 0;
        // Bounded: every turn moves `i` forward by at least one.
        while i < committed.len() {
            let c = committed[i] as usize;
            let Some((set, _)) = self.subs[c].writer.consumer_route() else {
                let res = self.subs[c].writer.notify_consumer_fenced();
                if res.is_err() && r.is_ok() {
                    r = res;
                }
                i += 1;
                continue;
            };
            // The run of channels routed to the same set.
            members.clear();
            while let Some(&c) = committed.get(i) {
                match self.subs[c as usize].writer.consumer_route() {
                    Some((s, index)) if s == set => members.push(index),
                    _ => break,
                }
                i += 1;
            }
            let res = NotifySet::new(&self.arena, set)
                .and_then(|n| n.mark_all_fenced(members.iter().copied()))
                .map_err(Error::from);
            if res.is_err() && r.is_ok() {
                r = res;
            }
        }
        self.wake_scratch = members;
        r
    }

    fn flush_broadcast(&mut self) -> Result<()> {
        if let Some(b) = self.broadcast.as_mut() {
            if b.commit() {
                for s in &mut self.subs {
                    s.writer.notify_consumer()?;
                }
            }
        }
        Ok(())
    }

    /// Sends `event` to every subpartition, after everything written before it.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a user event above a segment, wait errors.
    pub fn broadcast_event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::CheckpointBarrier(b) if b.unaligned => {
                // Overtakes data: open builders stay open; the barrier jumps the queue.
                self.flush_all()?;
                let d = Descriptor::Barrier(*b);
                for c in 0..self.subs.len() {
                    self.block_until("room in the priority ring", WaitOn::Channel(c), |p| {
                        match p.subs[c].writer.publish_priority(d) {
                            Ok(()) => Ok(Some(())),
                            Err(Error::RingFull { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    })?;
                }
                Ok(())
            }
            Event::User(bytes) => self.broadcast_user_event(bytes),
            _ => {
                let d = match event {
                    Event::EndOfPartition => Descriptor::Event(EventCode::EndOfPartition),
                    Event::EndOfData => Descriptor::Event(EventCode::EndOfData),
                    Event::CheckpointBarrier(b) => Descriptor::Barrier(*b),
                    Event::User(_) => unreachable!("handled above"),
                };
                self.close_all()?;
                let slots = d.encode_slots().1 as u64;
                for c in 0..self.subs.len() {
                    self.block_until("room in the data ring", WaitOn::Channel(c), |p| {
                        p.reclaim_marked()?;
                        if p.subs[c].writer.has_room(slots) {
                            p.subs[c].writer.publish(d)?;
                            Ok(Some(()))
                        } else {
                            Ok(None)
                        }
                    })?;
                }
                Ok(())
            }
        }
    }

    fn close_all(&mut self) -> Result<()> {
        self.close_broadcast()?;
        for c in 0..self.subs.len() {
            self.close_builder(c)?;
        }
        self.dirty.clear();
        Ok(())
    }

    fn broadcast_user_event(&mut self, bytes: &[u8]) -> Result<()> {
        let max = self.arena.segment_size() as usize - LEN_PREFIX;
        if bytes.len() > max {
            return Err(Error::TooLarge { what: "user event", len: bytes.len(), max });
        }
        self.close_all()?;
        let seg = self.segment_for_every_channel()?;
        let mut b = BufferBuilder::new(seg, self.subs.len() as u32);
        let _ = write_record(&mut b, bytes);
        b.finish();
        let idx = b.index();
        drop(b);
        self.pool.expect_readers(idx, self.subs.len() as u32);
        for s in &mut self.subs {
            s.writer.publish(Descriptor::EventBuffer(idx))?;
        }
        Ok(())
    }

    /// Ends the partition: finishes every segment, sends EndOfPartition to every
    /// subpartition and marks the directory entry finished. Idempotent.
    ///
    /// # Errors
    /// Wait errors while rings are full.
    pub fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.broadcast_event(&Event::EndOfPartition)?;
        self.finished = true;
        self.report();
        self.manager.set_state(self.slot, PARTITION_FINISHED);
        Ok(())
    }

    /// Waits until consumers released every segment and read the end of every subpartition
    /// (or left), then releases the partition: its channel blocks and notify set return to
    /// the arena and lookups answer "released". Like Flink's pipelined partition, it stays
    /// until every subpartition was consumed, so a consumer deployed late still finds it.
    ///
    /// # Errors
    /// [`Error::Timeout`] if consumers do not consume everything within `timeout`.
    pub fn release_when_consumed(&mut self, timeout: Option<Duration>) -> Result<()> {
        let saved = self.timeout;
        self.timeout = timeout;
        let r = self.block_until("consumers to consume every subpartition", WaitOn::Drain, |p| {
            p.reclaim_marked()?;
            p.settle_dead_consumers();
            Ok((p.pool.outstanding() == 0 && p.subs.iter_mut().all(|s| s.writer.consumed())).then_some(()))
        });
        self.timeout = saved;
        r?;
        self.release_now();
        Ok(())
    }

    /// Every consumer read EndOfPartition (or left) and every segment is back.
    pub fn is_consumed(&self) -> bool {
        self.pool.outstanding() == 0 && self.subs.iter().all(|s| s.writer.is_consumed())
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            self.manager.set_state(self.slot, PARTITION_RELEASED);
            self.manager.release_gate(self.set_id);
            self.manager.release_channels(self.first_channel, self.subs.len() as u32);
        }
    }

    /// Marks the partition failed and wakes every consumer, which then stops with
    /// [`Error::ProducerFailed`].
    pub fn fail(&mut self) {
        // End the open segments first: a reader inside one waits for its end and would not
        // look at the channel's state before.
        if let Some(h) = &self.handoff {
            for (c, s) in self.subs.iter().enumerate().filter(|(_, s)| s.builder.is_some()) {
                h.retire(c, s.epoch);
            }
            if self.broadcast.is_some() {
                h.retire(self.subs.len(), self.broadcast_epoch);
            }
        }
        for b in self.subs.iter_mut().filter_map(|s| s.builder.as_mut()).chain(self.broadcast.as_mut()) {
            b.finish();
        }
        for s in &self.subs {
            s.writer.fail();
        }
        self.finished = true;
        self.manager.set_state(self.slot, PARTITION_FAILED);
    }
}

impl Drop for ResultPartition {
    fn drop(&mut self) {
        if !self.finished {
            self.fail();
        }
        // Take back whatever consumers already returned, and what dead consumers held;
        // segments still held by live consumers stay accounted to the channel blocks.
        let _ = self.reclaim_marked();
        self.settle_dead_consumers();
        for s in &mut self.subs {
            let _ = s.writer.reclaim(&mut self.pool);
        }
        if self.is_consumed() {
            self.release_now();
        }
    }
}

/// The next builder number of a handoff slot (never 0, which marks "none open").
/// Whether a record of `len` payload bytes that does not fit the rest of `b` goes whole
/// into the channel's next segment instead of spanning: a small record (at most 1/64 of a
/// segment framed, so at most that much of a segment is left unused) behind other records.
/// A small record that spans costs both sides their slow path (the writer's spanning
/// write, the reader's piece by piece read) where it fits the next segment anyway: with
/// 8 B records and 32 KiB segments two of every three segments ended in one.
fn starts_next_segment(b: &BufferBuilder, len: usize) -> bool {
    b.position() > 0 && (crate::record::frame::framed_len(len) as u64) * 64 <= u64::from(b.segment_size())
}

fn next_epoch(e: u32) -> u32 {
    e.wrapping_add(1).max(1)
}
