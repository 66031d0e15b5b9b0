//! `SingleInputGate` with one local input channel per producer subpartition it reads.

use crate::error::{Error, Result};
use crate::event::{CheckpointBarrier, Event};
use crate::memory::liveness::{self, Liveness, LivenessProbe};
use crate::memory::Arena;
use crate::metrics::TaskMetricsHandle;
use crate::partition::{RequestBackoff, ResultPartitionId, ResultPartitionManager};
use crate::record::frame::{self, Frame};
use crate::record::{RecordReader, Step};
use crate::ring::{ChannelReader, Descriptor, EventCode, NotifySet};
use crate::sync::{now_nanos, AtomicBool, Ordering, WaitPolicy, Waiter};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
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
}

/// Buffer debloating: keep about `throughput x target` bytes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebloatConfig {
    /// In-flight data the gate aims at, in time (Flink: 1 s).
    pub target: Duration,
    /// Smallest segment fill asked for (Flink's min buffer size is 256 B; here 1 KiB).
    pub min_bytes: u32,
    /// How often the throughput is measured and the size recomputed (Flink: 200 ms).
    pub period: Duration,
    /// A new size is announced only when it differs from the last by more than this
    /// percentage (Flink's threshold: 50%), so the size does not flutter.
    pub threshold_percent: u32,
}

impl Default for DebloatConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_secs(1),
            min_bytes: 1024,
            period: Duration::from_millis(200),
            threshold_percent: 50,
        }
    }
}

/// The debloater's state in a gate.
#[derive(Debug, Clone)]
struct Debloater {
    cfg: DebloatConfig,
    last_ns: u64,
    last_bytes: u64,
    announced: u32,
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
        }
    }
}

/// Data an unaligned barrier overtook: bytes `[from, to)` of `segment` still unread on
/// `channel` (the in-flight data a checkpoint must persist as channel state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overtaken {
    /// Channel index in the gate.
    pub channel: u32,
    /// Segment index.
    pub segment: u32,
    /// First unread byte.
    pub from: u32,
    /// End of the published bytes.
    pub to: u32,
}

/// What a gate hands out.
#[derive(Debug)]
pub enum GateItem<'a> {
    /// A record, borrowed from shared memory (or from the reassembly buffer when it spanned
    /// segments).
    Record {
        /// Channel index in the gate.
        channel: u32,
        /// Payload.
        data: &'a [u8],
    },
    /// A user event from one channel.
    Event {
        /// Channel index.
        channel: u32,
        /// The event.
        event: Event,
    },
    /// Every channel sent EndOfData.
    EndOfData,
    /// Aligned checkpoint barrier: it arrived on every live channel (each was blocked after
    /// its barrier until then).
    Barrier(CheckpointBarrier),
    /// An unaligned barrier arrived on `channel`, overtaking `overtaken`.
    UnalignedBarrier {
        /// Channel index.
        channel: u32,
        /// The barrier.
        barrier: CheckpointBarrier,
        /// In-flight data it overtook on that channel.
        overtaken: Vec<Overtaken>,
    },
    /// Every channel reached EndOfPartition: the input is over.
    End,
}

/// What [`SingleInputGate::next_view`] hands out: records as their chunks in place, anything
/// else as [`GateItem`].
#[derive(Debug)]
pub enum GateView<'a> {
    /// A record, as the chunks of the segments it covers (one chunk unless it spans
    /// segments and the gate reads spans in place, [`SingleInputGate::set_spans_in_place`]).
    Record {
        /// Channel index in the gate.
        channel: u32,
        /// Payload, borrowed from shared memory.
        record: crate::record::RecordChunks<'a>,
    },
    /// Anything but a record ([`GateItem::Record`] never appears here).
    Item(GateItem<'a>),
}

/// What `advance` prepared, before borrowing.
pub(crate) enum Ready {
    Record(u32),
    Item(GateItem<'static>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Active,
    Blocked,
    Finished,
}

struct InputChannel {
    reader: RecordReader,
    state: ChannelState,
    queued: bool,
    floating: u32,
    end_of_data: bool,
    served: u32,
    /// Records read when its producer was last seen dead, and how many looks since.
    dead_progress: u64,
    dead_looks: u32,
}

/// A gate over local input channels.
///
/// Dropping it before it handed out [`GateItem::End`] closes every channel not finished
/// yet: their producers stop with [`crate::Error::ConsumerGone`] (a partition waiting in
/// `release_when_consumed` counts a closed channel as consumed). Its gate block returns to
/// the arena.
pub struct SingleInputGate {
    arena: Arc<Arena>,
    manager: ResultPartitionManager,
    set_id: u32,
    owns_set: bool,
    base: u32,
    channels: Vec<InputChannel>,
    ready: VecDeque<u32>,
    floating_free: Rc<Cell<u32>>,
    waiter: Waiter,
    batch: u32,
    finished: u32,
    end_of_data: u32,
    end_of_data_sent: bool,
    ended: bool,
    aligning: Option<(CheckpointBarrier, u32)>,
    wanting: Vec<u32>,
    /// Scratch lists reused by `collect_marks` and `grant_floating`, so the per-segment
    /// path allocates nothing once they have grown.
    marked: Vec<u32>,
    by_backlog: Vec<(std::cmp::Reverse<u32>, u32)>,
    unserved: Vec<u32>,
    /// Nanoseconds spent waiting for input.
    pub idle_ns: u64,
    task: Option<TaskMetricsHandle>,
    reported: (u64, u64),
    cancel: Option<Arc<AtomicBool>>,
    probe: LivenessProbe,
    liveness_interval: Duration,
    unreported: u32,
    debloater: Option<Debloater>,
    credits_total: u32,
}

impl std::fmt::Debug for SingleInputGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SingleInputGate(set {}, {} channels)", self.set_id, self.channels.len())
    }
}

