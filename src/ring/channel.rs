//! One channel of the arena, from both ends: the producer's [`ChannelWriter`] and the
//! consumer's [`ChannelReader`], speaking the credit protocol (DESIGN.md §4.4).
//!
//! The writer may have at most `credit` segments published and not yet released. Each
//! reader release returns one credit (and, from the last reader, the segment itself); the
//! consumer grants its initial (exclusive) and floating credits with `Grant` messages. The
//! writer parks on the channel's `producer_wake`, the reader on `consumer_wake` (or on its
//! gate's wake-up, one level up).

use super::descriptor::{Credit, Descriptor, EventCode};
use super::floating::{self, Released};
use super::notify::NotifySet;
use super::spsc::{Ring, RingConsumer, RingProducer};
use crate::buffer::{BufferConsumer, LocalBufferPool, RecycleSource, ReleaseSink};
use crate::error::{Error, PushError, Result};
use crate::memory::{
    Arena, ChannelBlock, Owner, RingKind, CHANNEL_CLAIMED, CHANNEL_CONSUMED, CHANNEL_CONSUMER_DIED,
    CHANNEL_CONSUMER_GONE, CHANNEL_OPEN, CHANNEL_ORPHANED, CHANNEL_PRODUCER_DIED, CHANNEL_PRODUCER_FAILED,
    REFCOUNT_MASK,
};
use crate::sync::{fence, EventCount, Ordering};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

fn ring(arena: &Arena, id: u32, kind: RingKind) -> Ring<'_> {
    let b = &arena.channels()[id as usize];
    let h = match kind {
        RingKind::Data => &b.data,
        RingKind::Credit => &b.credit,
        RingKind::Priority => &b.priority,
    };
    Ring::new(h, arena.ring_slots(id, kind))
}

fn check_id(arena: &Arena, id: u32) -> Result<()> {
    if id >= arena.config().max_channels {
        return Err(Error::ProtocolViolation {
            place: "channel table".into(),
            detail: format!("channel {id} outside 0..{}", arena.config().max_channels),
        });
    }
    Ok(())
}

/// The producer's end of a channel.
///
/// Dropping it changes nothing in the channel block: the consumer sees an end only once
/// one was published (a `ResultPartition` dropped unfinished fails its consumers instead).
pub struct ChannelWriter {
    arena: Arc<Arena>,
    id: u32,
    data: RingProducer,
    priority: RingProducer,
    credits_in: RingConsumer,
    credit: u32,
    /// Segments published here and not yet released by this channel's reader (at most
    /// the ring's capacity): a release must name one of them.
    held: Vec<u32>,
    place: String,
    /// The consumer gate's notify set and our index in it, once known.
    gate: Option<(u32, u32)>,
    /// Whether we told the consumer we want credit.
    wanted: bool,
    /// Floating credits taken from the channel's word for segments not published yet (see
    /// [`reserve_credit`](Self::reserve_credit)).
    reserved: u32,
    /// Floating credits in flight by our count (see `floating::take`).
    floating_out: u32,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelWriter({}, credit {}, in flight {})", self.id, self.credit, self.held.len())
    }
}

