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

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> String {
        "channel 3".into()
    }

    fn round_trip(d: Descriptor, segments: u32) -> Descriptor {
        let (slots, n) = d.encode_slots();
        assert_eq!(Descriptor::slots_for_header(slots[0]), n, "{d:?}");
        if n == 3 {
            Descriptor::decode_barrier(slots, &place).unwrap()
        } else {
            Descriptor::decode(slots[0], segments, &place).unwrap()
        }
    }

    #[test]
    fn every_descriptor_round_trips_including_the_last_segment() {
        let max_seg = u32::MAX - 1;
        for d in [
            Descriptor::Buffer(0),
            Descriptor::Buffer(max_seg),
            Descriptor::EventBuffer(0),
            Descriptor::EventBuffer(max_seg),
            Descriptor::Event(EventCode::EndOfPartition),
            Descriptor::Event(EventCode::EndOfData),
            Descriptor::Event(EventCode::ProducerFailed),
            Descriptor::Barrier(BarrierDescriptor { checkpoint_id: 0, timestamp: 0, unaligned: false }),
            Descriptor::Barrier(BarrierDescriptor { checkpoint_id: u64::MAX, timestamp: u64::MAX, unaligned: true }),
        ] {
            assert_eq!(round_trip(d, u32::MAX), d);
        }
    }

    #[test]
    fn the_packed_fields_sit_where_the_diagram_says() {
        assert_eq!(Descriptor::Buffer(7).encode(), (1 << 56) | 7);
        assert_eq!(Descriptor::EventBuffer(7).encode(), (2 << 56) | 7);
        assert_eq!(Descriptor::Event(EventCode::EndOfData).encode(), (3 << 56) | (2 << 32));
        let b = BarrierDescriptor { checkpoint_id: 11, timestamp: 12, unaligned: true };
        assert_eq!(Descriptor::Barrier(b).encode_slots(), ([(4 << 56) | (1 << 32), 11, 12], 3));
    }

    #[test]
    fn a_segment_at_or_past_the_count_is_refused() {
        let v = Descriptor::decode(Descriptor::Buffer(8).encode(), 8, &place).unwrap_err();
        assert_eq!(v.place, "channel 3");
        assert_eq!(v.detail, "descriptor names segment 8, outside 0..8");
        assert!(Descriptor::decode(Descriptor::EventBuffer(u32::MAX).encode(), 8, &place).is_err());
        assert_eq!(Descriptor::decode(Descriptor::Buffer(7).encode(), 8, &place).unwrap(), Descriptor::Buffer(7));
        assert!(Descriptor::decode(Descriptor::Buffer(0).encode(), 0, &place).is_err(), "no segments at all");
    }

    #[test]
    fn malformed_words_from_a_peer_are_violations_not_panics() {
        for (v, why) in [
            (0, "unknown descriptor kind 0"),
            (u64::MAX, "unknown descriptor kind 255"),
            ((1 << 56) | (1 << 32) | 2, "has stray bits"),
            ((3 << 56) | (1 << 32) | 1, "event descriptor"),
            ((3 << 56) | (9 << 32), "unknown event code 9"),
            (4 << 56, "must be decoded with its two payload slots"),
        ] {
            let e = Descriptor::decode(v, 16, &place).unwrap_err();
            assert!(e.detail.contains(why), "{v:#x}: {e}");
        }
    }

    #[test]
    fn a_barrier_header_with_stray_bits_or_another_kind_is_refused() {
        for h in [(4 << 56) | (2 << 32), (4 << 56) | 1, (1 << 56) | 1, (4 << 56) | (0xff_ffff << 32)] {
            let e = Descriptor::decode_barrier([h, 1, 2], &place).unwrap_err();
            assert!(e.detail.contains("malformed barrier header"), "{h:#x}: {e}");
        }
    }

    #[test]
    fn every_credit_round_trips() {
        for c in [
            Credit::Release { segment: None, credit: false, last: false },
            Credit::Release { segment: Some(0), credit: true, last: false },
            Credit::Release { segment: Some(9), credit: false, last: true },
            Credit::Release { segment: Some(9), credit: true, last: true },
            Credit::Grant(1),
            Credit::Grant(0xff_ffff),
        ] {
            assert_eq!(Credit::decode(c.encode(), 10, &place).unwrap(), c);
        }
    }

    #[test]
    fn a_grant_above_24_bits_is_cut_and_a_cut_to_zero_is_refused() {
        assert_eq!(Credit::decode(Credit::Grant(0x0100_0002).encode(), 1, &place).unwrap(), Credit::Grant(2));
        let e = Credit::decode(Credit::Grant(0x0100_0000).encode(), 1, &place).unwrap_err();
        assert!(e.detail.contains("malformed credit"), "{e}");
    }

    #[test]
    fn malformed_credits_from_a_peer_are_violations_not_panics() {
        let release = |seg: Option<u32>| Credit::Release { segment: seg, credit: true, last: false }.encode();
        let e = Credit::decode(release(Some(10)), 10, &place).unwrap_err();
        assert_eq!(e.detail, "credit returns segment 10, outside 0..10");
        for v in [
            0,
            u64::MAX,
            (1 << 56) | (4 << 32),
            (2 << 56) | (1 << 32) | 5,
            2 << 56,
            (3 << 56) | (1 << 32),
            release(Some(u32::MAX - 1)),
        ] {
            assert!(Credit::decode(v, 10, &place).is_err(), "{v:#x}");
        }
    }
}