impl SingleInputGate {
    /// Creates a gate: looks every partition up (with the request backoff), opens its
    /// channel, routes its wake-ups here and grants the exclusive credits.
    ///
    /// # Errors
    /// [`Error::PartitionNotFound`] / [`Error::PartitionReleased`], a subpartition out of
    /// range, [`Error::OutOfSlots`] when no gate block is free.
    pub fn new(arena: Arc<Arena>, cfg: &InputGateConfig) -> Result<Self> {
        let manager = ResultPartitionManager::new(arena.clone());
        let n = cfg.inputs.len() as u32;
        let set_id = manager.claim_gate(n)?;
        match Self::with_set(arena, cfg, set_id, 0) {
            Ok(mut g) => {
                g.owns_set = true;
                Ok(g)
            }
            Err(e) => {
                manager.release_gate(set_id);
                Err(e)
            }
        }
    }

    /// A gate whose channels are members `base..base + n` of notify set `set_id` (shared
    /// with other gates of a [`UnionInputGate`](super::UnionInputGate)).
    pub(crate) fn with_set(arena: Arc<Arena>, cfg: &InputGateConfig, set_id: u32, base: u32) -> Result<Self> {
        if cfg.inputs.is_empty() {
            return Err(Error::Invalid { what: "input gate", detail: "no input channels".into() });
        }
        let cap = arena.config().ring_capacity;
        let max_credit = cfg.exclusive_credits + cfg.floating_credits;
        if cfg.exclusive_credits == 0 || max_credit >= cap {
            return Err(Error::Invalid {
                what: "credits",
                detail: format!(
                    "exclusive {} (at least 1) + floating {} must stay below the ring capacity {cap}",
                    cfg.exclusive_credits, cfg.floating_credits
                ),
            });
        }
        let manager = ResultPartitionManager::new(arena.clone());
        let floating_free = Rc::new(Cell::new(cfg.floating_credits));
        let mut channels: Vec<InputChannel> = Vec::with_capacity(cfg.inputs.len());
        for (i, spec) in cfg.inputs.iter().enumerate() {
            let info = match attach_consumer(&arena, &manager, spec, cfg.backoff) {
                Ok(info) => info,
                Err(e) => {
                    for ch in &channels {
                        detach_consumer(&arena, ch.reader.channel().id());
                    }
                    return Err(e);
                }
            };
            let reader = ChannelReader::open_with_floating(
                arena.clone(),
                info.first_channel + spec.subpartition,
                floating_free.clone(),
            )?;
            if let Some(w) = cfg.worker {
                reader.block().set_consumer_worker(w);
            }
            reader.set_gate(set_id, base + i as u32);
            reader.grant(cfg.exclusive_credits)?;
            channels.push(InputChannel {
                reader: RecordReader::new(reader),
                state: ChannelState::Active,
                queued: true,
                floating: 0,
                end_of_data: false,
                served: 0,
                dead_progress: 0,
                dead_looks: 0,
            });
        }
        let ready = (0..channels.len() as u32).collect();
        // Relaxed: a statistic (the denominator of inPoolUsage).
        arena.gates()[set_id as usize]
            .credit_capacity
            .fetch_add(cfg.exclusive_credits * channels.len() as u32 + cfg.floating_credits, Ordering::Relaxed);
        Ok(Self {
            arena,
            manager,
            set_id,
            owns_set: false,
            base,
            channels,
            ready,
            floating_free,
            waiter: Waiter::new(cfg.wait_policy),
            batch: cfg.batch.max(1),
            finished: 0,
            end_of_data: 0,
            end_of_data_sent: false,
            ended: false,
            aligning: None,
            wanting: Vec::new(),
            marked: Vec::new(),
            by_backlog: Vec::new(),
            unserved: Vec::new(),
            idle_ns: 0,
            task: None,
            reported: (0, 0),
            cancel: None,
            probe: LivenessProbe::new(cfg.liveness_interval.max(Duration::from_millis(1))),
            liveness_interval: cfg.liveness_interval.max(Duration::from_millis(1)),
            unreported: 0,
            debloater: cfg.debloat.map(|c| Debloater { cfg: c, last_ns: now_nanos(), last_bytes: 0, announced: 0 }),
            credits_total: cfg.exclusive_credits * cfg.inputs.len() as u32 + cfg.floating_credits,
        })
    }