impl ChannelWriter {
    /// Takes the producer end of channel `id` and marks it open.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an id out of range.
    pub fn open(arena: Arc<Arena>, id: u32) -> Result<Self> {
        check_id(&arena, id)?;
        let data = RingProducer::attach(&ring(&arena, id, RingKind::Data));
        let priority = RingProducer::attach(&ring(&arena, id, RingKind::Priority));
        let credits_in = RingConsumer::attach(&ring(&arena, id, RingKind::Credit));
        // Release: pairs with Acquire loads of the state by the reader (it sees our
        // attach-time view of the rings).
        arena.channels()[id as usize].publish_state(CHANNEL_OPEN);
        let held = Vec::with_capacity(arena.config().ring_capacity.min(1024) as usize);
        Ok(Self {
            arena,
            id,
            data,
            priority,
            credits_in,
            credit: 0,
            held,
            place: format!("channel {id}"),
            gate: None,
            wanted: false,
            reserved: 0,
            floating_out: 0,
        })
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The shared block.
    pub fn block(&self) -> &ChannelBlock {
        &self.arena.channels()[self.id as usize]
    }

    /// Credits this producer holds now (segments it may still publish): its exclusive
    /// credit and the floating credit it reserved. Floating credit still unused in the
    /// channel's word is not counted: the gate may take it back at any moment;
    /// [`reserve_credit`](Self::reserve_credit) takes one for good.
    #[inline]
    pub fn credit(&self) -> u32 {
        self.credit + self.reserved
    }

    /// Makes sure one credit is held for the next segment: true if the producer holds one
    /// ([`credit`](Self::credit) > 0) or took an unused floating credit from the channel's
    /// word (it races the gate's revoke for it, see `ring::floating`). Check credit with
    /// this before taking a segment to publish, not with `credit`.
    #[inline]
    pub fn reserve_credit(&mut self) -> bool {
        if self.credit + self.reserved > 0 {
            return true;
        }
        if floating::take(self.block().floating_credit(), self.floating_out) {
            self.reserved += 1;
            self.floating_out += 1;
            return true;
        }
        false
    }

    /// Segments published and not released yet.
    pub fn in_flight(&self) -> u32 {
        self.held.len() as u32
    }

    /// Hands over the segments in flight here, forgetting them: for a producer whose
    /// consumer died (`CHANNEL_CONSUMER_DIED`), which takes back the dead reader's shares
    /// itself. Drain the credit ring first ([`reclaim`](Self::reclaim)).
    pub fn take_in_flight(&mut self) -> Vec<u32> {
        let held = std::mem::take(&mut self.held);
        self.block().set_backlog(0);
        held
    }

    /// Pid of the consumer process (0 before one attached; a hint read from the block).
    pub fn consumer_pid(&self) -> u32 {
        // Relaxed: a hint for error messages and liveness checks.
        self.block().consumer_pid()
    }

    /// Routes this channel's "credit came back" wake-ups to member `index` of notify set
    /// `set` (the partition-wide wake-up of a producer with many channels). Must be called
    /// before the channel is made known to consumers.
    pub fn set_producer_set(&self, set: u32, index: u32) {
        self.block().route_producer_wakeups(set, index);
    }

    /// Publishes a descriptor. A segment descriptor takes one credit, which the caller must
    /// have (see [`credit`](Self::credit) and [`reclaim`](Self::reclaim)); payload-free
    /// events and barriers take none but need room in the ring.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if there is no credit or no room (the consumer granted
    /// more credit than the ring holds), or the consumer's ring state is corrupt;
    /// [`Error::ConsumerGone`] if the consumer left.
    pub fn publish(&mut self, d: Descriptor) -> Result<()> {
        self.check_consumer()?;
        let takes_credit = matches!(d, Descriptor::Buffer(_) | Descriptor::EventBuffer(_));
        // Exclusive credit first; a floating credit is spent (taken from the shared word,
        // before the push orders it for the consumer; usually by `reserve_credit` before)
        // only when that is used up, so an idle channel's floating credit stays unused and
        // the gate can take it back at once.
        let exclusive = takes_credit && self.credit > 0;
        let reserved = takes_credit && !exclusive && self.reserved > 0;
        if takes_credit && !exclusive && !reserved {
            if !floating::take(self.block().floating_credit(), self.floating_out) {
                return Err(Error::ProtocolViolation {
                    place: self.place.clone(),
                    detail: "publish without credit".into(),
                });
            }
            self.floating_out += 1;
        }
        let r = ring(&self.arena, self.id, RingKind::Data);
        let place = || self.place.clone();
        let (slots, n) = d.encode_slots();
        // The owner word says "in flight" before a reader can see the descriptor, so a
        // reclaimer of this process never takes a segment a live reader may be reading for
        // one that only this process holds.
        let prev_owner = match d {
            Descriptor::Buffer(seg) | Descriptor::EventBuffer(seg) => {
                let ctl = &self.arena.controls()[seg as usize];
                // Relaxed (all): ownership bookkeeping for reclamation and `shmflow check`;
                // published to readers by the Release push below, read by a reclaimer
                // only after this process died.
                let fanout = ctl.refcount.load(Ordering::Relaxed) & REFCOUNT_MASK;
                Some(ctl.owner.swap(Owner::InFlight { channel: self.id, fanout }.pack(), Ordering::Relaxed))
            }
            _ => None,
        };
        if let Err(e) = self.data.push_all(&r, &slots[..n], &place) {
            if let (Some(prev), Descriptor::Buffer(seg) | Descriptor::EventBuffer(seg)) = (prev_owner, d) {
                // Relaxed: not published after all; back to what it was.
                self.arena.controls()[seg as usize].owner.store(prev, Ordering::Relaxed);
            }
            return Err(match e {
                // Credit promised room: a full data ring means the consumer broke it.
                PushError::Full => Error::ProtocolViolation {
                    place: self.place.clone(),
                    detail: format!(
                        "data ring full with credit {}: the consumer granted more than {} credits",
                        self.credit,
                        r.capacity()
                    ),
                },
                PushError::Violation(v) => v.into(),
            });
        }
        if let Descriptor::Buffer(seg) | Descriptor::EventBuffer(seg) = d {
            self.held.push(seg);
        }
        if takes_credit {
            if exclusive {
                self.credit -= 1;
            } else if reserved {
                self.reserved -= 1;
            }
            let b = self.block();
            // Relaxed: a statistic for observers.
            b.buffers_out.fetch_add(1, Ordering::Relaxed);
            b.set_backlog(self.held.len() as u32);
        }
        self.notify_consumer()
    }

    /// Publishes a barrier or event on the priority ring (it overtakes data).
    ///
    /// # Errors
    /// As [`publish`](Self::publish); a full priority ring (nothing published: try again
    /// once the consumer took some) is [`Error::RingFull`].
    pub fn publish_priority(&mut self, d: Descriptor) -> Result<()> {
        self.check_consumer()?;
        let r = ring(&self.arena, self.id, RingKind::Priority);
        let place = || self.place.clone();
        let (slots, n) = d.encode_slots();
        match self.priority.push_all(&r, &slots[..n], &place) {
            Ok(()) => self.notify_consumer(),
            Err(PushError::Full) => Err(Error::RingFull { ring: "priority", channel: self.id }),
            Err(PushError::Violation(v)) => Err(v.into()),
        }
    }

    /// Free slots in the data ring beyond what granted credit may need.
    pub fn has_room(&mut self, slots: u64) -> bool {
        let r = ring(&self.arena, self.id, RingKind::Data);
        let unused = floating::unused(self.block().floating_credit());
        self.data.free(&r) >= slots + u64::from(self.credit()) + u64::from(unused)
    }

    /// Wakes the consumer if it is parked (no system call otherwise): marks our bit in its
    /// gate's notify set, or its channel wake-up when it reads without a gate. Call after
    /// publishing a descriptor or committing bytes into a published segment.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the consumer wrote a gate id out of range.
    #[inline]
    pub fn notify_consumer(&mut self) -> Result<()> {
        if let Some((set, index)) = self.gate {
            return Ok(NotifySet::new(&self.arena, set)?.mark(index)?);
        }
        self.notify_consumer_slow()
    }

    /// [`notify_consumer`](Self::notify_consumer) for a caller that issued
    /// `fence(SeqCst)` after publishing (its commits or descriptors) and before this call:
    /// a flush of many channels pays one fence for all of them. Without that fence a
    /// parked consumer can miss the wake-up.
    ///
    /// # Errors
    /// As [`notify_consumer`](Self::notify_consumer).
    #[inline]
    pub fn notify_consumer_fenced(&mut self) -> Result<()> {
        if let Some((set, index)) = self.gate {
            return Ok(NotifySet::new(&self.arena, set)?.mark_fenced(index)?);
        }
        self.notify_consumer_slow()
    }

    /// The consumer gate's notify set and our member index in it, once a wake-up found
    /// them (`None` before: wake through [`notify_consumer`](Self::notify_consumer), which
    /// looks them up). For a caller that marks many channels' members in one go.
    #[inline]
    pub fn consumer_route(&self) -> Option<(u32, u32)> {
        self.gate
    }

    #[cold]
    fn notify_consumer_slow(&mut self) -> Result<()> {
        if let Some(gate) = notify_channel(&self.arena, self.id)? {
            self.gate = Some(gate);
        }
        Ok(())
    }

    /// Tells the consumer we are blocked for want of credit on this channel (its gate may
    /// grant floating credit).
    ///
    /// # Errors
    /// As [`notify_consumer`](Self::notify_consumer).
    pub fn want_credit(&mut self) -> Result<()> {
        if !self.wanted {
            self.wanted = true;
            // Published by the notify below (Release fetch_or / fence).
            self.block().set_credit_wanted(true);
            self.notify_consumer()?;
        }
        Ok(())
    }

    /// Drains the credit ring: credits are added, released segments go back to `pool`
    /// once every reader released them. Returns the number of entries taken.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] naming the consumer's pid for a malformed entry, the
    /// release of a segment that is not in flight on this channel, a refcount that does
    /// not match the readers (see [`LocalBufferPool::release_share`]), or more credit than
    /// the ring can carry.
    pub fn reclaim(&mut self, pool: &mut LocalBufferPool) -> Result<usize> {
        let r = ring(&self.arena, self.id, RingKind::Credit);
        let count = self.arena.segment_count();
        let cap = self.arena.config().ring_capacity;
        let mut n = 0;
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        while let Some(v) = self.credits_in.pop(&r, &place)? {
            n += 1;
            match Credit::decode(v, count, &place)? {
                Credit::Release { segment, credit, last } => {
                    let arena = &self.arena;
                    let id = self.id as usize;
                    // The peer named in a violation: the channel's consumer.
                    let peer = |detail: String| {
                        // Relaxed: a hint for the message.
                        let pid = arena.channels()[id].consumer_pid();
                        Error::ProtocolViolation { place: place(), detail: format!("{detail} (consumer pid {pid})") }
                    };
                    if self.held.is_empty() {
                        return Err(peer("release with no segment in flight".into()));
                    }
                    let Some(at) = segment.and_then(|s| self.held.iter().position(|&h| h == s)) else {
                        return Err(peer(match segment {
                            Some(s) => format!("release of segment {s}, which is not in flight on this channel"),
                            None => "release without a segment".into(),
                        }));
                    };
                    let s = self.held.swap_remove(at);
                    // An exclusive credit back while floating credit is out: trade, so
                    // the floating credit is unused (revocable at once) rather than stuck
                    // in a segment of a channel that may go idle (see `ring::floating`).
                    if !credit {
                        // A floating credit's release (kept on the channel or revoked).
                        self.floating_out = self.floating_out.saturating_sub(1);
                    } else if floating::convert(self.arena.channels()[id].floating_credit()) {
                        self.floating_out = self.floating_out.saturating_sub(1);
                    } else {
                        self.credit = self.credit.saturating_add(1);
                    }
                    pool.release_share(s, last, false).map_err(peer)?;
                }
                Credit::Grant(k) => {
                    self.credit = self.credit.saturating_add(k);
                }
            }
            if u64::from(self.credit()) + self.held.len() as u64 > u64::from(cap) {
                return Err(Error::ProtocolViolation {
                    place: place(),
                    detail: format!(
                        "credit {} + in flight {} exceeds the ring capacity {cap}",
                        self.credit(),
                        self.held.len()
                    ),
                });
            }
        }
        if n > 0 {
            self.block().set_backlog(self.held.len() as u32);
        }
        // Floating credit arrives in the channel's word, not the ring: look even when the
        // ring was empty (only while we want credit, which is rare).
        if self.wanted && (self.credit() > 0 || floating::unused(self.block().floating_credit()) > 0) {
            self.wanted = false;
            self.block().set_credit_wanted(false);
        }
        Ok(n)
    }

    /// Whether the consumer took everything published (both rings are empty, so it read
    /// the EndOfPartition after the last segment), left, or died.
    pub fn consumed(&mut self) -> bool {
        // Relaxed: a status flag, as in `check_consumer`.
        if matches!(self.block().peek_state(), CHANNEL_CONSUMER_GONE | CHANNEL_CONSUMER_DIED) {
            return true;
        }
        let (d, p) = (ring(&self.arena, self.id, RingKind::Data), ring(&self.arena, self.id, RingKind::Priority));
        self.data.free(&d) == d.capacity() && self.priority.free(&p) == p.capacity()
    }

    fn check_consumer(&self) -> Result<()> {
        // Relaxed: a status flag; acting on it late is fine.
        match self.block().peek_state() {
            CHANNEL_CONSUMER_GONE => Err(Error::ConsumerGone { channel: self.id }),
            CHANNEL_CONSUMER_DIED => Err(self.consumer_died()),
            _ => Ok(()),
        }
    }

    /// The error for a consumer that a reclaimer found dead.
    pub fn consumer_died(&self) -> Error {
        Error::PeerDied {
            role: "consumer",
            place: self.place.clone(),
            // Written by the reclaimer before its Release CAS of the state.
            pid: self.block().dead_peer(),
        }
    }

    /// Whether a consumer attached to this channel (opened its reader).
    pub fn consumer_attached(&self) -> bool {
        let b = self.block();
        // Relaxed: a hint written by the consumer when it attached.
        b.consumer_pid() != 0 || b.consumer_worker().is_some()
    }

    /// Whether a reclaimer found this channel's consumer dead (its process is gone).
    pub fn consumer_is_dead(&self) -> bool {
        // Acquire: pairs with the reclaimer's AcqRel CAS to CONSUMER_DIED (the peer pid
        // stored before it is visible).
        self.block().state() == CHANNEL_CONSUMER_DIED
    }

    /// Whether the consumer read everything, left, or died.
    pub fn is_consumed(&self) -> bool {
        // Acquire: pairs with the Release store in `ChannelReader::mark_consumed`.
        matches!(self.block().state(), CHANNEL_CONSUMED | CHANNEL_CONSUMER_GONE | CHANNEL_CONSUMER_DIED)
    }

    /// Marks the producer failed and wakes the consumer, so it stops with an error. A
    /// channel whose consumer already left, read everything or died keeps that state.
    pub fn fail(&self) {
        let b = self.block();
        for from in [CHANNEL_OPEN, CHANNEL_CLAIMED] {
            // Release: pairs with the Acquire load in `ChannelReader::poll`.
            let _ = b.try_hand_over(from, CHANNEL_PRODUCER_FAILED);
        }
        b.consumer_wake.notify_all_forced();
        // A consumer behind a gate parks on the gate's notify set, not on `consumer_wake`:
        // mark our member so the gate polls this channel and sees the failure.
        // SeqCst fence: as in `notify_consumer_slow` (either we see the gate id, or the
        // gate's first scan of this channel sees the state stored above).
        fence(Ordering::SeqCst);
        if let Some((g, index)) = b.consumer_wakeups() {
            if let Ok(set) = NotifySet::new(&self.arena, g) {
                // An index out of range (a corrupt consumer) only loses this wake-up.
                let _ = set.mark(index);
            }
        }
    }
}

impl RecycleSource for ChannelWriter {
    fn reclaim(&mut self, pool: &mut LocalBufferPool) -> Result<usize> {
        ChannelWriter::reclaim(self, pool)
    }

