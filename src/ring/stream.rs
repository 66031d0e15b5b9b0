//! A slot-framed record stream over one channel: the smallest complete use of the
//! foundation (pool, builder, rings, credits, wake-ups), used by the two-process demo, the
//! foundation tests and the latency benchmark. The network stack's RecordWriter and
//! InputGate generalize it to many channels and records that span segments.
//!
//! Wire format inside a segment: slot-framed records (defined in [`crate::record::frame`];
//! the publication protocol is `crate::buffer::builder`'s):
//! `[slot: u32 = len | SLOT_VALID][payload: len bytes][pad to 4]`. The writer publishes
//! each record by storing its slot (Release) and the reader polls the slot at its read
//! position, so a record is visible as soon as it is written, and a spinning reader waits
//! on the record's own cache line rather than on the segment's position word.
//! Records never span segments here, so a payload is at most `segment_size - 4` bytes.

use super::channel::{ChannelReader, ChannelWriter};
use super::descriptor::{Descriptor, EventCode};
use crate::buffer::{BufferBuilder, BufferConsumer, LocalBufferPool, LocalPoolConfig};
use crate::error::{ConfigError, Error, Result};
use crate::memory::Arena;
use crate::record::frame::slot_framed_len;
use crate::sync::{WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of the slot in front of each record (defined in [`crate::record::frame`]).
pub use crate::record::frame::LEN_PREFIX;

/// The producer end of a record stream.
///
/// Dropping it without [`StreamWriter::finish`] leaves the stream without its end (the
/// reader waits until its timeout); the pool's free segments go back to the arena.
pub struct StreamWriter {
    pool: LocalBufferPool,
    channel: ChannelWriter,
    builder: Option<BufferBuilder>,
    waiter: Waiter,
    timeout: Option<Duration>,
    /// Segments published so far.
    pub segments: u64,
    /// The most segments in flight at once that this writer observed.
    pub max_in_flight: u32,
    /// Position in the open segment at the last flush.
    flushed: u32,
}

impl StreamWriter {
    /// Opens channel `channel` for writing with a pool of `pool_max` segments (pool id =
    /// channel id). `timeout` bounds every wait (None: wait forever).
    ///
    /// # Errors
    /// Arena or pool errors.
    pub fn new(
        arena: Arc<Arena>,
        channel: u32,
        pool_max: u32,
        policy: WaitPolicy,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        let pool = LocalBufferPool::new(
            arena.clone(),
            channel,
            0,
            LocalPoolConfig { min: 1, max: pool_max, max_per_channel: pool_max, channels: 1 },
        )?;
        let channel = ChannelWriter::open(arena, channel)?;
        Ok(Self {
            pool,
            channel,
            builder: None,
            waiter: Waiter::new(policy),
            timeout,
            segments: 0,
            max_in_flight: 0,
            flushed: 0,
        })
    }

    /// The pool (for its usage and back-pressured time).
    pub fn pool(&self) -> &LocalBufferPool {
        &self.pool
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelWriter {
        &self.channel
    }

    /// How often the writer parked.
    pub fn parks(&self) -> u64 {
        self.waiter.parks
    }

    fn next_builder(&mut self) -> Result<()> {
        let start = crate::sync::now_nanos();
        let (pool, channel) = (&mut self.pool, &mut self.channel);
        let wake: *const crate::sync::EventCount = &*channel.block().producer_wake;
        // SAFETY: the event count lives in the arena, which `channel` keeps alive for the
        // whole call; it is only read through atomics.
        let wake = unsafe { &*wake };
        let outcome = self.waiter.wait(wake, self.timeout, || {
            let r = (|| -> Result<Option<_>> {
                channel.reclaim(pool)?;
                if !channel.reserve_credit() {
                    return Ok(None);
                }
                pool.request(Some(0))
            })();
            r.transpose()
        });
        let waited = crate::sync::now_nanos().saturating_sub(start);
        if waited > 0 {
            self.pool.blocked_ns += waited;
        }
        let seg = match outcome {
            WaitOutcome::Ready(r) => r?,
            WaitOutcome::TimedOut => {
                return Err(Error::Timeout(self.timeout.unwrap_or_default(), "credit and a free segment"))
            }
        };
        let b = BufferBuilder::new(seg, 1);
        // The reader polls this slot first: clear what a previous use left there.
        b.clear_first_slot();
        self.channel.publish(Descriptor::Buffer(b.index()))?;
        self.segments += 1;
        self.max_in_flight = self.max_in_flight.max(self.channel.in_flight());
        self.builder = Some(b);
        self.flushed = 0;
        Ok(())
    }

    /// Writes one record. A reader that polls sees it at once; [`flush`](Self::flush)
    /// wakes a reader that parked.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a payload above `segment_size - 4`; wait errors.
    pub fn write(&mut self, payload: &[u8]) -> Result<()> {
        self.write_with(payload.len(), |dst| dst.copy_from_slice(payload))
    }

    /// Writes a record of `len` bytes that `fill` produces straight into the segment (no
    /// staging copy): `fill` gets exactly `len` bytes of shared memory, and the record is
    /// published when it returns. Whatever `fill` leaves in them is the record.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for `len` above `segment_size - 4`; wait errors.
    pub fn write_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        let size = self.pool.arena().segment_size() as usize;
        if len + LEN_PREFIX > size {
            return Err(Error::TooLarge { what: "record", len, max: size - LEN_PREFIX });
        }
        let need = slot_framed_len(len);
        if self.builder.as_ref().is_some_and(|b| (b.remaining() as usize) < need) {
            self.end_segment()?;
        }
        if self.builder.is_none() {
            self.next_builder()?;
        }
        let b = self.builder.as_mut().expect("builder present");
        let written = b.write_slotted(len, fill);
        debug_assert!(written, "a fresh segment holds any record up to segment_size - 4");
        if (b.remaining() as usize) < slot_framed_len(0) {
            self.end_segment()?;
        }
        Ok(())
    }

    fn end_segment(&mut self) -> Result<()> {
        if let Some(mut b) = self.builder.take() {
            b.finish();
            self.channel.notify_consumer()?;
        }
        Ok(())
    }

    /// Wakes the reader if it sleeps and something was written since the last flush
    /// (records are visible to a polling reader as soon as they are written).
    ///
    /// # Errors
    /// A consumer that wrote a bad gate id into the channel block.
    pub fn flush(&mut self) -> Result<()> {
        // No commit of the segment's position: the reader polls the records' slots, and a
        // position store per flush would move the position word's cache line to the reader
        // and back on every record. The position is stored once, when the segment ends.
        if let Some(b) = self.builder.as_mut() {
            if b.position() != self.flushed {
                self.flushed = b.position();
                b.note_flush();
                self.channel.notify_consumer()?;
            }
        }
        Ok(())
    }

    /// Ends the stream: finishes the open segment and sends EndOfPartition.
    ///
    /// # Errors
    /// Wait errors while the data ring is full.
    pub fn finish(&mut self) -> Result<()> {
        self.end_segment()?;
        let wake: *const crate::sync::EventCount = &*self.channel.block().producer_wake;
        // SAFETY: as in `next_builder`.
        let wake = unsafe { &*wake };
        let (pool, channel) = (&mut self.pool, &mut self.channel);
        let r = self.waiter.wait(wake, self.timeout, || match channel.reclaim(pool) {
            Err(e) => Some(Err(e)),
            Ok(_) if channel.has_room(1) => Some(channel.publish(Descriptor::Event(EventCode::EndOfPartition))),
            Ok(_) => None,
        });
        match r {
            WaitOutcome::Ready(r) => r,
            WaitOutcome::TimedOut => Err(Error::Timeout(self.timeout.unwrap_or_default(), "room for EndOfPartition")),
        }
    }

    /// Takes back every segment the reader released (call before dropping the writer if
    /// the segments should return to the network pool at once).
    ///
    /// # Errors
    /// Protocol violations on the credit ring.
    pub fn reclaim(&mut self) -> Result<usize> {
        self.channel.reclaim(&mut self.pool)
    }
}

/// The consumer end of a record stream.
///
/// Dropping it releases the segment it was reading; the channel is not closed.
pub struct StreamReader {
    channel: ChannelReader,
    current: Option<BufferConsumer>,
    waiter: Waiter,
    ended: bool,
}

impl StreamReader {
    /// Opens channel `channel` for reading and grants `credit` segments to the writer.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for a credit of 0 or not below the ring capacity; arena
    /// errors.
    pub fn new(arena: Arc<Arena>, channel: u32, credit: u32, policy: WaitPolicy) -> Result<Self> {
        let cap = arena.config().ring_capacity;
        ConfigError::check_range("credit (at most the ring capacity - 1)", credit.into(), 1, i64::from(cap) - 1)?;
        let channel = ChannelReader::open(arena, channel)?;
        channel.grant(credit)?;
        Ok(Self { channel, current: None, waiter: Waiter::new(policy), ended: false })
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelReader {
        &self.channel
    }

    /// How often the reader parked.
    pub fn parks(&self) -> u64 {
        self.waiter.parks
    }

    /// Tries to read one record without waiting: `Ok(Some(Some(r)))` a record,
    /// `Ok(Some(None))` the end of the stream, `Ok(None)` nothing yet.
    ///
    /// # Errors
    /// Protocol violations (malformed record, descriptor or ring), a failed producer.
    pub fn try_next<R>(&mut self, f: &mut impl FnMut(&[u8]) -> R) -> Result<Option<Option<R>>> {
        loop {
            if self.ended {
                return Ok(Some(None));
            }
            if let Some(c) = self.current.as_mut() {
                // The record's second line is asked for together with its slot's line, so a
                // record that straddles two lines crosses cores in one trip, not two.
                c.prefetch_unread();
                if let Some(r) = Self::take_slotted(c, f)? {
                    return Ok(Some(Some(r)));
                }
                match c.finished_at()? {
                    Some(end) if end == c.read_position() => {
                        self.current = None; // releases the segment: a credit goes back
                        continue;
                    }
                    Some(end) if end > c.read_position() => {
                        // Finished after a record we had not seen yet: its slot is
                        // visible now (it was stored before the finish).
                        if let Some(r) = Self::take_slotted(c, f)? {
                            return Ok(Some(Some(r)));
                        }
                        return Err(Error::ProtocolViolation {
                            place: format!("channel {}", self.channel.id()),
                            detail: format!(
                                "segment {} ends at {end} with no record at {}",
                                c.index(),
                                c.read_position()
                            ),
                        });
                    }
                    Some(end) => {
                        return Err(Error::ProtocolViolation {
                            place: format!("channel {}", self.channel.id()),
                            detail: format!("segment {} ends at {end}, below what was read", c.index()),
                        });
                    }
                    None => return Ok(None),
                }
            }
            match self.channel.poll()? {
                Some(Descriptor::Buffer(s)) => self.current = Some(self.channel.consumer(s)),
                Some(Descriptor::Event(EventCode::EndOfPartition)) => {
                    self.ended = true;
                }
                Some(Descriptor::Event(EventCode::ProducerFailed)) => {
                    return Err(Error::ProducerFailed { channel: self.channel.id() })
                }
                Some(d) => {
                    return Err(Error::ProtocolViolation {
                        place: format!("channel {}", self.channel.id()),
                        detail: format!("unexpected {d:?} in a record stream"),
                    })
                }
                None => return Ok(None),
            }
        }
    }

    /// Hands the record at `c`'s read position to `f` if its slot is published, and
    /// moves past it.
    fn take_slotted<R>(c: &mut BufferConsumer, f: &mut impl FnMut(&[u8]) -> R) -> Result<Option<R>> {
        let Some(payload) = c.slot_record()? else {
            return Ok(None);
        };
        let n = slot_framed_len(payload.len()) as u32;
        let r = f(payload);
        c.consume(n);
        Ok(Some(r))
    }

    /// Reads the next record, waiting by the policy: `Ok(Some(r))` with `f`'s result on the
    /// payload (borrowed in place from shared memory), `Ok(None)` at the end of the stream.
    ///
    /// # Errors
    /// As [`try_next`](Self::try_next), plus [`Error::Timeout`].
    pub fn next<R>(&mut self, timeout: Option<Duration>, mut f: impl FnMut(&[u8]) -> R) -> Result<Option<R>> {
        if let Some(r) = self.try_next(&mut f)? {
            return Ok(r);
        }
        let wake: *const crate::sync::EventCount = self.channel.wake();
        // SAFETY: the event count lives in the arena, kept alive by `self.channel`.
        let wake = unsafe { &*wake };
        let mut waiter = std::mem::replace(&mut self.waiter, Waiter::new(WaitPolicy::park()));
        let out = waiter.wait(wake, timeout, || self.try_next(&mut f).transpose());
        self.waiter = waiter;
        match out {
            WaitOutcome::Ready(r) => r,
            WaitOutcome::TimedOut => Err(Error::Timeout(timeout.unwrap_or_default(), "a record")),
        }
    }
}