    /// A flag that, once set, makes waiting end with [`Error::Cancelled`].
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// Reports this gate's input and idle time to a task's metrics block.
    pub fn set_task_metrics(&mut self, task: TaskMetricsHandle) {
        // Relaxed: bookkeeping for observers.
        self.arena.gates()[self.set_id as usize].consumer_task.store(task.slot() + 1, Ordering::Relaxed);
        self.task = Some(task);
    }

    /// Buffer debloating: every period, measure the bytes read per second and ask every
    /// channel's producer to fill segments with `throughput x target / credits` bytes, so
    /// that about `throughput x target` bytes are in flight when every credit is used.
    fn debloat(&mut self) {
        let Some(d) = self.debloater.as_mut() else {
            return;
        };
        let now = now_nanos();
        let elapsed = now.saturating_sub(d.last_ns);
        if elapsed < d.cfg.period.as_nanos() as u64 {
            return;
        }
        let bytes: u64 = self.channels.iter().map(|c| c.reader.bytes).sum();
        let rate = (bytes - d.last_bytes) as f64 * 1e9 / elapsed as f64;
        d.last_ns = now;
        d.last_bytes = bytes;
        let want_total = rate * d.cfg.target.as_secs_f64();
        let per = (want_total / f64::from(self.credits_total.max(1)))
            .clamp(f64::from(d.cfg.min_bytes), f64::from(self.arena.segment_size())) as u32;
        let old = d.announced;
        if old != 0 && u64::from(per.abs_diff(old)) * 100 <= u64::from(old) * u64::from(d.cfg.threshold_percent) {
            return;
        }
        d.announced = per;
        for ch in &self.channels {
            ch.reader.channel().block().ask_segment_fill(per);
        }
    }

    /// The segment fill this gate last asked its producers for (0: debloating off or not
    /// decided yet).
    pub fn debloat_bytes(&self) -> u32 {
        self.debloater.as_ref().map_or(0, |d| d.announced)
    }

    fn report(&mut self) {
        self.debloat();
        if let Some(t) = &self.task {
            let (r, b) = self.channels.iter().fold((0, 0), |(r, b), c| (r + c.reader.records, b + c.reader.bytes));
            t.add_in(r - self.reported.0, b - self.reported.1);
            self.reported = (r, b);
        }
    }

    /// Number of channels.
    pub fn num_channels(&self) -> u32 {
        self.channels.len() as u32
    }

    /// Whether every channel reached EndOfPartition.
    pub fn is_finished(&self) -> bool {
        self.ended
    }

    /// Records read so far on channel `c`.
    pub fn records_read(&self, c: u32) -> u64 {
        self.channels.get(c as usize).map_or(0, |ch| ch.reader.records)
    }

    /// Floating credits not assigned to any channel now.
    pub fn floating_available(&self) -> u32 {
        self.floating_free.get()
    }

    /// Floating credits held by channel `c`.
    pub fn floating_held(&self, c: u32) -> u32 {
        self.channels.get(c as usize).map_or(0, |ch| ch.floating)
    }

    /// Queues member `local` (marked by its producer) for service.
    pub(crate) fn enqueue(&mut self, local: u32) {
        if let Some(ch) = self.channels.get_mut(local as usize) {
            if !ch.queued && ch.state != ChannelState::Finished {
                ch.queued = true;
                self.ready.push_back(local);
            }
            if ch.reader.channel().credit_wanted() {
                self.wanting.push(local);
            }
        }
    }

    fn collect_marks(&mut self) -> Result<()> {
        let set = NotifySet::new(&self.arena, self.set_id)?;
        let base = self.base;
        let n = self.channels.len() as u32;
        let mut marked = std::mem::take(&mut self.marked);
        set.drain(base + n, |i| {
            if i >= base {
                marked.push(i - base)
            }
        });
        for &i in &marked {
            self.enqueue(i);
        }
        marked.clear();
        self.marked = marked;
        self.grant_floating()
    }

    /// Grants floating credits to channels whose producers want credit, largest backlog
    /// first. Channels left without one stay in the wanting list, and the gate takes
    /// floating credits back from channels that ran dry so they can be granted next.
    pub(crate) fn grant_floating(&mut self) -> Result<()> {
        if self.wanting.is_empty() {
            return Ok(());
        }
        let mut wanting = std::mem::take(&mut self.wanting);
        wanting.sort_unstable();
        wanting.dedup();
        // Each backlog is read once: producers change them while we sort, and a sort whose
        // keys move under it may panic (the order would not be total).
        // The backlog is a statistic written by the producer; it only orders our choice.
        let mut by_backlog = std::mem::take(&mut self.by_backlog);
        by_backlog.extend(
            wanting
                .iter()
                .map(|&c| (std::cmp::Reverse(self.channels[c as usize].reader.channel().block().backlog()), c)),
        );
        by_backlog.sort_unstable();
        wanting.clear();
        wanting.extend(by_backlog.drain(..).map(|(_, c)| c));
        self.by_backlog = by_backlog;
        let mut unserved = std::mem::take(&mut self.unserved);
        for c in wanting.drain(..) {
            let ch = &mut self.channels[c as usize];
            if ch.state == ChannelState::Finished || !ch.reader.channel().credit_wanted() {
                continue;
            }
            if self.floating_free.get() == 0 {
                unserved.push(c);
                continue;
            }
            ch.reader.channel().grant(1)?;
            ch.floating += 1;
            self.floating_free.set(self.floating_free.get() - 1);
        }
        let short = !unserved.is_empty();
        // The emptied lists keep their allocations for the next round.
        wanting.append(&mut unserved);
        self.unserved = unserved;
        self.wanting = wanting;
        if short {
            self.revoke_idle_floating();
        }
        Ok(())
    }