    fn wake(&self) -> &EventCount {
        let b = self.block();
        // Written by ourselves (set_producer_set) before any use.
        match b.producer_wakeups().map(|(set, _)| NotifySet::new(&self.arena, set)) {
            Some(Ok(s)) => s.wake(),
            _ => &b.producer_wake,
        }
    }
}

/// The consumer's way back to the producer: returns credits and segments through the
/// credit ring when a reader lets go of a segment.
pub struct CreditReturn {
    arena: Arc<Arena>,
    id: u32,
    ring: RefCell<RingProducer>,
    /// Releases that found the refcount already at zero, or a full/corrupt credit ring.
    violations: Cell<u32>,
    /// Floating credits to take back with the next releases (set by the gate).
    revoke: Cell<u32>,
    /// Where revoked floating credits go (the gate's floating pool).
    floating: Rc<Cell<u32>>,
}

impl CreditReturn {
    /// Pushes a credit entry and wakes the producer if it is parked.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the ring is full (the producer let more credit
    /// accumulate than the ring holds) or corrupt.
    pub fn send(&self, c: Credit) -> Result<()> {
        let r = ring(&self.arena, self.id, RingKind::Credit);
        let place = || format!("channel {} credit ring", self.id);
        match self.ring.borrow_mut().push(&r, c.encode(), &place) {
            Ok(()) => self.notify_producer(),
            // The entries answer credit and segments the producer has out, which the ring's
            // capacity bounds (see `ChannelWriter::reclaim`): the producer let more pile up.
            Err(PushError::Full) => Err(Error::ProtocolViolation { place: place(), detail: "credit ring full".into() }),
            Err(PushError::Violation(v)) => Err(v.into()),
        }
    }

