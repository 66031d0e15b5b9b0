//! What travels in the rings: 64-bit descriptors (producer to consumer) and credits
//! (consumer to producer), packed field by field and validated on decode.
//!
//! ```text
//!  Descriptor: [ kind : 8 | arg : 24 | segment : 32 ]
//!    kind 1  Buffer      segment = data segment index
//!    kind 2  EventBuffer segment = segment holding a serialized event
//!    kind 3  Event       arg = EventCode (no payload), segment = 0
//!  Credit:     [ kind : 8 | count : 24 | segment + 1 : 32 ]
//!    kind 1  Release     one credit back; segment + 1 != 0: that segment is free again
//!    kind 2  Grant       count more credits (initial / floating)
//! ```

use crate::error::{Error, Result};

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

/// A data-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// A data segment to read.
    Buffer(u32),
    /// A segment holding one serialized event.
    EventBuffer(u32),
    /// A payload-free event.
    Event(EventCode),
}

impl Descriptor {
    /// Packs.
    pub fn encode(self) -> u64 {
        match self {
            Descriptor::Buffer(s) => (1 << 56) | u64::from(s),
            Descriptor::EventBuffer(s) => (2 << 56) | u64::from(s),
            Descriptor::Event(e) => (3 << 56) | ((e as u64) << 32),
        }
    }

    /// Unpacks and validates a value read from shared memory.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] naming `place` for an unknown kind or event, a segment
    /// index `>= segment_count`, or stray bits.
    pub fn decode(v: u64, segment_count: u32, place: &dyn Fn() -> String) -> Result<Self> {
        let bad = |d: String| Error::ProtocolViolation { place: place(), detail: d };
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
            _ => Err(bad(format!("unknown descriptor kind {kind} in {v:#x}"))),
        }
    }
}

/// A credit-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// One credit back, with the segment when this reader was its last.
    Release(Option<u32>),
    /// More credits (initial exclusive credits, floating credits).
    Grant(u32),
}

impl Credit {
    /// Packs.
    pub fn encode(self) -> u64 {
        match self {
            Credit::Release(s) => (1 << 56) | s.map_or(0, |s| u64::from(s) + 1),
            Credit::Grant(n) => (2 << 56) | (u64::from(n & 0xff_ffff) << 32),
        }
    }

    /// Unpacks and validates a value read from shared memory.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an unknown kind, a segment out of range, or a
    /// grant of zero or stray bits.
    pub fn decode(v: u64, segment_count: u32, place: &dyn Fn() -> String) -> Result<Self> {
        let bad = |d: String| Error::ProtocolViolation { place: place(), detail: d };
        let count = ((v >> 32) & 0xff_ffff) as u32;
        let low = v as u32;
        match v >> 56 {
            1 if count == 0 => {
                if low == 0 {
                    Ok(Credit::Release(None))
                } else if low - 1 < segment_count {
                    Ok(Credit::Release(Some(low - 1)))
                } else {
                    Err(bad(format!("credit returns segment {}, outside 0..{segment_count}", low - 1)))
                }
            }
            2 if low == 0 && count > 0 => Ok(Credit::Grant(count)),
            _ => Err(bad(format!("malformed credit {v:#x}"))),
        }
    }
}
