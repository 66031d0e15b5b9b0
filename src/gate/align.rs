//! Checkpoint barrier alignment (Flink's barrier handler, kept out of the gate's
//! scheduling): an aligned barrier blocks each channel it arrives on until it arrived on
//! every live channel; an unaligned barrier overtakes the data queued before it, which is
//! reported as [`Overtaken`] ranges (the channel state a checkpoint persists).
//!
//! ```text
//!  barrier n on channel c:  n older than the one aligning  -> ignored (stale)
//!                           n newer (or none aligning)      -> abort the old alignment
//!                                                              (unblock its channels), start n
//!                           then: block c, count it; once the count reaches the live
//!                           channels, the gate unblocks them all and hands out Barrier(n)
//!  EndOfPartition on a channel lowers "live", so it can complete an alignment too
//! ```
//!
//! State ([`BarrierAligner`]): the barrier being aligned and how many channels it arrived
//! on. Which channels are blocked is the channels' own state in the gate.

use crate::error::Result;
use crate::event::CheckpointBarrier;
use crate::memory::Arena;
use crate::record::RecordReader;
use crate::ring::Descriptor;
use crate::sync::Ordering;

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

/// What an aligned barrier arriving on a channel means for the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Older than the barrier being aligned: ignore it.
    Stale,
    /// Counted; `restart` when it began a new alignment (the channels blocked by the one
    /// it replaced must be unblocked).
    Counted {
        /// A new alignment began.
        restart: bool,
    },
}

/// The alignment in progress.
#[derive(Debug, Default)]
pub(super) struct BarrierAligner {
    /// The barrier being aligned and how many channels it arrived on.
    aligning: Option<(CheckpointBarrier, u32)>,
}

impl BarrierAligner {
    /// Counts barrier `b`'s arrival on one channel (the caller blocks that channel unless
    /// it is [`Arrival::Stale`]).
    pub(super) fn arrive(&mut self, b: CheckpointBarrier) -> Arrival {
        let restart = match self.aligning {
            Some((cur, _)) if cur.checkpoint_id > b.checkpoint_id => return Arrival::Stale,
            Some((cur, _)) if cur.checkpoint_id == b.checkpoint_id => false,
            _ => {
                self.aligning = Some((b, 0));
                true
            }
        };
        if let Some((_, n)) = self.aligning.as_mut() {
            *n += 1;
        }
        Arrival::Counted { restart }
    }

    /// The aligned barrier once it arrived on at least `live` channels (the alignment
    /// ends; the caller unblocks the channels).
    pub(super) fn complete(&mut self, live: u32) -> Option<CheckpointBarrier> {
        match self.aligning {
            Some((b, n)) if n >= live => {
                self.aligning = None;
                Some(b)
            }
            _ => None,
        }
    }
}

/// What an unaligned barrier on channel `c` (read by `reader`) overtook: the unread rest
/// of the current segment and every segment queued in the data ring.
pub(super) fn overtaken(arena: &Arena, c: u32, reader: &mut RecordReader) -> Result<Vec<Overtaken>> {
    let mut out = Vec::new();
    if let Some((segment, from, to)) = reader.unread_in_current()? {
        if to > from {
            out.push(Overtaken { channel: c, segment, from, to });
        }
    }
    for d in reader.channel_mut().queued_data()? {
        if let Descriptor::Buffer(s) = d {
            let ctl = arena.control(s, || format!("channel {c}"))?;
            // Acquire: pairs with the writer's Release commit (we report what is there).
            let to = ctl.position.load(Ordering::Acquire) & crate::memory::POSITION_MASK;
            out.push(Overtaken { channel: c, segment: s, from: 0, to: to.min(arena.segment_size()) });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier { checkpoint_id: id, timestamp: 0, unaligned: false }
    }

    #[test]
    fn a_barrier_completes_once_it_arrived_on_every_live_channel() {
        let mut a = BarrierAligner::default();
        assert_eq!(a.arrive(barrier(1)), Arrival::Counted { restart: true });
        assert_eq!(a.complete(3), None);
        assert_eq!(a.arrive(barrier(1)), Arrival::Counted { restart: false });
        assert_eq!(a.complete(3), None);
        // A channel ended: two live channels, both have the barrier.
        assert_eq!(a.complete(2), Some(barrier(1)));
        assert_eq!(a.complete(0), None, "the alignment ended");
    }

    #[test]
    fn a_newer_barrier_restarts_the_alignment_and_an_older_one_is_stale() {
        let mut a = BarrierAligner::default();
        a.arrive(barrier(5));
        assert_eq!(a.arrive(barrier(4)), Arrival::Stale);
        assert_eq!(a.arrive(barrier(6)), Arrival::Counted { restart: true });
        assert_eq!(a.complete(2), None, "barrier 6 arrived once, barrier 5's count is gone");
        a.arrive(barrier(6));
        assert_eq!(a.complete(2), Some(barrier(6)));
    }
}