    /// Wakes the producer if it is parked (after a credit, or after the consumer read the
    /// end of the channel, which a producer waiting to release its partition looks for).
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the producer wrote a notify-set id out of range.
    pub fn notify_producer(&self) -> Result<()> {
        let b = &self.arena.channels()[self.id as usize];
        let Some((set, index)) = b.producer_wakeups() else {
            b.producer_wake.notify();
            return Ok(());
        };
        Ok(NotifySet::new(&self.arena, set)?.mark(index)?)
    }

    /// Grants `n` floating credits to the producer: they stay in the channel's floating
    /// word, where [`revoke_unused`](Self::revoke_unused) can take back what the producer
    /// did not spend (see `ring::floating`), and wakes the producer.
    ///
    /// # Errors
    /// As [`notify_producer`](Self::notify_producer).
    pub fn grant_floating(&self, n: u32) -> Result<()> {
        let b = &self.arena.channels()[self.id as usize];
        b.count_credit_granted(n);
        floating::grant(b.floating_credit(), n);
        self.notify_producer()
    }

    /// Takes back at once up to `max` floating credits the producer has not spent and
    /// returns how many (they belong to the caller's pool now). Races with the producer's
    /// publish for each credit; exactly one side gets it.
    pub fn revoke_unused(&self, max: u32) -> u32 {
        floating::revoke(self.arena.channels()[self.id as usize].floating_credit(), max)
    }