    /// Takes the floating credits back from every channel that ran dry and whose producer
    /// does not ask for credit (they return to the pool as its segments are released).
    fn revoke_idle_floating(&mut self) {
        for ch in self.channels.iter_mut() {
            if ch.floating > 0 && !ch.queued && !ch.reader.channel().credit_wanted() {
                ch.reader.channel().credit_return().revoke(ch.floating);
                ch.floating = 0;
            }
        }
    }

    /// Channel `c` ran dry. Its floating credits stay with it unless another channel is
    /// waiting for one and the pool has none left: taking them back at every dry moment
    /// made a fast channel fall back to its exclusive credits and stall ~40% of the time.
    fn maybe_revoke(&mut self, c: usize) {
        if self.floating_free.get() > 0 || self.wanting.is_empty() {
            return;
        }
        let ch = &mut self.channels[c];
        if ch.floating > 0 && !ch.reader.channel().credit_wanted() {
            ch.reader.channel().credit_return().revoke(ch.floating);
            ch.floating = 0;
        }
    }

    fn live_channels(&self) -> u32 {
        self.channels.len() as u32 - self.finished
    }

    fn overtaken(&mut self, c: usize) -> Result<Vec<Overtaken>> {
        let ch = &mut self.channels[c];
        let mut out = Vec::new();
        if let Some((segment, from, to)) = ch.reader.unread_in_current()? {
            if to > from {
                out.push(Overtaken { channel: c as u32, segment, from, to });
            }
        }
        for d in ch.reader.channel_mut().queued_data()? {
            if let Descriptor::Buffer(s) = d {
                let ctl = self.arena.control(s, || format!("channel {c}"))?;
                // Acquire: pairs with the writer's Release commit (we report what is there).
                let to = ctl.position.load(Ordering::Acquire) & crate::memory::POSITION_MASK;
                out.push(Overtaken { channel: c as u32, segment: s, from: 0, to: to.min(self.arena.segment_size()) });
            }
        }
        Ok(out)
    }

    fn read_user_event(&self, c: usize, segment: u32) -> Result<Event> {
        let mut cons = self.channels[c].reader.channel().consumer(segment);
        let (bytes, fin) = cons.peek_final()?;
        let bad = |d: &str| Error::ProtocolViolation { place: format!("channel {c}"), detail: d.into() };
        if !fin {
            return Err(bad("user event segment not finished"));
        }
        match frame::decode(bytes) {
            Frame::Whole { payload, .. } => Ok(Event::User(payload.to_vec())),
            Frame::Partial { .. } => Err(bad("user event longer than its segment")),
            Frame::NoPrefix => Err(bad("user event segment too short")),
        }
    }

