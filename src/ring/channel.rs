//! One channel of the arena, from both ends: the producer's [`ChannelWriter`] and the
//! consumer's [`ChannelReader`], speaking the credit protocol (DESIGN.md §4.4).
//!
//! The writer may have at most `credit` segments published and not yet released. Each
//! reader release returns one credit (and, from the last reader, the segment itself); the
//! consumer grants its initial (exclusive) and floating credits with `Grant` messages. The
//! writer parks on the channel's `producer_wake`, the reader on `consumer_wake` (or on its
//! gate's wake-up, one level up).

use super::descriptor::{Credit, Descriptor};
use super::spsc::{Ring, RingConsumer, RingProducer};
use crate::buffer::{BufferConsumer, LocalBufferPool, RecycleSource, ReleaseSink};
use crate::error::{Error, Result};
use crate::memory::{Arena, ChannelBlock, RingKind, CHANNEL_CONSUMER_GONE, CHANNEL_OPEN, CHANNEL_PRODUCER_FAILED};
use crate::sync::{EventCount, Ordering};
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
pub struct ChannelWriter {
    arena: Arc<Arena>,
    id: u32,
    data: RingProducer,
    priority: RingProducer,
    credits_in: RingConsumer,
    credit: u32,
    /// Segments published and not yet released by the consumer.
    in_flight: u32,
    place: String,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelWriter({}, credit {}, in flight {})", self.id, self.credit, self.in_flight)
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
        arena.channels()[id as usize].state.store(CHANNEL_OPEN, Ordering::Release);
        Ok(Self { arena, id, data, priority, credits_in, credit: 0, in_flight: 0, place: format!("channel {id}") })
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The shared block.
    pub fn block(&self) -> &ChannelBlock {
        &self.arena.channels()[self.id as usize]
    }

    /// Credits available now (segments that may still be published).
    pub fn credit(&self) -> u32 {
        self.credit
    }