    /// The producer ended: takes back every floating credit of the channel but the
    /// in-flight ones already promised to the pool by [`revoke`](Self::revoke) (their
    /// releases still bring them), and returns how many.
    pub fn end_floating(&self) -> u32 {
        floating::end(self.arena.channels()[self.id as usize].floating_credit(), self.revoke.get())
    }

    /// Asks the next `n` releases of segments published with floating credit to take
    /// that credit back to the gate (the in-flight part of a revoke; the unused part
    /// comes back at once through [`revoke_unused`](Self::revoke_unused)).
    pub fn revoke(&self, n: u32) {
        self.revoke.set(self.revoke.get().saturating_add(n));
    }

    /// Floating credits still to be revoked.
    pub fn pending_revokes(&self) -> u32 {
        self.revoke.get()
    }

    /// Violations seen so far (reported by the reader's next poll).
    pub fn violations(&self) -> u32 {
        self.violations.get()
    }
}

impl ReleaseSink for CreditReturn {
    fn release(&self, segment: u32, last: bool, violation: bool) {
        if violation {
            self.violations.set(self.violations.get().saturating_add(1));
        }
        let b = &self.arena.channels()[self.id as usize];
        // Relaxed: statistic.
        b.buffers_in.fetch_add(1, Ordering::Relaxed);
        // One read-modify-write of the floating word decides where the credit goes: to the
        // producer (exclusive), back to the channel's unused floating credit, or to the
        // gate's pool (see `ring::floating`).
        let credit = match floating::release(b.floating_credit(), self.revoke.get() > 0) {
            Released::Exclusive => true,
            Released::Kept => false,
            Released::ToPool => {
                self.revoke.set(self.revoke.get() - 1);
                self.floating.set(self.floating.get().saturating_add(1));
                false
            }
            Released::ExclusiveAndUnusedToPool => {
                self.revoke.set(self.revoke.get() - 1);
                self.floating.set(self.floating.get().saturating_add(1));
                true
            }
        };
        if self.send(Credit::Release { segment: Some(segment), credit, last }).is_err() {
            self.violations.set(self.violations.get().saturating_add(1));
        }
    }
}

/// The consumer's end of a channel.
///
/// Dropping it changes nothing in the channel block (a gate closes its channels on drop).
pub struct ChannelReader {
    arena: Arc<Arena>,
    id: u32,
    data: RingConsumer,
    priority: RingConsumer,
    credit_return: Rc<CreditReturn>,
    place: String,
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelReader({})", self.id)
    }
}