    fn on_event(&mut self, c: usize, d: Descriptor) -> Result<Option<Ready>> {
        match d {
            Descriptor::Event(EventCode::EndOfPartition) => {
                let ch = &mut self.channels[c];
                if ch.state != ChannelState::Finished {
                    ch.state = ChannelState::Finished;
                    ch.reader.channel().mark_consumed()?;
                    let b = ch.reader.channel().block();
                    // Relaxed (both): statistics for observers.
                    b.records_in.store(ch.reader.records, Ordering::Relaxed);
                    b.bytes_in.store(ch.reader.bytes, Ordering::Relaxed);
                    let had_eod = ch.end_of_data;
                    self.finished += 1;
                    if !had_eod {
                        self.end_of_data += 1;
                    }
                    let floating = std::mem::take(&mut self.channels[c].floating);
                    self.floating_free.set(self.floating_free.get() + floating);
                    self.grant_floating()?;
                }
                if let Some(r) = self.check_alignment()? {
                    return Ok(Some(r));
                }
                if self.end_of_data == self.channels.len() as u32
                    && !self.end_of_data_sent
                    && self.finished < self.channels.len() as u32
                {
                    self.end_of_data_sent = true;
                    return Ok(Some(Ready::Item(GateItem::EndOfData)));
                }
                if self.finished == self.channels.len() as u32 {
                    self.ended = true;
                    self.report();
                    return Ok(Some(Ready::Item(GateItem::End)));
                }
                Ok(None)
            }
            Descriptor::Event(EventCode::EndOfData) => {
                let ch = &mut self.channels[c];
                if !ch.end_of_data {
                    ch.end_of_data = true;
                    self.end_of_data += 1;
                }
                if self.end_of_data == self.channels.len() as u32 && !self.end_of_data_sent {
                    self.end_of_data_sent = true;
                    return Ok(Some(Ready::Item(GateItem::EndOfData)));
                }
                Ok(None)
            }
            Descriptor::Event(EventCode::ProducerFailed) => {
                Err(Error::ProducerFailed { channel: self.channels[c].reader.channel().id() })
            }
            Descriptor::EventBuffer(s) => {
                let event = self.read_user_event(c, s)?;
                Ok(Some(Ready::Item(GateItem::Event { channel: c as u32, event })))
            }
            Descriptor::Barrier(b) if b.unaligned => {
                // An unaligned barrier that arrived in the data ring (its priority copy is
                // what counts): nothing to do in order.
                Ok(None)
            }
            Descriptor::Barrier(b) => {
                match self.aligning {
                    Some((cur, _)) if cur.checkpoint_id > b.checkpoint_id => return Ok(None), // stale
                    Some((cur, _)) if cur.checkpoint_id == b.checkpoint_id => {}
                    _ => {
                        // A newer checkpoint aborts the alignment in progress.
                        for ch in &mut self.channels {
                            if ch.state == ChannelState::Blocked {
                                ch.state = ChannelState::Active;
                            }
                        }
                        self.aligning = Some((b, 0));
                    }
                }
                self.channels[c].state = ChannelState::Blocked;
                if let Some((_, n)) = self.aligning.as_mut() {
                    *n += 1;
                }
                self.check_alignment()
            }
            // Buffers travel in the data ring, where the record reader takes them; one in the
            // priority ring is a producer's mistake.
            Descriptor::Buffer(i) => Err(Error::ProtocolViolation {
                place: format!("channel {}", self.channels[c].reader.channel_mut().id()),
                detail: format!("buffer descriptor (segment {i}) in the priority ring"),
            }),
        }
    }

    fn check_alignment(&mut self) -> Result<Option<Ready>> {
        if let Some((b, n)) = self.aligning {
            if n >= self.live_channels() {
                self.aligning = None;
                for (i, ch) in self.channels.iter_mut().enumerate() {
                    if ch.state == ChannelState::Blocked {
                        ch.state = ChannelState::Active;
                        if !ch.queued {
                            ch.queued = true;
                            self.ready.push_back(i as u32);
                        }
                    }
                }
                return Ok(Some(Ready::Item(GateItem::Barrier(b))));
            }
        }
        Ok(None)
    }

