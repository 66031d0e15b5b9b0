//! What travels in the rings: 64-bit descriptors (producer to consumer) and credits
//! (consumer to producer), packed field by field and validated on decode.
//!
//! ```text
//!  Descriptor: [ kind : 8 | arg : 24 | segment : 32 ]
//!    kind 1  Buffer      segment = data segment index
//!    kind 2  EventBuffer segment = segment holding a serialized event
//!    kind 3  Event       arg = EventCode (no payload), segment = 0
//!    kind 4  Barrier     arg bit 0 = unaligned; the next two slots hold the checkpoint id
//!                        and the timestamp (pushed and published together)
//!  Credit:     [ kind : 8 | count : 24 | segment + 1 : 32 ]
//!    kind 1  Release     count bit 0: a credit back (0 revokes a floating credit);
//!                        count bit 1: this reader was the segment's last (its refcount
//!                        reached zero); segment + 1: the segment this channel's reader
//!                        released (0: none, refused by the producer)
//!    kind 2  Grant       count more credits (initial / floating)
//! ```

use crate::error::Violation;

/// Events small enough to travel inside a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCode {
    /// The producer finished the partition: nothing more will come.
    EndOfPartition = 1,
    /// The producer's input ended (Flink's EndOfData); more events may follow.
    EndOfData = 2,
    /// The producer failed; the consumer must stop with an error.
    ProducerFailed = 3,
}

/// A checkpoint barrier as it travels in a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarrierDescriptor {
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// Timestamp (ns since the epoch, or any clock the job uses).
    pub timestamp: u64,
    /// Unaligned: travels on the priority ring and overtakes data.
    pub unaligned: bool,
}

/// A data-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// A data segment to read.
    Buffer(u32),
    /// A segment holding one serialized event.
    EventBuffer(u32),
    /// A payload-free event.
    Event(EventCode),
    /// A checkpoint barrier (three slots).
    Barrier(BarrierDescriptor),
}

/// Kind code of the barrier header slot.
pub const BARRIER_KIND: u64 = 4;

impl Descriptor {
    /// Packs into ring slots; returns the slots and how many are used (1 or 3).
    pub fn encode_slots(self) -> ([u64; 3], usize) {
        match self {
            Descriptor::Barrier(b) => {
                ([(BARRIER_KIND << 56) | (u64::from(b.unaligned) << 32), b.checkpoint_id, b.timestamp], 3)
            }
            d => ([d.encode(), 0, 0], 1),
        }
    }

    /// Packs a one-slot descriptor (a barrier's header slot only).
    pub fn encode(self) -> u64 {
        match self {
            Descriptor::Buffer(s) => (1 << 56) | u64::from(s),
            Descriptor::EventBuffer(s) => (2 << 56) | u64::from(s),
            Descriptor::Event(e) => (3 << 56) | ((e as u64) << 32),
            Descriptor::Barrier(b) => (BARRIER_KIND << 56) | (u64::from(b.unaligned) << 32),
        }
    }

    /// Slots this descriptor's header announces (1, or 3 for a barrier).
    pub fn slots_for_header(v: u64) -> usize {
        if v >> 56 == BARRIER_KIND {
            3
        } else {
            1
        }
    }

    /// Unpacks a barrier from its three slots.
    ///
    /// # Errors
    /// [`Violation`] for another kind or stray bits in the header.
    pub fn decode_barrier(slots: [u64; 3], place: &dyn Fn() -> String) -> Result<Self, Violation> {
        let h = slots[0];
        let flags = (h >> 32) & 0xff_ffff;
        if h >> 56 != BARRIER_KIND || flags > 1 || h as u32 != 0 {
            return Err(Violation { place: place(), detail: format!("malformed barrier header {h:#x}") });
        }
        Ok(Descriptor::Barrier(BarrierDescriptor {
            checkpoint_id: slots[1],
            timestamp: slots[2],
            unaligned: flags == 1,
        }))
    }

    /// Unpacks and validates a value read from shared memory.
    ///
    /// # Errors
    /// [`Violation`] naming `place` for an unknown kind or event, a segment index
    /// `>= segment_count`, or stray bits.
    pub fn decode(v: u64, segment_count: u32, place: &dyn Fn() -> String) -> Result<Self, Violation> {
        let bad = |d: String| Violation { place: place(), detail: d };
        let kind = v >> 56;
        let arg = ((v >> 32) & 0xff_ffff) as u32;
        let seg = v as u32;
        match kind {
            1 | 2 => {
                if arg != 0 {
                    return Err(bad(format!("descriptor {v:#x} has stray bits")));
                }
                if seg >= segment_count {
                    return Err(bad(format!("descriptor names segment {seg}, outside 0..{segment_count}")));
                }
                Ok(if kind == 1 { Descriptor::Buffer(seg) } else { Descriptor::EventBuffer(seg) })
            }
            3 => {
                if seg != 0 {
                    return Err(bad(format!("event descriptor {v:#x} has stray bits")));
                }
                Ok(Descriptor::Event(match arg {
                    1 => EventCode::EndOfPartition,
                    2 => EventCode::EndOfData,
                    3 => EventCode::ProducerFailed,
                    _ => return Err(bad(format!("unknown event code {arg}"))),
                }))
            }
            BARRIER_KIND => Err(bad("a barrier header must be decoded with its two payload slots".into())),
            _ => Err(bad(format!("unknown descriptor kind {kind} in {v:#x}"))),
        }
    }
}

/// A credit-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// A reader released a segment: one credit back (unless a floating credit is revoked
    /// with it), with the segment when this reader was its last.
    Release {
        /// The segment this channel's reader released.
        segment: Option<u32>,
        /// Whether the credit is given back (false: a floating credit returns to the gate).
        credit: bool,
        /// Whether the reader's decrement took the segment's refcount to zero.
        last: bool,
    },
    /// More credits (initial exclusive credits, floating credits).
    Grant(u32),
}

impl Credit {
    /// Packs.
    pub fn encode(self) -> u64 {
        match self {
            Credit::Release { segment, credit, last } => {
                (1 << 56)
                    | (u64::from(credit) << 32)
                    | (u64::from(last) << 33)
                    | segment.map_or(0, |s| u64::from(s) + 1)
            }
            Credit::Grant(n) => (2 << 56) | (u64::from(n & 0xff_ffff) << 32),
        }
    }

    /// Unpacks and validates a value read from shared memory.
    ///
    /// # Errors
    /// [`Violation`] for an unknown kind, a segment out of range, or a grant of zero or
    /// stray bits.
    pub fn decode(v: u64, segment_count: u32, place: &dyn Fn() -> String) -> Result<Self, Violation> {
        let bad = |d: String| Violation { place: place(), detail: d };
        let count = ((v >> 32) & 0xff_ffff) as u32;
        let low = v as u32;
        match v >> 56 {
            1 if count <= 3 => {
                let (credit, last) = (count & 1 != 0, count & 2 != 0);
                if low == 0 {
                    Ok(Credit::Release { segment: None, credit, last })
                } else if low - 1 < segment_count {
                    Ok(Credit::Release { segment: Some(low - 1), credit, last })
                } else {
                    Err(bad(format!("credit returns segment {}, outside 0..{segment_count}", low - 1)))
                }
            }
            2 if low == 0 && count > 0 => Ok(Credit::Grant(count)),
            _ => Err(bad(format!("malformed credit {v:#x}"))),
        }
    }
}