impl ChannelReader {
    /// Takes the consumer end of channel `id` with a private floating pool.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an id out of range.
    pub fn open(arena: Arc<Arena>, id: u32) -> Result<Self> {
        Self::open_with_floating(arena, id, Rc::new(Cell::new(0)))
    }

    /// Takes the consumer end of channel `id`; revoked floating credits go to `floating`
    /// (the gate's pool).
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an id out of range.
    pub fn open_with_floating(arena: Arc<Arena>, id: u32, floating: Rc<Cell<u32>>) -> Result<Self> {
        check_id(&arena, id)?;
        let data = RingConsumer::attach(&ring(&arena, id, RingKind::Data));
        let priority = RingConsumer::attach(&ring(&arena, id, RingKind::Priority));
        let credit_ring = RingProducer::attach(&ring(&arena, id, RingKind::Credit));
        // Who reads this channel, for reclamation and the producer's messages; published
        // with the first grant (a Release push) like the gate routing.
        arena.channels()[id as usize].record_consumer(std::process::id());
        let credit_return = Rc::new(CreditReturn {
            arena: arena.clone(),
            id,
            ring: RefCell::new(credit_ring),
            violations: Cell::new(0),
            revoke: Cell::new(0),
            floating,
        });
        Ok(Self { arena, id, data, priority, credit_return, place: format!("channel {id}") })
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The shared block.
    pub fn block(&self) -> &ChannelBlock {
        &self.arena.channels()[self.id as usize]
    }

    /// Grants `n` credits to the producer.
    ///
    /// # Errors
    /// As [`CreditReturn::send`].
    pub fn grant(&self, n: u32) -> Result<()> {
        self.block().count_credit_granted(n);
        self.credit_return.send(Credit::Grant(n))
    }

    /// The sink readers of this channel's segments report to.
    pub fn release_sink(&self) -> Rc<dyn ReleaseSink> {
        self.credit_return.clone()
    }

    /// The credit return (to revoke floating credits).
    pub fn credit_return(&self) -> &CreditReturn {
        &self.credit_return
    }

    /// Routes the producer's wake-ups for this channel to member `index` of notify set
    /// `set` (the gate). Call before the first grant; the caller scans the channel once
    /// after this (the fence below pairs with the producer's, see
    /// `ChannelWriter::notify_consumer`).
    pub fn set_gate(&self, set: u32, index: u32) {
        // A producer that sees the gate id sees the index too.
        self.block().route_consumer_wakeups(set, index);
        // SeqCst fence: pairs with the fence in `ChannelWriter::notify_consumer_slow`.
        fence(Ordering::SeqCst);
    }

    /// Whether the producer says it is blocked for want of credit here.
    pub fn credit_wanted(&self) -> bool {
        self.block().credit_wanted()
    }

    fn pop_from(
        ring_state: &mut RingConsumer,
        r: &Ring<'_>,
        count: u32,
        place: &dyn Fn() -> String,
    ) -> Result<Option<Descriptor>> {
        let Some(v) = ring_state.pop(r, place)? else {
            return Ok(None);
        };
        if Descriptor::slots_for_header(v) == 3 {
            let mut slots = [v, 0, 0];
            for s in &mut slots[1..] {
                match ring_state.pop(r, place)? {
                    Some(x) => *s = x,
                    None => {
                        return Err(Error::ProtocolViolation {
                            place: place(),
                            detail: "barrier published without its payload slots".into(),
                        })
                    }
                }
            }
            return Ok(Some(Descriptor::decode_barrier(slots, place)?));
        }
        Ok(Some(Descriptor::decode(v, count, place)?))
    }

    /// Next descriptor, priority ring first; `Ok(None)` when both are empty.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a malformed descriptor or ring state;
    /// [`Error::ProducerFailed`] if the producer failed and nothing is left to read.
    pub fn poll(&mut self) -> Result<Option<Descriptor>> {
        let count = self.arena.segment_count();
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        if let Some(d) = Self::pop_from(&mut self.priority, &pr, count, &place)? {
            return Ok(Some(d));
        }
        self.poll_data()
    }

    /// Whether the priority ring holds something (a cheap check before
    /// [`poll_priority`](Self::poll_priority) on the per-record path).
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    #[inline]
    pub fn priority_pending(&mut self) -> Result<bool> {
        let place = &self.place;
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        Ok(self.priority.has_next(&pr, &place)?)
    }

    /// Next descriptor of the priority ring only.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn poll_priority(&mut self) -> Result<Option<Descriptor>> {
        let count = self.arena.segment_count();
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        Self::pop_from(&mut self.priority, &pr, count, &place)
    }