    /// Serves ready channels until something is ready to hand out.
    pub(crate) fn advance_ready(&mut self) -> Result<Option<Ready>> {
        let mut budget = self.ready.len() * 2 + 2;
        while let Some(&c) = self.ready.front() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let ci = c as usize;
            let ch = &mut self.channels[ci];
            if ch.state == ChannelState::Finished {
                ch.queued = false;
                self.ready.pop_front();
                continue;
            }
            // Priority events first: unaligned barriers overtake everything, even a
            // channel blocked by an aligned barrier.
            let pr = if ch.reader.channel_mut().priority_pending()? {
                ch.reader.channel_mut().poll_priority()?
            } else {
                None
            };
            if let Some(Descriptor::Barrier(b)) = pr {
                let overtaken = self.overtaken(ci)?;
                return Ok(Some(Ready::Item(GateItem::UnalignedBarrier { channel: c, barrier: b, overtaken })));
            } else if let Some(d) = pr {
                if let Some(r) = self.on_event(ci, d)? {
                    return Ok(Some(r));
                }
                continue;
            }
            let ch = &mut self.channels[ci];
            if ch.state == ChannelState::Blocked {
                ch.queued = false;
                self.ready.pop_front();
                continue;
            }
            match ch.reader.poll()? {
                Step::Record => {
                    ch.served += 1;
                    if ch.served >= self.batch {
                        ch.served = 0;
                        self.ready.rotate_left(1);
                    }
                    return Ok(Some(Ready::Record(c)));
                }
                Step::Event(d) => {
                    if let Some(r) = self.on_event(ci, d)? {
                        return Ok(Some(r));
                    }
                }
                Step::Empty => {
                    ch.queued = false;
                    ch.served = 0;
                    let b = ch.reader.channel().block();
                    // Relaxed (both): statistics for observers.
                    b.records_in.store(ch.reader.records, Ordering::Relaxed);
                    b.bytes_in.store(ch.reader.bytes, Ordering::Relaxed);
                    self.ready.pop_front();
                    self.maybe_revoke(ci);
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn advance(&mut self) -> Result<Option<Ready>> {
        if self.ended {
            return Ok(Some(Ready::Item(GateItem::End)));
        }
        if let Some(r) = self.advance_ready()? {
            return Ok(Some(r));
        }
        if self.owns_set {
            self.collect_marks()?;
            return self.advance_ready();
        }
        Ok(None)
    }

    /// Per handed-out item off the per-record fast path.
    fn account_item(&mut self) {
        // Once per batch of records (the per-record fast path of `next` skips this), so the
        // debloater keeps its period under sustained load; a no-op when debloating is off.
        self.debloat();
        self.unreported += 1;
        if self.unreported >= 4096 {
            self.unreported = 0;
            self.report();
        }
    }

    pub(crate) fn materialize(&mut self, r: Ready) -> GateItem<'_> {
        self.account_item();
        match r {
            // Contiguous: a record read in place across segments is copied here, once.
            Ready::Record(c) => {
                GateItem::Record { channel: c, data: self.channels[c as usize].reader.record_contiguous() }
            }
            Ready::Item(i) => i,
        }
    }

    /// Reads records that span segments in place (`true`) or reassembled (`false`, the
    /// default) on every channel ([`RecordReader::set_spans_in_place`]). A record stays in
    /// place when all its segments are published by the time it is read, or while it holds
    /// no more than [`set_span_hold_budget`](Self::set_span_hold_budget) segments (default
    /// 0) when the gate has to wait for its rest; otherwise it is copied once and its
    /// segments released. In place, take
    /// records with [`next_view`](Self::next_view) to read them as chunks without a copy;
    /// [`next`](Self::next) and [`poll_next`](Self::poll_next) still hand out one slice
    /// (copying such a record once).
    pub fn set_spans_in_place(&mut self, on: bool) {
        for ch in &mut self.channels {
            ch.reader.set_spans_in_place(on);
        }
    }

    /// How many segments a record read in place may keep held while the gate waits for its
    /// rest, on every channel ([`RecordReader::set_hold_budget`]; default 0: copy and
    /// release at the first wait). Its producer must still be able to write the rest: keep
    /// it at most 2 below the smallest of the channel's exclusive credits and the
    /// producer's `max_buffers_per_channel` (and pool); above that a producer can block on
    /// segments the gate holds, and both wait until their timeouts.
    pub fn set_span_hold_budget(&mut self, segments: u32) {
        for ch in &mut self.channels {
            ch.reader.set_hold_budget(segments as usize);
        }
    }

    /// Records that spanned segments: (reassembled, read in place as chunks), over all
    /// channels.
    pub fn spanned_records(&self) -> (u64, u64) {
        self.channels.iter().fold((0, 0), |(r, p), ch| (r + ch.reader.spanned, p + ch.reader.spanned_in_place))
    }

    /// The next record or event if one is ready now, without waiting.
    ///
    /// # Errors
    /// Protocol violations, a failed producer.
    pub fn poll_next(&mut self) -> Result<Option<GateItem<'_>>> {
        match self.advance()? {
            Some(r) => Ok(Some(self.materialize(r))),
            None => Ok(None),
        }
    }

    /// Channels queued for service (an ended gate has none to serve).
    pub(crate) fn has_pending(&self) -> bool {
        !self.ended && !self.ready.is_empty()
    }

    /// Runs the producer liveness check when its interval is due.
    ///
    /// # Errors
    /// [`Error::PeerDied`] for a dead producer of an unfinished channel.
    pub(crate) fn probe_liveness(&mut self) -> Result<()> {
        if self.probe.due() {
            self.check_producers()?;
        }
        Ok(())
    }

    /// How long a wait may last before the liveness check runs again.
    pub(crate) fn liveness_interval(&self) -> Duration {
        self.liveness_interval
    }

    /// The per-record fast path of [`advance_ready`](Self::advance_ready): the channel at
    /// the front of the ready queue is active, has no priority event, is within its batch,
    /// and holds a whole record in bytes known to be published. Anything else (`None`)
    /// takes the full path.
    #[inline]
    fn next_known(&mut self) -> Result<Option<u32>> {
        let Some(&c) = self.ready.front() else {
            return Ok(None);
        };
        let ch = &mut self.channels[c as usize];
        if ch.state != ChannelState::Active || ch.served + 1 >= self.batch {
            return Ok(None);
        }
        if ch.reader.channel_mut().priority_pending()? || !ch.reader.poll_known() {
            return Ok(None);
        }
        ch.served += 1;
        Ok(Some(c))
    }

    /// The batch path: hands the whole records already published on the channel being
    /// served (at most `max`) to `f(channel, record)`, in place, without waiting. Returns
    /// how many; 0 means "nothing in this fast path" — call [`next`](Self::next) (which
    /// also handles events, barriers, records that span segments, and waiting).
    ///
    /// # Errors
    /// Protocol violations, or `f`'s error.
    pub fn drain_records(&mut self, max: usize, f: &mut dyn FnMut(u32, &[u8]) -> Result<()>) -> Result<usize> {
        let Some(&c) = self.ready.front() else {
            return Ok(0);
        };
        let ch = &mut self.channels[c as usize];
        if ch.state != ChannelState::Active || ch.reader.channel_mut().priority_pending()? {
            return Ok(0);
        }
        let n = ch.reader.drain_whole(max.min(self.batch as usize * 64), &mut |r| f(c, r))?;
        if n > 0 {
            // Fairness: the next batch comes from the next ready channel.
            ch.served = 0;
            self.ready.rotate_left(1);
            self.debloat();
            self.unreported += n as u32;
            if self.unreported >= 4096 {
                self.unreported = 0;
                self.report();
            }
        }
        Ok(n)
    }

    /// The next record or event, parking on the gate's wake-up when there is none (one
    /// wake-up for all channels). After [`GateItem::End`] it keeps answering `End`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`, protocol violations, a failed producer.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<GateItem<'_>> {
        if let Some(c) = self.next_known()? {
            return Ok(GateItem::Record { channel: c, data: self.channels[c as usize].reader.record() });
        }
        let r = self.wait_ready(timeout)?;
        Ok(self.materialize(r))
    }

