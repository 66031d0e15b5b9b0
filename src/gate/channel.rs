//! The gate's input channels: what each one reads and how it is requested.
//!
//! ```text
//!  InputChannel { state, queued, end_of_data, served, kind }
//!    kind = Local(LocalChannel)   a pipelined subpartition in shared memory: the partition
//!                                 request is `attach_consumer` (look the partition up with
//!                                 backoff, claim the channel block's consumer side), then
//!                                 records are read in place by a RecordReader
//!  state: Active -> (aligned barrier) Blocked -> Active ... -> Finished (EndOfPartition)
//! ```
//!
//! Scheduling (`queued`, `served`) belongs to the gate, which keeps the ready queue; the
//! channel only records whether it is in it.

use super::single::InputSpec;
use crate::error::{Error, Result};
use crate::memory::liveness;
use crate::memory::Arena;
use crate::partition::{RequestBackoff, ResultPartitionManager};
use crate::record::{RecordChunks, RecordReader};
use crate::sync::Ordering;
use std::time::Duration;

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    /// Served.
    Active,
    /// An aligned barrier arrived here; not served until the alignment completes.
    Blocked,
    /// EndOfPartition read: nothing more will come.
    Finished,
}

/// A channel reading a pipelined subpartition in shared memory.
pub(super) struct LocalChannel {
    /// Reads the records of the channel block in place.
    pub(super) reader: RecordReader,
    /// Records read when its producer was last seen dead, and how many looks since.
    pub(super) dead_progress: u64,
    pub(super) dead_looks: u32,
}

/// What a channel reads.
pub(super) enum ChannelKind {
    /// Shared memory (pipelined partitions).
    Local(LocalChannel),
}

/// One channel of a gate.
pub(super) struct InputChannel {
    pub(super) state: ChannelState,
    /// In the gate's ready queue.
    pub(super) queued: bool,
    /// EndOfData read.
    pub(super) end_of_data: bool,
    /// Records served in the current batch (fairness).
    pub(super) served: u32,
    pub(super) kind: ChannelKind,
}

impl InputChannel {
    /// A channel over `kind`, queued for its first look.
    pub(super) fn new(kind: ChannelKind) -> Self {
        Self { state: ChannelState::Active, queued: true, end_of_data: false, served: 0, kind }
    }

    /// The shared-memory channel, if this is one.
    #[inline]
    pub(super) fn local(&self) -> Option<&LocalChannel> {
        match &self.kind {
            ChannelKind::Local(l) => Some(l),
        }
    }

    /// The shared-memory channel, mutably, if this is one.
    #[inline]
    pub(super) fn local_mut(&mut self) -> Option<&mut LocalChannel> {
        match &mut self.kind {
            ChannelKind::Local(l) => Some(l),
        }
    }

    /// Records read so far.
    pub(super) fn records(&self) -> u64 {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.records,
        }
    }

    /// Payload bytes read so far.
    pub(super) fn bytes(&self) -> u64 {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.bytes,
        }
    }

    /// The record the last fast poll found (in one segment, in place).
    #[inline]
    pub(super) fn record(&self) -> &[u8] {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.record(),
        }
    }

    /// The record the last poll found, in one slice (a local record read in place across
    /// segments is copied here, once).
    #[inline]
    pub(super) fn record_contiguous(&mut self) -> &[u8] {
        match &mut self.kind {
            ChannelKind::Local(l) => l.reader.record_contiguous(),
        }
    }

    /// The record the last poll found, as its chunks in place.
    #[inline]
    pub(super) fn record_chunks(&self) -> RecordChunks<'_> {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.record_chunks(),
        }
    }

    /// Records that spanned segments: (reassembled, read in place as chunks).
    pub(super) fn spanned(&self) -> (u64, u64) {
        match &self.kind {
            ChannelKind::Local(l) => (l.reader.spanned, l.reader.spanned_in_place),
        }
    }
}

/// Stores what a local channel read in its block's counters, for observers.
pub(super) fn publish_read_counters(l: &LocalChannel) {
    let b = l.reader.channel().block();
    // Relaxed (both): statistics for observers.
    b.records_in.store(l.reader.records, Ordering::Relaxed);
    b.bytes_in.store(l.reader.bytes, Ordering::Relaxed);
}

/// Looks up `spec`'s partition and becomes the one consumer of its channel: a CAS of the
/// channel's consumer pid from 0 to ours, then a second look that the block still belongs
/// to that partition. A lookup can be stale by the time the channel is opened (the producer
/// died, was reclaimed, and its block went to a new partition with a consumer of its own):
/// reading it then would make two consumers of one ring.
pub(super) fn attach_consumer(
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
pub(super) fn detach_consumer(arena: &Arena, id: u32) {
    if let Some(b) = arena.channels().get(id as usize) {
        // AcqRel: pairs with the next consumer's CAS; only our own claim is given up.
        let _ = b.consumer_pid.compare_exchange(std::process::id(), 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}