    /// Next descriptor of the data ring only (priority events are left where they are).
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn poll_data(&mut self) -> Result<Option<Descriptor>> {
        let count = self.arena.segment_count();
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        let r = ring(&self.arena, self.id, RingKind::Data);
        if let Some(d) = Self::pop_from(&mut self.data, &r, count, &place)? {
            if d == Descriptor::Event(EventCode::EndOfPartition) {
                // The producer may be waiting for this to release its partition.
                self.credit_return.notify_producer()?;
            }
            return Ok(Some(d));
        }
        if self.credit_return.violations() > 0 {
            return Err(Error::ProtocolViolation {
                place: place(),
                detail: format!("{} bad segment releases or credit-ring failures", self.credit_return.violations()),
            });
        }
        // Acquire: pairs with the Release store in `ChannelWriter::fail` and the
        // reclaimer's AcqRel CAS to PRODUCER_DIED (the peer pid stored before it).
        match self.block().state() {
            CHANNEL_PRODUCER_FAILED => Err(Error::ProducerFailed { channel: self.id }),
            // Ordered by the Acquire load above: the producer failed, then died.
            CHANNEL_PRODUCER_DIED | CHANNEL_ORPHANED if self.block().failed_before_death() => {
                Err(Error::ProducerFailed { channel: self.id })
            }
            CHANNEL_PRODUCER_DIED | CHANNEL_ORPHANED => Err(Error::PeerDied {
                role: "producer",
                place: self.place.clone(),
                // Ordered by the Acquire load above.
                pid: self.block().dead_peer(),
            }),
            _ => Ok(None),
        }
    }

    /// The descriptors queued in the data ring, without consuming them (what an unaligned
    /// barrier overtakes). Multi-slot entries are skipped over.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn queued_data(&mut self) -> Result<Vec<Descriptor>> {
        let count = self.arena.segment_count();
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        let r = ring(&self.arena, self.id, RingKind::Data);
        let n = self.data.available(&r, &place)?;
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            let v = self.data.peek_at(&r, i).unwrap_or(0);
            if Descriptor::slots_for_header(v) == 3 {
                i += 3;
                continue;
            }
            out.push(Descriptor::decode(v, count, &place)?);
            i += 1;
        }
        Ok(out)
    }

    /// Whether a descriptor is waiting in the data ring (does not consume it).
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn has_next_data(&mut self) -> Result<bool> {
        // Borrowed, not cloned: this runs once per segment; the String is built only for
        // an error.
        let place = &self.place;
        let place = || place.clone();
        let r = ring(&self.arena, self.id, RingKind::Data);
        Ok(self.data.has_next(&r, &place)?)
    }

    /// Whether a descriptor is waiting (does not consume it).
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn has_next(&mut self) -> Result<bool> {
        // Borrowed, not cloned: these run once per record; the String is built only
        // for an error.
        let place = &self.place;
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        let r = ring(&self.arena, self.id, RingKind::Data);
        Ok(self.priority.has_next(&pr, &place)? || self.data.has_next(&r, &place)?)
    }

    /// A reader for segment `segment` (from a validated descriptor).
    pub fn consumer(&self, segment: u32) -> BufferConsumer {
        BufferConsumer::new(self.arena.clone(), segment, self.release_sink(), self.id)
    }

    /// [`consumer`](Self::consumer) in `spare`, a lease recycled from this channel's
    /// previous consumer (no allocation).
    pub fn consumer_reusing(&self, spare: crate::buffer::SpareLease, segment: u32) -> BufferConsumer {
        BufferConsumer::reuse(spare, segment, self.id)
    }

    /// Tells the producer that this consumer read everything (EndOfPartition), so the
    /// partition may be released once every segment is back.
    ///
    /// # Errors
    /// As [`CreditReturn::notify_producer`].
    pub fn mark_consumed(&self) -> Result<()> {
        // Release: pairs with the Acquire load in `ChannelWriter::is_consumed`.
        self.block().publish_state(CHANNEL_CONSUMED);
        self.credit_return.notify_producer()
    }

    /// Tells the producer this consumer is gone. Returns true when the producer had
    /// died and was reclaimed (`CHANNEL_PRODUCER_DIED`): the block is then handed on as
    /// `CHANNEL_ORPHANED` for settling (see `partition::reclaim`). Call it after every
    /// segment of the channel was let go (no lease left), so settling frees nothing a
    /// reader still holds.
    pub fn close(&self) -> bool {
        close_channel(&self.arena, self.id)
    }

    /// The wake-up this reader parks on when it has no gate.
    pub fn wake(&self) -> &EventCount {
        &self.block().consumer_wake
    }
}

/// Wakes the consumer of channel `id` (its gate's notify set, or the channel's own wake-up
/// before a gate attached): what [`ChannelWriter::notify_consumer`] does, for a thread
/// that does not own the channel's writer (the output flusher). Returns the gate routing
/// it found, if any.
///
/// # Errors
/// [`Error::ProtocolViolation`] for an id out of range or a bad gate id in the block.
pub fn notify_channel(arena: &Arena, id: u32) -> Result<Option<(u32, u32)>> {
    check_id(arena, id)?;
    // SeqCst fence: pairs with the fence in `ChannelReader::set_gate`: either we see
    // the gate id, or the gate's first scan (after its fence) sees our data; and stands
    // for the fence of `NotifySet::mark` (pairs with the fence in `NotifySet::drain`).
    fence(Ordering::SeqCst);
    notify_channel_fenced(arena, id)
}