    /// As [`next`](Self::next), with records handed out as their chunks in place
    /// ([`GateView::Record`]): a record that spans segments is not copied when the gate
    /// reads spans in place ([`set_spans_in_place`](Self::set_spans_in_place)).
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub fn next_view(&mut self, timeout: Option<Duration>) -> Result<GateView<'_>> {
        if let Some(c) = self.next_known()? {
            return Ok(GateView::Record { channel: c, record: self.channels[c as usize].reader.record_chunks() });
        }
        match self.wait_ready(timeout)? {
            Ready::Record(c) => {
                self.account_item();
                Ok(GateView::Record { channel: c, record: self.channels[c as usize].reader.record_chunks() })
            }
            r @ Ready::Item(_) => Ok(GateView::Item(self.materialize(r))),
        }
    }

    /// The waiting loop of [`next`](Self::next): what is ready next, parking on the gate's
    /// wake-up until something is.
    fn wait_ready(&mut self, timeout: Option<Duration>) -> Result<Ready> {
        let mut deadline = None;
        loop {
            if let Some(r) = self.advance()? {
                return Ok(r);
            }
            // The clock is read only once nothing is ready (not once per record).
            let deadline = *deadline.get_or_insert_with(|| timeout.map(|t| now_nanos() + t.as_nanos() as u64));
            if self.probe.due() {
                self.check_producers()?;
            }
            let arena = self.arena.clone();
            let set = NotifySet::new(&arena, self.set_id)?;
            let members = self.base + self.channels.len() as u32;
            let now = now_nanos();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout(timeout.unwrap_or_default(), "input on the gate"));
            }
            // Wait at most a liveness-probe interval at a time, so a dead producer is
            // noticed even when nothing wakes us.
            let slice = self.liveness_interval;
            let remaining = deadline.map_or(slice, |d| Duration::from_nanos(d - now).min(slice));
            self.report();
            let cancel = self.cancel.clone();
            let t0 = now_nanos();
            let _ = self.waiter.wait(set.wake(), Some(remaining), || {
                // Relaxed: a stop request.
                (set.any(members) || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))).then_some(())
            });
            let idle = now_nanos().saturating_sub(t0);
            self.idle_ns += idle;
            if let Some(t) = &self.task {
                t.add_idle(idle);
            }
            // Relaxed: as above.
            if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Cancelled);
            }
        }
    }

    /// Fails with [`Error::PeerDied`] if the producer of an unfinished channel with
    /// nothing left to read died.
    fn check_producers(&mut self) -> Result<()> {
        let mut memo = liveness::LivenessMemo::new();
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if ch.state == ChannelState::Finished {
                continue;
            }
            let w = ch.reader.channel().block().producer_worker();
            // Acquire: pairs with the reclaimer's AcqRel CAS to PRODUCER_DIED (the pid
            // stored before it).
            let st = ch.reader.channel().block().state.load(Ordering::Acquire);
            let dead = if st == crate::memory::CHANNEL_PRODUCER_DIED {
                // A reclaimer found the producer dead (its slot may be free again by now).
                // Ordered by the Acquire above.
                Some(ch.reader.channel().block().dead_peer())
            } else if let Some(Liveness::Dead { pid }) = w.map(|w| memo.liveness(&self.arena, w)) {
                Some(pid)
            } else {
                None
            };
            if let Some(pid) = dead {
                // Read what it left first: queue the channel, and report the death only once
                // a few looks in a row found it dead with no progress made.
                if ch.reader.records != ch.dead_progress {
                    ch.dead_progress = ch.reader.records;
                    ch.dead_looks = 0;
                }
                if ch.dead_looks < 3 && ch.reader.has_input()? {
                    ch.dead_looks += 1;
                    if !ch.queued && ch.state == ChannelState::Active {
                        ch.queued = true;
                        self.ready.push_back(i as u32);
                    }
                    continue;
                }
                if let (false, Some(w)) = (st == crate::memory::CHANNEL_PRODUCER_DIED, w) {
                    liveness::declare_dead(&self.arena, w);
                    // The first live process to notice reclaims it (exactly once).
                    crate::partition::reclaim::reclaim_slot(&self.arena, w);
                }
                let b = ch.reader.channel().block();
                // Bookkeeping written before publication.
                let (p, sp) = b.origin();
                // The partition of a dead producer is failed: later lookups say so (unless
                // its reclamation released the entry already).
                // Relaxed: the entry's producer pid, compared so that an entry reused by a
                // new partition since is left alone.
                if let Some(e) =
                    self.arena.partitions().get(p as usize).filter(|e| e.producer_pid.load(Ordering::Relaxed) == pid)
                {
                    for from in [crate::partition::PARTITION_REGISTERED, crate::partition::PARTITION_FINISHED] {
                        // AcqRel: as `set_state`'s Release (pairs with lookups' Acquire);
                        // only an entry still in use is marked.
                        let _ = e.state.compare_exchange(
                            from,
                            crate::partition::PARTITION_FAILED,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                    }
                }
                return Err(Error::PeerDied {
                    role: "producer",
                    place: format!("partition slot {p} subpartition {sp} (gate channel {i})"),
                    pid,
                });
            }
        }
        Ok(())
    }
}

