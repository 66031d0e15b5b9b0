//! The lock-free part of a channel's life: how the two ends (a consumer TaskManager and a
//! producer TaskManager, two processes) take a channel block, open it, and give it back.
//! `core.rs` runs these functions; the loom model `loom-tests/tests/ffi_channel_handshake.rs`
//! compiles this very file (by path) against shmflow built with `--cfg loom` and explores
//! their interleavings. It uses nothing but the channel block and `shmflow::sync`.
//!
//! ```text
//!                 claim (consumer, CAS)          open (Release)
//!  FREE / CLOSED -----------------------> PROBING_BY|pid ----------> OPEN
//!       ^                                                            |  \
//!       | free (Release, the last end: it                close (CAS) |   \ close (CAS)
//!       | drained what was queued)                        consumer   |    \ producer
//!       |                                                            v     v
//!       +---------- PROBING_BY|pid <---- take: abandoned ---- CONSUMER_GONE  PRODUCER_FAILED
//!       |           (producer, CAS; the consumer left        |                |
//!       |            before the producer took the channel)   | close of the other end:
//!       +----------------------------------------------------+----------------+ Last
//! ```
//!
//! A block held as `PROBING_BY | pid` names its holder, so the online reclaimer
//! (`shmflow::partition::reclaim`) frees it when that process dies and never mistakes it
//! for a block of the previous user, whose `claim_pid` may still be in it.
//!
//! The route names both worker slots with their generations: a producer takes only a
//! block addressed to its slot *and* generation, so a TaskManager that registered later
//! in the slot of the one the consumer looked up (which left, or died and was reclaimed)
//! never serves a channel meant for its predecessor.
//!
//! The producer may leave (or die) between the consumer's look at it and `open`; its last
//! scan of blocks towards it (`refuse_unaccepted` at close, or the reclaimer's) can miss
//! the block. So the consumer looks at the producer again after `open` (a SeqCst fence on
//! each side: the producer marks its slot EXITED before it scans, the consumer publishes
//! OPEN before it looks) and, if it is gone, [`withdraw`]s the channel: at least one of the
//! two sees the other. The two halves of that pair are [`leave`] (the producer) and
//! [`still_there_after_open`] (the consumer), which `core.rs` and the model both call. The block's `taken` word then says who frees it: the producer
//! swaps 1 in when it takes the open block, the consumer 2 when it withdraws; whoever
//! swaps second learns the other's.

use shmflow::memory::liveness;
use shmflow::memory::{
    ChannelBlock, CHANNEL_CLOSED, CHANNEL_CONSUMER_GONE, CHANNEL_FREE, CHANNEL_OPEN, CHANNEL_PROBING_BY,
    CHANNEL_PRODUCER_FAILED,
};
use shmflow::sync::{fence, Ordering};

/// Which end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Reads the data ring, writes the credit ring; claims and opens the block.
    Consumer,
    /// Writes the data ring, reads the credit ring; takes the block once it is open.
    Producer,
}

/// Where a channel goes: written into the block between [`claim`] and [`open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The producer's process (the block's `claim_pid`, as the reclaimer expects).
    pub producer_pid: u32,
    /// The consumer's process.
    pub consumer_pid: u32,
    /// The producer's worker slot.
    pub producer_slot: u32,
    /// The consumer's worker slot.
    pub consumer_slot: u32,
    /// The generation of the producer's slot, from the consumer's look-up of it.
    pub producer_generation: u32,
    /// The generation of the consumer's own slot.
    pub consumer_generation: u32,
    /// The notify set the producer marks (the consumer's), and the member it marks.
    pub consumer_set: u32,
    /// The notify set the consumer marks (the producer's).
    pub producer_set: u32,
    /// The member of either notify set: the channel block's index.
    pub member: u32,
}