/// [`notify_channel`] for a caller that published the data of several channels and then
/// issued one `fence(SeqCst)` itself before waking them all (the output flusher commits
/// many channels and pays one fence, not one per channel). Without that fence between
/// the publishing stores and this call a parked consumer can miss the wake-up.
///
/// # Errors
/// As [`notify_channel`].
pub fn notify_channel_fenced(arena: &Arena, id: u32) -> Result<Option<(u32, u32)>> {
    check_id(arena, id)?;
    let b = &arena.channels()[id as usize];
    // The index comes with the gate id it was stored with (the caller's fence orders
    // neither).
    let Some((g, index)) = b.consumer_wakeups() else {
        b.consumer_wake.notify();
        return Ok(None);
    };
    NotifySet::new(arena, g)?.mark_fenced(index)?;
    Ok(Some((g, index)))
}

/// [`ChannelReader::close`] for channel `id`, for a reader that was already dropped (a gate
/// lets go of its readers, and so of their leases, first).
pub fn close_channel(arena: &Arena, id: u32) -> bool {
    let Some(b) = arena.channels().get(id as usize) else {
        return false;
    };
    // Bounded: the state changes at most a few times (producer fails, a reclaimer marks it).
    for _ in 0..16 {
        // Relaxed: the CAS below decides.
        let st = b.peek_state();
        let to = match st {
            CHANNEL_OPEN | CHANNEL_CLAIMED | CHANNEL_PRODUCER_FAILED => CHANNEL_CONSUMER_GONE,
            CHANNEL_PRODUCER_DIED => CHANNEL_ORPHANED,
            _ => return false,
        };
        // AcqRel: Release publishes our last use of the block (every lease let go) to the
        // producer or the settling reclaimer; Acquire pairs with the reclaimer's CAS.
        if b.try_transition(st, to).is_ok() {
            b.producer_wake.notify_all_forced();
            return to == CHANNEL_ORPHANED;
        }
    }
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::memory::ArenaConfig;
    use crate::ring::BarrierDescriptor;

    fn arena() -> Arc<Arena> {
        let cfg = ArenaConfig {
            segment_size: 4096,
            segment_count: 4,
            ring_capacity: 4,
            max_channels: 2,
            max_partitions: 1,
            max_gates: 1,
            max_channels_per_gate: 64,
            max_workers: 1,
            max_tasks: 1,
        };
        Arc::new(Arena::heap(&cfg).unwrap())
    }

    fn barrier(id: u64) -> Descriptor {
        Descriptor::Barrier(BarrierDescriptor { checkpoint_id: id, timestamp: 0, unaligned: true })
    }

    #[test]
    fn a_full_priority_ring_is_ring_full_and_publishes_nothing() {
        let arena = arena();
        let mut w = ChannelWriter::open(arena.clone(), 1).unwrap();
        let mut r = ChannelReader::open(arena, 1).unwrap();
        // A barrier takes three of the four slots: the second does not fit.
        w.publish_priority(barrier(1)).unwrap();
        match w.publish_priority(barrier(2)) {
            Err(Error::RingFull { ring: "priority", channel: 1 }) => {}
            other => panic!("expected RingFull, got {other:?}"),
        }
        assert_eq!(r.poll_priority().unwrap(), Some(barrier(1)));
        assert_eq!(r.poll_priority().unwrap(), None, "the refused barrier left no slot behind");
        w.publish_priority(barrier(3)).unwrap();
        assert_eq!(r.poll_priority().unwrap(), Some(barrier(3)));
    }

    #[test]
    fn publishing_a_segment_without_credit_is_a_violation() {
        let arena = arena();
        let mut w = ChannelWriter::open(arena, 0).unwrap();
        let e = w.publish(Descriptor::Buffer(0)).unwrap_err();
        assert!(matches!(&e, Error::ProtocolViolation { detail, .. } if detail == "publish without credit"), "{e}");
        // An event takes no credit.
        w.publish(Descriptor::Event(EventCode::EndOfData)).unwrap();
    }

    #[test]
    fn a_channel_id_out_of_range_is_refused_at_open() {
        let arena = arena();
        for id in [2, u32::MAX] {
            let e = ChannelWriter::open(arena.clone(), id).unwrap_err();
            assert!(e.to_string().contains(&format!("channel {id} outside 0..2")), "{e}");
            assert!(ChannelReader::open(arena.clone(), id).is_err());
            assert!(notify_channel(&arena, id).is_err());
            assert!(!close_channel(&arena, id));
        }
    }

    #[test]
    fn a_writer_sees_the_consumer_leave() {
        let arena = arena();
        let mut w = ChannelWriter::open(arena.clone(), 0).unwrap();
        let r = ChannelReader::open(arena, 0).unwrap();
        assert!(!r.close(), "the producer is alive: nothing to hand on");
        let e = w.publish(Descriptor::Event(EventCode::EndOfData)).unwrap_err();
        assert!(matches!(e, Error::ConsumerGone { channel: 0 }), "{e}");
    }
}