/// Looks up `spec`'s partition and becomes the one consumer of its channel: a CAS of the
/// channel's consumer pid from 0 to ours, then a second look that the block still belongs
/// to that partition. A lookup can be stale by the time the channel is opened (the producer
/// died, was reclaimed, and its block went to a new partition with a consumer of its own):
/// reading it then would make two consumers of one ring.
fn attach_consumer(
    arena: &Arena,
    manager: &ResultPartitionManager,
    spec: &InputSpec,
    backoff: RequestBackoff,
) -> Result<crate::partition::PartitionInfo> {
    let me = std::process::id();
    // Bounded: another consumer's claim is either ours to wait out briefly (it undoes a
    // stale one at once) or an error after about 200 ms.
    for _ in 0..200 {
        let info = manager.lookup(spec.partition, backoff)?;
        if spec.subpartition >= info.num_subpartitions {
            return Err(Error::Invalid {
                what: "subpartition",
                detail: format!(
                    "{} of partition {} which has {}",
                    spec.subpartition, spec.partition, info.num_subpartitions
                ),
            });
        }
        let id = info.first_channel + spec.subpartition;
        let b = &arena.channels()[id as usize];
        // AcqRel: one consumer wins the channel; Acquire orders our look at the block
        // after the producer's set-up (published with the directory entry we read).
        match b.consumer_pid.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(other) if other == me => {} // this process read it before (a gate dropped and made again)
            Err(other) => {
                if liveness::pid_running(other) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                return Err(Error::PartitionFailed(format!(
                    "{} (subpartition {}: its consumer pid {other} died)",
                    spec.partition, spec.subpartition
                )));
            }
        }
        // The block must still be this partition's: same directory slot and subpartition,
        // the entry still registered under the id, the channel open.
        // Relaxed (all): ordered by the Acquire of the lookup below and the CAS above.
        let producer = arena.partitions()[info.slot as usize].producer_pid.load(Ordering::Relaxed);
        let same_block =
            b.origin() == (info.slot, spec.subpartition) && b.claim_pid.load(Ordering::Relaxed) == producer;
        let open = matches!(
            b.state.load(Ordering::Acquire),
            crate::memory::CHANNEL_OPEN | crate::memory::CHANNEL_PRODUCER_FAILED | crate::memory::CHANNEL_PRODUCER_DIED
        );
        let still = manager.lookup_once(spec.partition);
        if same_block
            && open
            && still.as_ref().is_ok_and(|i| i.slot == info.slot && i.first_channel == info.first_channel)
        {
            return Ok(info);
        }
        detach_consumer(arena, id);
        // The partition moved on: the next lookup says how (released, failed, not found).
        still?;
    }
    let holder = manager.lookup_once(spec.partition).ok().map(|i| {
        // Relaxed: for the message.
        arena.channels()[(i.first_channel + spec.subpartition) as usize].consumer_pid.load(Ordering::Relaxed)
    });
    Err(Error::Invalid {
        what: "input channel",
        detail: format!(
            "subpartition {} of partition {} is read by another consumer (pid {})",
            spec.subpartition,
            spec.partition,
            holder.unwrap_or(0)
        ),
    })
}

/// Gives up this process's claim on channel `id` (see [`attach_consumer`]).
fn detach_consumer(arena: &Arena, id: u32) {
    if let Some(b) = arena.channels().get(id as usize) {
        // AcqRel: pairs with the next consumer's CAS; only our own claim is given up.
        let _ = b.consumer_pid.compare_exchange(std::process::id(), 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

impl Drop for SingleInputGate {
    fn drop(&mut self) {
        // Let go of every reader (and so of every lease on a segment) before telling the
        // producers: a dead producer's channel is settled (its segments freed) as soon as
        // its reader left, so nothing may still be held then.
        let ended = self.ended;
        let ids: Vec<(u32, bool)> =
            self.channels.drain(..).map(|ch| (ch.reader.channel().id(), ch.state == ChannelState::Finished)).collect();
        for (id, finished) in ids {
            let producer_died = {
                // Relaxed: a first look; `close_channel` decides by CAS.
                let st = self.arena.channels()[id as usize].state.load(Ordering::Relaxed);
                st == crate::memory::CHANNEL_PRODUCER_DIED
            };
            if ((!ended && !finished) || producer_died) && crate::ring::close_channel(&self.arena, id) {
                crate::partition::reclaim::settle_if_orphaned(&self.arena, id);
            }
        }
        if self.owns_set {
            self.manager.release_gate(self.set_id);
        }
    }
}