/// Consumer: takes block `b` if it is free (or closed by its last users) as
/// `PROBING_BY | pid`. False when somebody else has it.
pub fn claim(b: &ChannelBlock, pid: u32) -> bool {
    let probing = CHANNEL_PROBING_BY | pid;
    [CHANNEL_FREE, CHANNEL_CLOSED].into_iter().any(|from| {
        // Acquire on success: pairs with the Release store of FREE in `free` (or of CLOSED
        // by the reclaimer): the previous users' last reads and writes of the block and of
        // its rings come before our reset.
        b.try_claim(from, probing).is_ok()
    })
}

/// Consumer: fills the block we [`claim`]ed with empty rings and `route`, then opens it.
pub fn open(b: &ChannelBlock, route: &Route) {
    b.reset();
    // All published by the Release store of OPEN below.
    b.record_claimer(route.producer_pid);
    b.record_consumer(route.consumer_pid);
    b.set_producer_worker(route.producer_slot);
    b.set_consumer_worker(route.consumer_slot);
    b.set_generations(route.producer_generation, route.consumer_generation);
    b.route_consumer_wakeups(route.consumer_set, route.member);
    b.route_producer_wakeups(route.producer_set, route.member);
    // Release: pairs with the Acquire load in `take`: the producer sees the route and the
    // empty rings.
    b.publish_state(CHANNEL_OPEN);
}

/// What [`take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Open towards us: the consumer is in this worker slot.
    Open {
        /// The consumer's worker slot.
        consumer_slot: u32,
        /// That slot's generation when the consumer opened the channel.
        consumer_generation: u32,
    },
    /// Its consumer opened it towards us and closed it before we took it: we hold it now
    /// (as `PROBING_BY | pid`), must release whatever is queued in it, then [`free`] it.
    Abandoned,
    /// Open, but towards another worker slot (or another generation of ours: a previous
    /// holder's), or a consumer slot out of range.
    NotOurs,
    /// Not open (the state found): a stale notification, or not published yet.
    NotOpen(u32),
}

/// Producer in worker slot `slot` of generation `generation` (process `pid`): takes
/// block `b`, which a consumer opened towards us. `max_slots` bounds the consumer slot
/// read from the block.
pub fn take(b: &ChannelBlock, slot: u32, generation: u32, pid: u32, max_slots: u32) -> Take {
    // Acquire: pairs with the Release store of OPEN in `open`, and with the consumer's
    // AcqRel CAS to CONSUMER_GONE in `close` (its last ring writes come before our drain).
    let st = b.state();
    // Ordered by the Acquire above.
    let ours = b.producer_worker() == Some(slot) && liveness::same_generation(b.generations().0, generation);
    match st {
        CHANNEL_OPEN if ours => {
            // Ordered by the Acquire above.
            let consumer = b.consumer_worker().unwrap_or(u32::MAX);
            if consumer >= max_slots {
                return Take::NotOurs;
            }
            if !b.mark_taken() {
                // Its consumer withdrew it (it saw us leave) and frees it.
                return Take::NotOpen(CHANNEL_CONSUMER_GONE);
            }
            Take::Open { consumer_slot: consumer, consumer_generation: b.generations().1 }
        }
        CHANNEL_OPEN => Take::NotOurs,
        // Relaxed: ordered by the Acquire above; the CAS decides.
        CHANNEL_CONSUMER_GONE if ours && b.claimer() == pid => {
            // AcqRel: Acquire as above (the consumer's last writes before our drain);
            // Release: our hold is published before the reclaimer may look at it.
            match b.try_transition(CHANNEL_CONSUMER_GONE, CHANNEL_PROBING_BY | pid) {
                Ok(_) => Take::Abandoned,
                Err(now) => Take::NotOpen(now),
            }
        }
        s => Take::NotOpen(s),
    }
}

/// What [`close`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The other end is still there: the block is marked, the other end must be woken;
    /// the other end's close frees it.
    First,
    /// The other end had closed: what is still queued either way is ours to release, then
    /// we [`free`] the block.
    Last,
    /// The block was in another state (the other end's process died and the reclaimer
    /// marked it; the caller handles those states).
    Other(u32),
}