    /// Segments published and not released yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Publishes a descriptor. A segment descriptor takes one credit, which the caller must
    /// have (see [`credit`](Self::credit) and [`reclaim`](Self::reclaim)).
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if there is no credit or the ring is full (the consumer
    /// granted more credit than the ring holds), or the consumer's ring state is corrupt;
    /// [`Error::ConsumerGone`] if the consumer left.
    pub fn publish(&mut self, d: Descriptor) -> Result<()> {
        self.check_consumer()?;
        let takes_credit = !matches!(d, Descriptor::Event(_));
        if takes_credit && self.credit == 0 {
            return Err(Error::ProtocolViolation {
                place: self.place.clone(),
                detail: "publish without credit".into(),
            });
        }
        let r = ring(&self.arena, self.id, RingKind::Data);
        let place = || self.place.clone();
        if !self.data.push(&r, d.encode(), &place)? {
            return Err(Error::ProtocolViolation {
                place: self.place.clone(),
                detail: format!(
                    "data ring full with credit {}: the consumer granted more than {} credits",
                    self.credit,
                    r.capacity()
                ),
            });
        }
        if takes_credit {
            self.credit -= 1;
            self.in_flight += 1;
            let b = self.block();
            // Relaxed (both): statistics for observers.
            b.buffers_out.fetch_add(1, Ordering::Relaxed);
            b.backlog.store(self.in_flight, Ordering::Relaxed);
        }
        self.notify_consumer();
        Ok(())
    }

    /// Publishes an event on the priority ring (overtakes data).
    ///
    /// # Errors
    /// As [`publish`](Self::publish); a full priority ring is an error.
    pub fn publish_priority(&mut self, d: Descriptor) -> Result<()> {
        self.check_consumer()?;
        let r = ring(&self.arena, self.id, RingKind::Priority);
        let place = || self.place.clone();
        if !self.priority.push(&r, d.encode(), &place)? {
            return Err(Error::Timeout(std::time::Duration::ZERO, "room in the priority ring"));
        }
        self.notify_consumer();
        Ok(())
    }

    /// Whether the data ring has room for a payload-free event.
    pub fn has_room(&self) -> bool {
        ring(&self.arena, self.id, RingKind::Data).len() < self.arena.config().ring_capacity as u64
    }

    /// Wakes the consumer if it is parked (no system call otherwise). Call after
    /// committing new bytes into a published segment.
    #[inline]
    pub fn notify_consumer(&self) {
        self.block().consumer_wake.notify();
    }

    /// Drains the credit ring: credits are added, returned segments go back to `pool`.
    /// Returns the number of entries taken.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a malformed entry, a segment the pool did not hand
    /// out, or more credit than the ring can carry.
    pub fn reclaim(&mut self, pool: &mut LocalBufferPool) -> Result<usize> {
        let r = ring(&self.arena, self.id, RingKind::Credit);
        let count = self.arena.segment_count();
        let cap = self.arena.config().ring_capacity;
        let mut n = 0;
        let place = self.place.clone();
        let place = || place.clone();
        while let Some(v) = self.credits_in.pop(&r, &place)? {
            n += 1;
            match Credit::decode(v, count, &place)? {
                Credit::Release(seg) => {
                    if self.in_flight == 0 {
                        return Err(Error::ProtocolViolation {
                            place: place(),
                            detail: "release with no segment in flight".into(),
                        });
                    }
                    self.in_flight -= 1;
                    self.credit += 1;
                    if let Some(s) = seg {
                        pool.recycle_index(s, Some(self.id).filter(|&c| c < pool.config().channels))?;
                    }
                }
                Credit::Grant(k) => {
                    self.credit = self.credit.saturating_add(k);
                }
            }
            if self.credit + self.in_flight > cap {
                return Err(Error::ProtocolViolation {
                    place: place(),
                    detail: format!(
                        "credit {} + in flight {} exceeds the ring capacity {cap}",
                        self.credit, self.in_flight
                    ),
                });
            }
        }
        if n > 0 {
            // Relaxed: statistic.
            self.block().backlog.store(self.in_flight, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn check_consumer(&self) -> Result<()> {
        // Relaxed: a status flag; acting on it late is fine.
        if self.block().state.load(Ordering::Relaxed) == CHANNEL_CONSUMER_GONE {
            return Err(Error::ConsumerGone { channel: self.id });
        }
        Ok(())
    }

    /// Marks the producer failed and wakes the consumer, so it stops with an error.
    pub fn fail(&self) {
        // Release: pairs with the Acquire load in `ChannelReader::poll`.
        self.block().state.store(CHANNEL_PRODUCER_FAILED, Ordering::Release);
        self.block().consumer_wake.notify_all_forced();
    }
}

impl RecycleSource for ChannelWriter {
    fn reclaim(&mut self, pool: &mut LocalBufferPool) -> Result<usize> {
        ChannelWriter::reclaim(self, pool)
    }

    fn wake(&self) -> &EventCount {
        &self.block().producer_wake
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
        if !self.ring.borrow_mut().push(&r, c.encode(), &place)? {
            return Err(Error::ProtocolViolation { place: place(), detail: "credit ring full".into() });
        }
        self.arena.channels()[self.id as usize].producer_wake.notify();
        Ok(())
    }

    /// Violations seen so far (reported by the reader's next poll).
    pub fn violations(&self) -> u32 {
        self.violations.get()
    }
}

impl ReleaseSink for CreditReturn {
    fn release(&self, segment: u32, last: bool, violation: bool) {
        if violation {
            self.violations.set(self.violations.get() + 1);
        }
        let b = &self.arena.channels()[self.id as usize];
        // Relaxed: statistic.
        b.buffers_in.fetch_add(1, Ordering::Relaxed);
        if self.send(Credit::Release(last.then_some(segment))).is_err() {
            self.violations.set(self.violations.get() + 1);
        }
    }
}

/// The consumer's end of a channel.
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
    /// Takes the consumer end of channel `id`.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an id out of range.
    pub fn open(arena: Arc<Arena>, id: u32) -> Result<Self> {
        check_id(&arena, id)?;
        let data = RingConsumer::attach(&ring(&arena, id, RingKind::Data));
        let priority = RingConsumer::attach(&ring(&arena, id, RingKind::Priority));
        let credit_ring = RingProducer::attach(&ring(&arena, id, RingKind::Credit));
        let credit_return = Rc::new(CreditReturn {
            arena: arena.clone(),
            id,
            ring: RefCell::new(credit_ring),
            violations: Cell::new(0),
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
        // Relaxed: statistic for observers.
        self.block().credit_granted.fetch_add(n, Ordering::Relaxed);
        self.credit_return.send(Credit::Grant(n))
    }

    /// The sink readers of this channel's segments report to.
    pub fn release_sink(&self) -> Rc<dyn ReleaseSink> {
        self.credit_return.clone()
    }

    /// Next descriptor, priority ring first; `Ok(None)` when both are empty.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a malformed descriptor or ring state;
    /// [`Error::ProducerFailed`] if the producer failed and nothing is left to read.
    pub fn poll(&mut self) -> Result<Option<Descriptor>> {
        let count = self.arena.segment_count();
        let place = self.place.clone();
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        if let Some(v) = self.priority.pop(&pr, &place)? {
            return Descriptor::decode(v, count, &place).map(Some);
        }
        let r = ring(&self.arena, self.id, RingKind::Data);
        if let Some(v) = self.data.pop(&r, &place)? {
            return Descriptor::decode(v, count, &place).map(Some);
        }
        if self.credit_return.violations() > 0 {
            return Err(Error::ProtocolViolation {
                place: place(),
                detail: format!("{} bad segment releases or credit-ring failures", self.credit_return.violations()),
            });
        }
        // Acquire: pairs with the Release store in `ChannelWriter::fail`.
        if self.block().state.load(Ordering::Acquire) == CHANNEL_PRODUCER_FAILED {
            return Err(Error::ProducerFailed { channel: self.id });
        }
        Ok(None)
    }

    /// Whether a descriptor is waiting (does not consume it).
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn has_next(&mut self) -> Result<bool> {
        let place = self.place.clone();
        let place = || place.clone();
        let pr = ring(&self.arena, self.id, RingKind::Priority);
        let r = ring(&self.arena, self.id, RingKind::Data);
        Ok(self.priority.has_next(&pr, &place)? || self.data.has_next(&r, &place)?)
    }

    /// A reader for segment `segment` (from a validated descriptor).
    pub fn consumer(&self, segment: u32) -> BufferConsumer {
        BufferConsumer::new(self.arena.clone(), segment, self.release_sink(), self.id)
    }

    /// Tells the producer this consumer is gone.
    pub fn close(&self) {
        // Relaxed: a status flag; the producer's wake-up below makes it look.
        self.block().state.store(CHANNEL_CONSUMER_GONE, Ordering::Relaxed);
        self.block().producer_wake.notify_all_forced();
    }

    /// The wake-up this reader parks on when it has no gate.
    pub fn wake(&self) -> &EventCount {
        &self.block().consumer_wake
    }
}
