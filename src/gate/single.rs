//! `SingleInputGate`: one channel per producer subpartition it reads, served round-robin
//! from a ready queue that producers fill by marking the gate's notify set.
//!
//! This file is the gate's scheduling and its events (EndOfData, EndOfPartition, user
//! events): the ready queue, the batch per channel, waiting and handing items out. The
//! other concerns live beside it, each with its state: floating credit in `credit.rs`,
//! barrier alignment in `align.rs`, buffer debloating in `debloat.rs`, producer liveness
//! in `liveness.rs`, and the channels themselves (and how each is requested) in
//! `channel.rs`.

use super::align::{self, Arrival, BarrierAligner};
use super::channel::{
    attach_consumer, check_subpartition, detach_consumer, publish_read_counters, ChannelKind, ChannelState,
    FileChannel, FileStep, InputChannel, LocalChannel,
};
use super::config::{InputGateConfig, InputSpec};
use super::credit::FloatingCredits;
use super::debloat::Debloater;
use crate::error::{ConfigError, Error, Result};
use crate::event::{CheckpointBarrier, Event};
use crate::memory::liveness::LivenessProbe;
use crate::memory::Arena;
use crate::metrics::TaskMetricsHandle;
use crate::partition::{FileChannelManager, ResultPartitionManager};
use crate::record::frame::{self, Frame};
use crate::record::{RecordReader, Step, WholeRecords};
use crate::ring::{ChannelReader, Descriptor, EventCode, NotifySet};
use crate::sync::{now_nanos, AtomicBool, Ordering, WaitOutcome, Waiter};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::align::Overtaken;

/// Spins of [`SingleInputGate::next_hot`] before the full wait (a few tens of µs).
const HOT_SPINS: u32 = 2048;

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

/// What [`SingleInputGate::next_piece`] hands out: records as their pieces in place, anything
/// else as [`GateItem`].
#[derive(Debug)]
pub enum GatePiece<'a> {
    /// A record, or the next piece of one that spans segments when the gate streams spans
    /// ([`SingleInputGate::set_spans_streamed`]); the pieces of one channel's record come
    /// in order, though pieces of other channels' records may come between them.
    Record {
        /// Channel index in the gate.
        channel: u32,
        /// The piece, borrowed from shared memory.
        piece: crate::record::RecordPiece<'a>,
    },
    /// Anything but a record ([`GateItem::Record`] never appears here).
    Item(GateItem<'a>),
}