/// Closes `end` of the open channel in block `b`.
pub fn close(b: &ChannelBlock, end: End) -> Closed {
    let (mine, theirs) = match end {
        End::Consumer => (CHANNEL_CONSUMER_GONE, CHANNEL_PRODUCER_FAILED),
        End::Producer => (CHANNEL_PRODUCER_FAILED, CHANNEL_CONSUMER_GONE),
    };
    // AcqRel: Release publishes our last ring writes to the other end's Acquire (its close
    // or `take`); Acquire (on failure too) orders the other end's last writes before our
    // drain.
    match b.try_transition_or_acquire(CHANNEL_OPEN, mine) {
        Ok(_) => Closed::First,
        Err(s) if s == theirs => Closed::Last,
        Err(s) => Closed::Other(s),
    }
}

/// What [`withdraw`] left to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// The block is the consumer's again: it releases what is queued, then [`free`]s it.
    Free,
    /// The producer had taken the channel: its close frees the block.
    ProducerFrees,
    /// The block was in another state (the reclaimer marked it: the producer died); the
    /// caller handles it as its close would.
    Other(u32),
}

/// Producer: leaving, marks itself gone (`mark_gone`: its worker slot EXITED) and fences;
/// the caller then scans for the blocks opened towards it that it never took. Of its mark
/// and a consumer's OPEN at the same time, at least one is seen by the other side (see
/// [`still_there_after_open`]).
pub fn leave(mark_gone: impl FnOnce()) {
    mark_gone();
    // SeqCst fence: pairs with the one in `still_there_after_open` (the consumer's OPEN
    // then its look at us) and with the reclaimer's in `partition::reclaim::reclaim_slot`
    // (its RECLAIMING then its block scan), which the consumer's look also pairs with.
    fence(Ordering::SeqCst);
}

/// Consumer: after [`open`], looks at its producer again (`producer_there`: its record
/// still alive, of the generation looked up). False when it left (or died) meanwhile: its
/// scan may have missed the OPEN, so the caller [`withdraw`]s the channel.
pub fn still_there_after_open(producer_there: impl FnOnce() -> bool) -> bool {
    // SeqCst fence: pairs with the one in `leave` (the producer's EXITED then its scan)
    // and with the reclaimer's in `partition::reclaim::reclaim_slot`: if that scan missed
    // our OPEN, the look below sees the producer gone.
    fence(Ordering::SeqCst);
    producer_there()
}

/// Consumer (process `pid`): takes back the channel it opened in block `b` and has not
/// told its producer of yet, because the producer left meanwhile. Its producer may have
/// taken it already (its `take`, or its close-time scan that fails it), may take it as
/// abandoned, or never look again: exactly one of the two frees it.
pub fn withdraw(b: &ChannelBlock, pid: u32) -> Withdrawn {
    match close(b, End::Consumer) {
        Closed::First => {
            if !b.mark_withdrawn() {
                return Withdrawn::ProducerFrees;
            }
            // Not taken, and never will be as open (`mark_taken` sees our 2); the producer
            // may still take it as abandoned (its close-time scan): this CAS or its CAS.
            // AcqRel: pairs with the producer's CAS in `take` (Abandoned) and the
            // reclaimer's from CONSUMER_GONE; Release publishes our hold.
            match b.try_transition(CHANNEL_CONSUMER_GONE, CHANNEL_PROBING_BY | pid) {
                Ok(()) => Withdrawn::Free,
                Err(_) => Withdrawn::ProducerFrees,
            }
        }
        // The producer failed it (its close-time scan took it first): ours to free.
        Closed::Last => Withdrawn::Free,
        Closed::Other(s) => Withdrawn::Other(s),
    }
}

/// The last end (or the producer that took an abandoned block) gives the block back, after
/// it released what was queued in it.
pub fn free(b: &ChannelBlock) {
    // Release: pairs with the Acquire CAS in `claim` of the next consumer.
    b.publish_state(CHANNEL_FREE);
}