/// What `advance` prepared, before borrowing.
pub(crate) enum Ready {
    Record(u32),
    Item(GateItem<'static>),
}

/// A gate over input channels: local ones (pipelined partitions in shared memory) and file
/// ones (blocking partitions, read once finished); see `channel.rs`.
///
/// Dropping it before it handed out [`GateItem::End`] closes every channel not finished
/// yet: their producers stop with [`crate::Error::ConsumerGone`] (a partition waiting in
/// `release_when_consumed` counts a closed channel as consumed). Its gate block returns to
/// the arena.
pub struct SingleInputGate {
    pub(super) arena: Arc<Arena>,
    /// The partition directory, for the channels' partition requests.
    manager: ResultPartitionManager,
    /// The notify set (gate block) producers mark when a channel has data.
    set_id: u32,
    /// Whether this gate claimed the set (and drains it, and releases it when dropped);
    /// a gate inside a union shares the union's set, which drains it.
    owns_set: bool,
    /// This gate's first member index in the set (its channel `i` is member `base + i`).
    base: u32,
    pub(super) channels: Vec<InputChannel>,
    /// Channels to serve, front first; a channel is in it at most once (`queued`).
    pub(super) ready: VecDeque<u32>,
    /// Floating credit (`credit.rs`).
    credits: FloatingCredits,
    /// How the gate waits when nothing is ready (spin, adaptive, park).
    waiter: Waiter,
    /// Items one channel hands out before the next ready channel is served.
    batch: u32,
    /// Channels that delivered EndOfPartition.
    finished: u32,
    /// Channels that delivered EndOfData (or ended without it).
    end_of_data: u32,
    /// Whether EndOfData was handed out (once, when every channel sent it).
    end_of_data_sent: bool,
    /// Whether every channel finished: `End` from now on.
    ended: bool,
    /// Checkpoint barrier alignment (`align.rs`).
    aligner: BarrierAligner,
    /// Scratch list reused by `collect_marks`, so the per-segment path allocates nothing
    /// once it has grown.
    marked: Vec<u32>,
    /// Nanoseconds spent waiting for input.
    pub idle_ns: u64,
    /// The task's metrics in the arena, when it reports any.
    task: Option<TaskMetricsHandle>,
    /// Records and bytes already added to `task`'s counters.
    reported: (u64, u64),
    /// Set to stop a wait (task cancellation).
    cancel: Option<Arc<AtomicBool>>,
    /// Producer liveness (`liveness.rs`): when to look next, and what was seen.
    probe: LivenessProbe,
    /// How often a waiting gate looks at its producers' liveness.
    liveness_interval: Duration,
    /// Items handed out since the counters were last reported (every 4096).
    unreported: u32,
    /// Buffer debloating (`debloat.rs`), when on.
    debloater: Option<Debloater>,
    /// Exclusive plus floating credits: the segments that may be in flight to this gate.
    credits_total: u32,
    /// Some channels read blocking partitions' files (which nobody marks: the gate polls
    /// their partition requests while it waits).
    has_files: bool,
    /// The local channel that handed out the last record. A gate in spin mode (a wait
    /// policy that never parks) reads its local channels' records in the data
    /// (`RecordReader::set_data_reads`: a record whose prefix starts 4-aligned is published
    /// by that prefix word, stored last with Release) and, while it waits, polls this
    /// channel's next prefix word before the notify set: the next record is found in one
    /// cache-line transfer, as its prefix lands, not after the producer's commit and mark,
    /// the gate's drain of it and then the position. Where the word cannot tell (an
    /// unaligned read position, a record half read, no segment) it polls the segment's
    /// position word and prefetches the lines behind the read position instead. The
    /// producer's mark stays set (its next mark takes the "already marked" shortcut) and
    /// is drained later. A park mode that never spins (`max_spin` zero) polls this
    /// channel's committed position (its data reads stay off, and it prefetches nothing)
    /// at its few polls around a park, so a wake-up finds the record without draining the
    /// set first.
    /// Adaptive mode keeps to the notify set and the committed position: polling the data
    /// while spinning holds the lines the producer writes next in the gate's cache, which
    /// costs a producer that streams (docs/performance-history.md, "The network stack's
    /// read path: where a 64 B record's latency goes", its paragraph "Adaptive and park
    /// modes keep to the notify set").
    /// The notify set stays what wakes a parked gate and what finds every other channel,
    /// segment ends, events and records that span segments.
    hot: Option<u32>,
    /// Waits that the hot channel's data ended (`wait_ready`'s data poll found its next
    /// record), not the notify set: see [`waits_ended_by_data`](Self::waits_ended_by_data).
    data_poll_hits: u64,
    /// `next_hot`'s idle account: its calls, and the time one of its spins took when the
    /// clock last measured one (in 1/16 ns; 0: not measured yet).
    hot_clock: (u32, u32),
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
            return Err(ConfigError::Conflict { what: "input gate", detail: "no input channels".into() }.into());
        }
        let cap = arena.config().ring_capacity;
        let max_credit = cfg.exclusive_credits + cfg.floating_credits;
        if cfg.exclusive_credits == 0 || max_credit >= cap {
            return Err(ConfigError::Conflict {
                what: "credits",
                detail: format!(
                    "exclusive {} (at least 1) + floating {} must stay below the ring capacity {cap}",
                    cfg.exclusive_credits, cfg.floating_credits
                ),
            }
            .into());
        }
        let manager = ResultPartitionManager::new(arena.clone());
        let credits = FloatingCredits::new(cfg.floating_credits, cfg.inputs.len());
        let mut channels: Vec<InputChannel> = Vec::with_capacity(cfg.inputs.len());
        let mut files = cfg.blocking_files.clone();
        for (i, spec) in cfg.inputs.iter().enumerate() {
            let member = base + i as u32;
            let kind = match Self::request_channel(&arena, &manager, cfg, spec, &mut files, &credits, set_id, member) {
                Ok(kind) => kind,
                Err(e) => {
                    for l in channels.iter().filter_map(InputChannel::local) {
                        detach_consumer(&arena, l.reader.channel().id());
                    }
                    return Err(e);
                }
            };
            channels.push(InputChannel::new(kind));
        }
        let has_files = channels.iter().any(|c| c.local().is_none());
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
            credits,
            waiter: Waiter::new(cfg.wait_policy),
            batch: cfg.batch.max(1),
            finished: 0,
            end_of_data: 0,
            end_of_data_sent: false,
            ended: false,
            aligner: BarrierAligner::default(),
            marked: Vec::new(),
            idle_ns: 0,
            task: None,
            reported: (0, 0),
            cancel: None,
            probe: LivenessProbe::new(cfg.liveness_interval.max(Duration::from_millis(1))),
            liveness_interval: cfg.liveness_interval.max(Duration::from_millis(1)),
            unreported: 0,
            debloater: cfg.debloat.map(|c| Debloater::new(c, now_nanos())),
            has_files,
            credits_total: cfg.exclusive_credits * cfg.inputs.len() as u32 + cfg.floating_credits,
            hot: None,
            data_poll_hits: 0,
            hot_clock: (0, 0),
        })
    }

    /// The partition request of channel `spec`, member `member` of notify set `set_id`:
    /// looks the partition up (with the request backoff); a blocking one becomes a file
    /// channel (read once it is finished), a pipelined one a local channel (attached as
    /// its consumer, routed here, granted its exclusive credits).
    #[allow(clippy::too_many_arguments)]
    fn request_channel(
        arena: &Arc<Arena>,
        manager: &ResultPartitionManager,
        cfg: &InputGateConfig,
        spec: &InputSpec,
        files: &mut Option<FileChannelManager>,
        credits: &FloatingCredits,
        set_id: u32,
        member: u32,
    ) -> Result<ChannelKind> {
        let info = manager.lookup(spec.partition, cfg.backoff)?;
        if !info.partition_type.is_pipelined() {
            check_subpartition(spec, &info)?;
            let files = match files {
                Some(f) => f.clone(),
                None => files.insert(FileChannelManager::from_env()?).clone(),
            };
            return Ok(ChannelKind::File(FileChannel::new(spec.partition, spec.subpartition, files, manager.clone())));
        }
        let info = attach_consumer(arena, manager, spec, cfg.backoff)?;
        let id = info.first_channel + spec.subpartition;
        let opened = ChannelReader::open_with_floating(arena.clone(), id, credits.pool()).and_then(|reader| {
            if let Some(w) = cfg.worker {
                reader.block().set_consumer_worker(w);
            }
            reader.set_gate(set_id, member);
            reader.grant(cfg.exclusive_credits)?;
            Ok(reader)
        });
        match opened {
            Ok(reader) => {
                let mut reader = RecordReader::new(reader);
                // A gate that never parks spins on its producers: it reads records as their
                // prefixes land (see `hot`).
                reader.set_data_reads(!cfg.wait_policy.park);
                let local = LocalChannel { reader, dead_progress: 0, dead_looks: 0 };
                Ok(ChannelKind::Local(local))
            }
            Err(e) => {
                detach_consumer(arena, id);
                Err(e)
            }
        }
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
        if !d.due(now) {
            return;
        }
        let bytes: u64 = self.channels.iter().map(InputChannel::bytes).sum();
        if let Some(per) = d.tick(now, bytes, self.credits_total, self.arena.segment_size()) {
            for l in self.channels.iter().filter_map(InputChannel::local) {
                l.reader.channel().block().ask_segment_fill(per);
            }
        }
    }

    /// The segment fill this gate last asked its producers for (0: debloating off or not
    /// decided yet).
    pub fn debloat_bytes(&self) -> u32 {
        self.debloater.as_ref().map_or(0, Debloater::announced)
    }

    fn report(&mut self) {
        self.debloat();
        if let Some(t) = &self.task {
            let (r, b) = self.channels.iter().fold((0, 0), |(r, b), c| (r + c.records(), b + c.bytes()));
            t.add_in(r - self.reported.0, b - self.reported.1);
            self.reported = (r, b);
        }
    }

    /// How many of this gate's waits its data poll ended: the channel that gave the last
    /// record was polled while the gate waited (spin mode, and park mode without spin) and
    /// showed the next record before the notify set did. A count kept in the gate (one
    /// add per such wait), for tests and diagnosis.
    pub fn waits_ended_by_data(&self) -> u64 {
        self.data_poll_hits
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
        self.channels.get(c as usize).map_or(0, InputChannel::records)
    }

    /// Floating credits not assigned to any channel now.
    pub fn floating_available(&self) -> u32 {
        self.credits.available()
    }

    /// Floating credits held by channel `c`.
    pub fn floating_held(&self, c: u32) -> u32 {
        self.credits.held(c as usize)
    }

    /// Queues member `local` (marked by its producer) for service.
    pub(crate) fn enqueue(&mut self, local: u32) {
        if let Some(ch) = self.channels.get_mut(local as usize) {
            if !ch.queued && ch.state != ChannelState::Finished {
                ch.queued = true;
                self.ready.push_back(local);
            }
            if ch.local().is_some_and(|l| l.reader.channel().credit_wanted()) {
                self.credits.want(local);
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

    /// Grants floating credits to the channels whose producers want them (see `credit.rs`).
    pub(crate) fn grant_floating(&mut self) -> Result<()> {
        self.credits.grant(&self.channels)
    }

    fn live_channels(&self) -> u32 {
        self.channels.len() as u32 - self.finished
    }

    fn read_user_event(&self, c: usize, segment: u32) -> Result<Event> {
        let bad = |d: &str| Error::ProtocolViolation { place: format!("channel {c}"), detail: d.into() };
        let l = self.channels[c].local().ok_or_else(|| bad("user event on a file channel"))?;
        let mut cons = l.reader.channel().consumer(segment);
        let (bytes, fin) = cons.peek_final()?;
        if !fin {
            return Err(bad("user event segment not finished"));
        }
        match frame::decode(bytes) {
            Frame::Whole { payload, .. } => Ok(Event::User(payload.to_vec())),
            Frame::Partial { .. } => Err(bad("user event longer than its segment")),
            Frame::NoPrefix => Err(bad("user event segment too short")),
        }
    }

    /// Channel `c` read an event descriptor (in order, or from the priority ring).
    fn on_event(&mut self, c: usize, d: Descriptor) -> Result<Option<Ready>> {
        match d {
            Descriptor::Event(EventCode::EndOfPartition) => self.on_end_of_partition(c),
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
            Descriptor::Event(EventCode::ProducerFailed) => Err(Error::ProducerFailed { channel: self.channel_id(c) }),
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
                match self.aligner.arrive(b) {
                    Arrival::Stale => return Ok(None),
                    Arrival::Counted { restart: true } => {
                        // A newer checkpoint aborts the alignment in progress.
                        for ch in &mut self.channels {
                            if ch.state == ChannelState::Blocked {
                                ch.state = ChannelState::Active;
                            }
                        }
                    }
                    Arrival::Counted { restart: false } => {}
                }
                self.channels[c].state = ChannelState::Blocked;
                Ok(self.check_alignment())
            }
            // Buffers travel in the data ring, where the record reader takes them; one in the
            // priority ring is a producer's mistake.
            Descriptor::Buffer(i) => Err(Error::ProtocolViolation {
                place: format!("channel {}", self.channel_id(c)),
                detail: format!("buffer descriptor (segment {i}) in the priority ring"),
            }),
        }
    }

    /// The arena channel id of gate channel `c` (its index for a file channel), for errors.
    fn channel_id(&self, c: usize) -> u32 {
        self.channels[c].local().map_or(c as u32, |l| l.reader.channel().id())
    }

    /// Channel `c` reached its end: it is finished, its floating credits go back, and the
    /// gate may be at EndOfData, at its end, or past an alignment it held up.
    fn on_end_of_partition(&mut self, c: usize) -> Result<Option<Ready>> {
        let ch = &mut self.channels[c];
        if ch.state != ChannelState::Finished {
            ch.state = ChannelState::Finished;
            match &mut ch.kind {
                ChannelKind::Local(l) => {
                    l.reader.channel().mark_consumed()?;
                    publish_read_counters(l);
                }
                ChannelKind::File(f) => f.finish()?,
            }
            let had_eod = ch.end_of_data;
            self.finished += 1;
            if !had_eod {
                self.end_of_data += 1;
            }
            self.credits.give_back(c, &self.channels[c]);
            self.grant_floating()?;
        }
        if let Some(r) = self.check_alignment() {
            return Ok(Some(r));
        }
        let n = self.channels.len() as u32;
        if self.end_of_data == n && !self.end_of_data_sent && self.finished < n {
            self.end_of_data_sent = true;
            return Ok(Some(Ready::Item(GateItem::EndOfData)));
        }
        if self.finished == n {
            self.ended = true;
            self.report();
            return Ok(Some(Ready::Item(GateItem::End)));
        }
        Ok(None)
    }

    /// Hands out the aligned barrier once it arrived on every live channel, unblocking
    /// and requeueing the channels it held.
    fn check_alignment(&mut self) -> Option<Ready> {
        let b = self.aligner.complete(self.live_channels())?;
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if ch.state == ChannelState::Blocked {
                ch.state = ChannelState::Active;
                if !ch.queued {
                    ch.queued = true;
                    self.ready.push_back(i as u32);
                }
            }
        }
        Some(Ready::Item(GateItem::Barrier(b)))
    }

    /// A priority event waiting on local channel `ci` (they overtake everything, even a
    /// channel blocked by an aligned barrier): what it makes ready, if anything, and
    /// whether there was one.
    fn serve_priority(&mut self, ci: usize) -> Result<(bool, Option<Ready>)> {
        let Some(l) = self.channels[ci].local_mut() else {
            return Ok((false, None));
        };
        if !l.reader.channel_mut().priority_pending()? {
            return Ok((false, None));
        }
        match l.reader.channel_mut().poll_priority()? {
            Some(Descriptor::Barrier(b)) => {
                let overtaken = align::overtaken(&self.arena, ci as u32, &mut l.reader)?;
                let item = GateItem::UnalignedBarrier { channel: ci as u32, barrier: b, overtaken };
                Ok((true, Some(Ready::Item(item))))
            }
            Some(d) => Ok((true, self.on_event(ci, d)?)),
            None => Ok((false, None)),
        }
    }

    /// Serves ready channels until something is ready to hand out.
    pub(crate) fn advance_ready(&mut self) -> Result<Option<Ready>> {
        if self.has_files {
            self.requeue_files();
        }
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
            match self.serve_priority(ci)? {
                (_, Some(r)) => return Ok(Some(r)),
                (true, None) => continue,
                (false, None) => {}
            }
            let ch = &mut self.channels[ci];
            if ch.state == ChannelState::Blocked {
                ch.queued = false;
                self.ready.pop_front();
                continue;
            }
            let step = match &mut ch.kind {
                ChannelKind::Local(l) => l.reader.poll()?,
                ChannelKind::File(f) => match f.poll()? {
                    FileStep::Record => Step::Record,
                    FileStep::End => Step::Event(Descriptor::Event(EventCode::EndOfPartition)),
                    FileStep::NotYet => Step::Empty,
                },
            };
            match step {
                Step::Record => {
                    if ch.local().is_some() {
                        self.hot = Some(c);
                    }
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
                    if let Some(l) = ch.local() {
                        publish_read_counters(l);
                        // Before any record: poll this one's data while waiting.
                        self.hot = self.hot.or(Some(c));
                    }
                    self.ready.pop_front();
                    self.credits.ran_dry(ci, &self.channels)?;
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

    /// Queues the file channels whose partition request is due for another look, and
    /// returns when the next one is due (`now_nanos`), if any still waits.
    fn requeue_files(&mut self) -> Option<u64> {
        let now = now_nanos();
        let mut next: Option<u64> = None;
        for (i, ch) in self.channels.iter_mut().enumerate() {
            let ChannelKind::File(f) = &ch.kind else { continue };
            let Some(at) = f.next_check() else { continue };
            if ch.state == ChannelState::Finished || ch.queued {
                continue;
            }
            if at <= now {
                ch.queued = true;
                self.ready.push_back(i as u32);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
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
            Ready::Record(c) => GateItem::Record { channel: c, data: self.channels[c as usize].record_contiguous() },
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
        for l in self.channels.iter_mut().filter_map(InputChannel::local_mut) {
            l.reader.set_spans_in_place(on);
        }
    }

    /// Hands out records that span segments piece by piece as their segments arrive
    /// (`true`), on every channel ([`RecordReader::set_spans_streamed`]): nothing is
    /// copied and no segment is held past its piece, whatever the record's size and the
    /// channel's credit. Read them with [`next_piece`](Self::next_piece); the other ways
    /// to read ([`next`](Self::next), [`next_view`](Self::next_view),
    /// [`poll_next`](Self::poll_next)) panic on a piece of such a record.
    pub fn set_spans_streamed(&mut self, on: bool) {
        for l in self.channels.iter_mut().filter_map(InputChannel::local_mut) {
            l.reader.set_spans_streamed(on);
        }
    }

    /// How many segments a record read in place may keep held while the gate waits for its
    /// rest, on every channel ([`RecordReader::set_hold_budget`]; default 0: copy and
    /// release at the first wait). Its producer must still be able to write the rest: keep
    /// it at most 2 below the smallest of the channel's exclusive credits and the
    /// producer's `max_buffers_per_channel` (and pool); above that a producer can block on
    /// segments the gate holds, and both wait until their timeouts.
    pub fn set_span_hold_budget(&mut self, segments: u32) {
        for l in self.channels.iter_mut().filter_map(InputChannel::local_mut) {
            l.reader.set_hold_budget(segments as usize);
        }
    }

    /// Records that spanned segments: (reassembled, read in place as chunks or streamed in
    /// pieces), over all channels.
    pub fn spanned_records(&self) -> (u64, u64) {
        self.channels.iter().map(InputChannel::spanned).fold((0, 0), |(r, p), (a, b)| (r + a, p + b))
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
        if self.has_files {
            // Unfinished blocking partitions are looked at at least this often.
            self.liveness_interval.min(Duration::from_millis(50))
        } else {
            self.liveness_interval
        }
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
        let known = match &mut ch.kind {
            ChannelKind::Local(l) => !l.reader.channel_mut().priority_pending()? && l.reader.poll_known(),
            ChannelKind::File(_) => false,
        };
        if !known {
            return Ok(None);
        }
        ch.served += 1;
        Ok(Some(c))
    }

    /// Spin mode, when the hot channel is the only one to serve (at the front of the ready
    /// queue, nothing else queued, no other member marked, nothing in its rings): waits for
    /// its next record by polling that record's prefix word, and nothing else, for a bounded
    /// number of spins ([`HOT_SPINS`]), before the full wait. The clock is read around one
    /// such wait in 64 (the others' idle time is their spins at the measured time per
    /// spin), the notify set is not drained and the segment's position is not loaded: lines the producer
    /// writes as it publishes, whose misses would otherwise fall between the gate's record
    /// and its next wait. The hot channel's own mark stays set (its producer's next marks
    /// take the "already marked" shortcut) until the full path drains it. Anything the word
    /// cannot show (a segment's end, events, a record that spans segments or starts
    /// unaligned, a producer's want of credit, another channel) ends the spin: the full
    /// path takes it, and a producer that died is noticed there too.
    ///
    /// # Errors
    /// As [`next`](Self::next) (the rings' state).
    #[inline]
    fn next_hot(&mut self) -> Result<Option<u32>> {
        let Some(h) = self.hot else {
            return Ok(None);
        };
        if self.ready.len() != 1 || self.ready.front() != Some(&h) {
            return Ok(None);
        }
        let (members, member) = (self.base + self.channels.len() as u32, self.base + h);
        let ch = &mut self.channels[h as usize];
        if ch.state != ChannelState::Active || ch.served + 1 >= self.batch {
            return Ok(None);
        }
        let ChannelKind::Local(l) = &mut ch.kind else {
            return Ok(None);
        };
        let r = &mut l.reader;
        if r.data_input() != Some(false) {
            return Ok(None);
        }
        let set = NotifySet::new(&self.arena, self.set_id)?;
        // The clock is read around one spin in 64 (and until the estimate exists): a read
        // after the record arrived would delay it by its cost (~40 ns here, a third of a
        // near hop); the others count their spins at the measured time per spin.
        let (calls, per_spin) = self.hot_clock;
        let t0 = (calls % 64 == 0 || per_spin == 0).then(now_nanos);
        let mut found = false;
        let mut spins = 1u64;
        for i in 0..HOT_SPINS {
            spins = u64::from(i) + 1;
            r.prefetch_unread();
            if r.data_input() != Some(false) {
                found = r.poll_known();
                break;
            }
            // Relaxed: a stop request.
            if i % 16 == 15
                && (set.any_other(members, member)
                    || r.channel_mut().has_next()?
                    || self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)))
            {
                break;
            }
            // One pause per spin, a measured compromise (64 B ping-pong, 12 interleaved runs
            // of 4 rounds, vCPUs on different cores, bare atomics 232-254 ns one-way: the
            // network stack's one-way p50 over them, median 1.70x with no pause, 1.56x with
            // one, 1.46x with two). Polling the lines the producer is writing takes them
            // back between its stores (the record's first line gets its payload, then, after
            // the second line's stores, its prefix), so fewer polls cost fewer transfers;
            // but with the vCPUs on hyperthreads of one core (bare atomics 50 ns) two pauses
            // measured worse (2.39x and 2.60x against 2.00-2.20x with one), the pause being
            // the granularity at which the record is seen there. A tighter loop (session 9:
            // the word's reference taken once per 16 spins, no call or field walk per spin,
            // the same prefetch and pause) measured worse near, 130 against 120-125 ns
            // one-way p50 in interleaved runs, and no pause at all worse still (150-155 ns):
            // the time between polls here is itself part of the compromise.
            std::hint::spin_loop();
        }
        let idle = match t0 {
            Some(t0) => {
                let idle = now_nanos().saturating_sub(t0);
                // Nanoseconds per spin, in 1/16 ns.
                self.hot_clock.1 = (idle.saturating_mul(16) / spins).clamp(1, u64::from(u32::MAX)) as u32;
                idle
            }
            None => spins * u64::from(per_spin) / 16,
        };
        self.hot_clock.0 = calls.wrapping_add(1);
        self.idle_ns += idle;
        if let Some(t) = &self.task {
            t.add_idle(idle);
        }
        if !found {
            return Ok(None);
        }
        ch.served += 1;
        Ok(Some(h))
    }

    /// The batch path: hands the whole records already published on the channel being
    /// served (at most `max`) to `f(channel, record)`, in place, without waiting. Returns
    /// how many; 0 means "nothing in this fast path" — call [`next`](Self::next) (which
    /// also handles events, barriers, records that span segments, and waiting). `f` is a
    /// generic closure, not a trait object: it inlines into the record loop (no indirect
    /// call per record).
    ///
    /// # Errors
    /// Protocol violations, or `f`'s error.
    pub fn drain_records<F>(&mut self, max: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(u32, &[u8]) -> Result<()> + ?Sized,
    {
        let Some((c, max)) = self.served_for_batch(max)? else {
            return Ok(0);
        };
        let n = match &mut self.channels[c as usize].kind {
            ChannelKind::Local(l) => l.reader.drain_whole(max, &mut |r| f(c, r))?,
            ChannelKind::File(file) => file.drain(max, &mut |r| f(c, r))?,
        };
        self.after_batch(c, n);
        Ok(n)
    }

    /// [`drain_records`](Self::drain_records) with the record loop in the caller's hands:
    /// `f(channel, records)` gets the whole records already published on the channel being
    /// served as an iterator ([`WholeRecords`]; the ones it hands out count as read), so
    /// the caller's per-record state stays in locals for the batch. Returns how many; 0
    /// means "nothing in this fast path" (also for a channel read from a file): call
    /// [`next`](Self::next).
    ///
    /// A record counts as read when the iterator yields it, not when `f` uses it: adapters
    /// that pull one past what they pass on (`take_while`, `peekable().peek()`, `zip` with
    /// a shorter iterator second) silently drop that record. Stop with
    /// [`WholeRecords::next_if`] or [`WholeRecords::peek`] instead.
    ///
    /// # Errors
    /// Protocol violations, or `f`'s error.
    pub fn drain_batch<F>(&mut self, max: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(u32, &mut WholeRecords<'_>) -> Result<()> + ?Sized,
    {
        let Some((c, max)) = self.served_for_batch(max)? else {
            return Ok(0);
        };
        let n = match &mut self.channels[c as usize].kind {
            ChannelKind::Local(l) => l.reader.drain_batch(max, |records| f(c, records))?,
            ChannelKind::File(_) => 0,
        };
        self.after_batch(c, n);
        Ok(n)
    }

    /// The channel the batch paths read, with their bound on the batch: the channel being
    /// served, unless it is not active or a local one has a priority event pending.
    #[inline]
    fn served_for_batch(&mut self, max: usize) -> Result<Option<(u32, usize)>> {
        let Some(&c) = self.ready.front() else {
            return Ok(None);
        };
        let ch = &mut self.channels[c as usize];
        if ch.state != ChannelState::Active {
            return Ok(None);
        }
        if let ChannelKind::Local(l) = &mut ch.kind {
            if l.reader.channel_mut().priority_pending()? {
                return Ok(None);
            }
        }
        Ok(Some((c, max.min(self.batch as usize * 64))))
    }

    /// After a batch of `n` records from channel `c`: the fairness rotation and the reports.
    #[inline]
    fn after_batch(&mut self, c: u32, n: usize) {
        if n > 0 {
            // Fairness: the next batch comes from the next ready channel.
            self.channels[c as usize].served = 0;
            self.ready.rotate_left(1);
            self.debloat();
            self.unreported += n as u32;
            if self.unreported >= 4096 {
                self.unreported = 0;
                self.report();
            }
        }
    }

    /// The next record or event, parking on the gate's wake-up when there is none (one
    /// wake-up for all channels). After [`GateItem::End`] it keeps answering `End`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`, protocol violations, a failed producer.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<GateItem<'_>> {
        if let Some(c) = self.next_known()? {
            return Ok(GateItem::Record { channel: c, data: self.channels[c as usize].record() });
        }
        if let Some(c) = self.next_hot()? {
            return Ok(GateItem::Record { channel: c, data: self.channels[c as usize].record() });
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
        if let Some(c) = self.next_known()?.map_or_else(|| self.next_hot(), |c| Ok(Some(c)))? {
            return Ok(GateView::Record { channel: c, record: self.channels[c as usize].record_chunks() });
        }
        match self.wait_ready(timeout)? {
            Ready::Record(c) => {
                self.account_item();
                Ok(GateView::Record { channel: c, record: self.channels[c as usize].record_chunks() })
            }
            r @ Ready::Item(_) => Ok(GateView::Item(self.materialize(r))),
        }
    }

    /// As [`next`](Self::next), with records handed out as pieces in place
    /// ([`GatePiece::Record`]): a record that spans segments comes one piece per segment
    /// when the gate streams spans ([`set_spans_streamed`](Self::set_spans_streamed)),
    /// any other record as one piece.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub fn next_piece(&mut self, timeout: Option<Duration>) -> Result<GatePiece<'_>> {
        if let Some(c) = self.next_known()? {
            return Ok(GatePiece::Record { channel: c, piece: self.channels[c as usize].record_piece() });
        }
        match self.wait_ready(timeout)? {
            Ready::Record(c) => {
                self.account_item();
                Ok(GatePiece::Record { channel: c, piece: self.channels[c as usize].record_piece() })
            }
            r @ Ready::Item(_) => Ok(GatePiece::Item(self.materialize(r))),
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
            // The counters are reported and the set is opened before the clock is read, so
            // the idle time (from that reading) does not count them.
            self.report();
            let arena = self.arena.clone();
            let set = NotifySet::new(&arena, self.set_id)?;
            let members = self.base + self.channels.len() as u32;
            // The clock is read only once nothing is ready (not once per record), and once
            // per wait: the deadline, the liveness probe and the idle time's start share the
            // reading (each read is a call into the vDSO, whose code and data a thread that
            // just woke from a park has to fetch again).
            let mut now = now_nanos();
            let deadline = *deadline.get_or_insert_with(|| timeout.map(|t| now + t.as_nanos() as u64));
            if self.probe.due_at(now) {
                self.check_producers()?;
                now = now_nanos();
            }
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout(timeout.unwrap_or_default(), "input on the gate"));
            }
            // Wait at most a liveness-probe interval at a time, so a dead producer is
            // noticed even when nothing wakes us; and no longer than until the next look
            // at an unfinished blocking partition (nobody wakes us for those).
            let mut slice = self.liveness_interval;
            if self.has_files {
                if !self.ready.is_empty() {
                    continue;
                }
                if let Some(at) = self.requeue_files() {
                    slice = slice.min(Duration::from_nanos(at.saturating_sub(now)));
                }
                if !self.ready.is_empty() {
                    continue;
                }
            }
            let remaining = deadline.map_or(slice, |d| Duration::from_nanos(d - now).min(slice));
            let cancel = self.cancel.clone();
            // The idle time starts at the reading above: it includes a look at unfinished
            // blocking partitions (gates reading files only), not the report or the set.
            let t0 = now;
            // The channel polled in its data while waiting, in spin mode (see `hot`), and in
            // a park mode that never spins (its waiter polls once before it announces
            // itself, once after, and once per wake-up, so it holds none of the producer's
            // lines): woken, it finds the record at once, and its drain of the notify set
            // (a swap, a fence and the credit grant) moves from the wake-up's critical path
            // to before the next park. Not a channel already queued (then `advance` found
            // it empty) or finished.
            let policy = self.waiter.policy();
            let polls_data = !policy.park || policy.max_spin.is_zero();
            // A spinning gate asks for the lines behind the read position with each poll; a
            // parking one does not: its polls come just before and after it parks, and a
            // prefetch there would pull the lines the producer fills next into this core's
            // cache while it sleeps (the producer's stores would then miss on them).
            let prefetch = !policy.park;
            let hot = self.hot.filter(|&h| {
                let ch = &self.channels[h as usize];
                polls_data && !ch.queued && ch.state == ChannelState::Active
            });
            let mut hot_reader = hot.and_then(|h| self.channels[h as usize].local_mut()).map(|l| &mut l.reader);
            let woke = self.waiter.wait(set.wake(), Some(remaining), || {
                if let Some(r) = hot_reader.as_mut() {
                    // Spinning, the lines behind the read position are asked for with the
                    // poll, so a record that straddles two lines crosses cores in one trip,
                    // not two.
                    if prefetch {
                        r.prefetch_unread();
                    }
                    match r.data_input() {
                        // The next record's prefix word: written or not.
                        Some(true) => return Some(true),
                        Some(false) => {}
                        None => {
                            // An error is "ready": `advance` reports it.
                            if r.has_input().unwrap_or(true) {
                                return Some(true);
                            }
                        }
                    }
                }
                // Relaxed: a stop request.
                (set.any(members) || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))).then_some(false)
            });
            if let (WaitOutcome::Ready(true), Some(h)) = (woke, hot) {
                // Found in its data, not through the notify set: its mark (if the producer
                // made one) is drained later and finds it served or queued.
                let ch = &mut self.channels[h as usize];
                ch.queued = true;
                self.ready.push_back(h);
                self.data_poll_hits += 1;
            }
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
}

impl Drop for SingleInputGate {
    fn drop(&mut self) {
        // Let go of every reader (and so of every lease on a segment) before telling the
        // producers: a dead producer's channel is settled (its segments freed) as soon as
        // its reader left, so nothing may still be held then.
        let ended = self.ended;
        let ids: Vec<(u32, bool)> = self
            .channels
            .drain(..)
            .filter_map(|ch| Some((ch.local()?.reader.channel().id(), ch.state == ChannelState::Finished)))
            .collect();
        for (id, finished) in ids {
            let producer_died = {
                // Relaxed: a first look; `close_channel` decides by CAS.
                let st = self.arena.channels()[id as usize].peek_state();
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
