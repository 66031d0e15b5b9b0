//! Online reclamation: the segments, channel blocks, directory entries and gate blocks of a
//! process that died come back while every other process keeps running.
//!
//! ```text
//!  any live process: reclaim_dead_peers(arena)
//!    for each worker record whose process is gone:
//!      begin_reclaim: CAS ALIVE|DEAD|EXITED -> RECLAIMING     (exactly one reclaimer)
//!      0. a segment its free-stack lane says it popped (killed before the owner swap)
//!           -> owned by a pool of its slot, freed in step 1       (see memory::stack)
//!      1. segments it holds (SegmentControl::holder_pid):
//!           in its pool or being written            -> free        (CAS on the owner word)
//!           in flight, reader alive and attached    -> orphan      (the last reader frees it)
//!           in flight, reader dead, gone or absent  -> free
//!      2. channels it produced (ChannelBlock::claimer):
//!           live reader: -> PRODUCER_DIED, reader woken; it reads what is left, fails
//!                           with PeerDied (ProducerFailed if it had failed the channel
//!                           before it died), and hands the block on as ORPHANED
//!           otherwise:   -> CLOSED (claimable again)
//!         channels it consumed (ChannelBlock::consumer_pid()):
//!           live producer: -> CONSUMER_DIED, producer woken; it takes back the segments
//!                             it had in flight there and fails that subpartition
//!           producer died before (PRODUCER_DIED / ORPHANED): settled here -> CLOSED
//!      3. its directory entries -> RELEASED, its gate blocks -> FREE
//!      finish_reclaim: RECLAIMING -> FREE                     (the slot may be taken again)
//!    then settles ORPHANED blocks (a dead producer's consumer left): SETTLING -> CLOSED
//!  whoever closes the last of a dead producer's channels (a reclaimer, a settling pass,
//!  a reader leaving): its orphaned broadcast segments -> free (their readers are all gone)
//! ```
//!
//! Who frees a segment is decided by one atomic word each time: the owner word's CAS
//! ([`free_segment_if`]) between a reclaimer and a settling pass, the refcount's
//! `fetch_or(ORPHANED)` against the readers' `fetch_sub` ([`orphan_segment`]) between a
//! reclaimer and a live reader, and the refcount's CAS to `ORPHANED | 0` between two
//! settlers of a dead producer's last channels (the owner word has no generation: a reuse
//! of the segment on the same channel with the same fanout writes the same value). Channel blocks change hands by CAS on their state, so a
//! block is released by exactly one party: its live producer, or else its live consumer
//! leaving, or else a reclaimer. Every step can be taken again by a reclaimer that takes
//! over from one that died (`begin_reclaim` hands the record on).
//!
//! A broadcast segment of a dead producer may count shares nobody will release: a dead
//! reader's, or that of a reader whose channel the producer died before publishing it on.
//! Nobody can tell which shares those are, so such a segment waits until none of the
//! producer's channels has a reader left (each settled to CLOSED) and is then freed by
//! whoever closes the last one (a SeqCst fence after each CLOSED makes sure that of two
//! settling at once, one sees the other's). That search matches the producer's pid only:
//! a live process that took the pid since and holds channel blocks makes the leftovers
//! wait until `shmflow check --recover`. A `Buffer` view kept after its gate was dropped may see its bytes reused once
//! its producer died.
//!
//! Windows still left to `shmflow check --recover` (an idle arena's stop-the-world pass);
//! a process killed in one of them loses one segment until then:
//! - an orphaned segment whose count already reads 0: its last reader killed between its
//!   `fetch_sub` and its free, or a settler killed between its refcount CAS and its free.
//!   The settlers' search for leftovers skips a zero count, since a live last reader may be
//!   freeing that segment at that very moment, and nothing tells the two apart;
//! - the frees of reclaimers and settlers themselves ([`free_segment_if`]: owner CAS, then a
//!   push without a lane): one killed between the two;
//! - a pop or push by a process without a free-stack lane: one not registered in the slot
//!   its segment's owner names, or no longer ALIVE there. The pools' requests, segments'
//!   drops and the Flink transport's acquire and release (`free_own_segment_if`) go
//!   through their process's lane and are reclaimed online (step 0 above).

use super::manager::{
    GATE_FREE, GATE_OWNED_BY, PARTITION_CLAIMED_BY, PARTITION_FAILED, PARTITION_REGISTERED, PARTITION_RELEASED,
};
use crate::error::Result;
use crate::memory::liveness::{self, DeadProcess, Liveness};
use crate::memory::recovery::{free_segment_if, orphan_segment, Orphaned};
use crate::memory::{
    Arena, Owner, Taken, CHANNEL_CLAIMED, CHANNEL_CLOSED, CHANNEL_CONSUMED, CHANNEL_CONSUMER_DIED,
    CHANNEL_CONSUMER_GONE, CHANNEL_FREE, CHANNEL_OPEN, CHANNEL_ORPHANED, CHANNEL_PROBING_BY, CHANNEL_PRODUCER_DIED,
    CHANNEL_PRODUCER_FAILED, CHANNEL_SETTLING, REFCOUNT_MASK, REFCOUNT_ORPHANED,
};
use crate::ring::NotifySet;
use crate::sync::{fence, Ordering};

/// What one reclamation pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// The dead processes reclaimed in this pass (slot and pid).
    pub reclaimed: Vec<DeadProcess>,
    /// Segments put back on the free stack.
    pub segments_freed: u32,
    /// Segments still held by live readers, marked so that the last of them frees it.
    pub segments_orphaned: u32,
    /// Channels whose live peer was told that the dead process died (`PeerDied`).
    pub channels_failed: u32,
    /// Channel blocks made claimable again.
    pub channels_closed: u32,
    /// Partition directory entries released.
    pub partitions_released: u32,
    /// Gate blocks (notify sets) released.
    pub gates_released: u32,
}

impl ReclaimReport {
    fn add(&mut self, o: &ReclaimReport) {
        self.reclaimed.extend_from_slice(&o.reclaimed);
        self.segments_freed += o.segments_freed;
        self.segments_orphaned += o.segments_orphaned;
        self.channels_failed += o.channels_failed;
        self.channels_closed += o.channels_closed;
        self.partitions_released += o.partitions_released;
        self.gates_released += o.gates_released;
    }
}

/// Reclaims every process registered in `arena` whose process is gone (killed, crashed, or
/// exited leaving things behind), and settles the channel blocks that dead producers' live
/// consumers have let go since. Callable from any live process at any time, as often as
/// wanted: a dead process is reclaimed exactly once (the first caller to see it wins a CAS
/// on its liveness record; the others skip it), and a pass with nothing to do only reads.
///
/// Costs one walk over the worker records (with a `/proc` look per registered process)
/// and, per dead process, one walk over the segment control blocks, channel blocks,
/// directory and gates: call it when a peer was seen dying, or every few hundred
/// milliseconds from a supervisor, not per record.
///
/// # Errors
/// None today; the `Result` leaves room for a corrupt record to be reported.
pub fn reclaim_dead_peers(arena: &Arena) -> Result<ReclaimReport> {
    let mut report = ReclaimReport::default();
    for slot in 0..arena.workers().len() as u32 {
        report.add(&reclaim_slot(arena, slot));
    }
    settle_orphaned(arena, &mut report);
    Ok(report)
}

/// Reclaims the process of worker slot `slot` if it is gone and nobody else reclaims it
/// (see [`reclaim_dead_peers`]); an empty report otherwise.
pub fn reclaim_slot(arena: &Arena, slot: u32) -> ReclaimReport {
    let mut report = ReclaimReport::default();
    if let Some(dead) = liveness::begin_reclaim(arena, slot) {
        // SeqCst fence: pairs with the one in the C ABI's `ChannelCtx::connect`
        // (`still_there_after_open` in ffi/src/handshake.rs) between its store of OPEN and
        // its re-check of the producer's record: either our block scan below sees that OPEN (and fails or closes the
        // channel), or that re-check sees our RECLAIMING and withdraws. The CAS alone
        // would order nothing against that later load of the other location.
        fence(Ordering::SeqCst);
        reclaim_process(arena, dead, &mut report);
        liveness::finish_reclaim(arena, dead);
        report.reclaimed.push(dead);
    }
    report
}

/// Registers this process in worker slot `slot`, reclaiming the slot's previous holder
/// first if it died (the slot of a dead process is taken only as part of its reclamation).
///
/// # Errors
/// [`crate::Error::SlotHeld`] naming the holder when it still runs (or another live process
/// is reclaiming it right now); [`crate::Error::ProtocolViolation`] for a slot out of range.
pub fn register_worker(arena: &Arena, slot: u32) -> Result<()> {
    // Bounded: a live process reclaiming the slot right now finishes within a pass; wait
    // for it at most a second.
    let deadline = crate::sync::now_nanos() + 1_000_000_000;
    loop {
        reclaim_slot(arena, slot);
        match liveness::register(arena, slot) {
            Err(crate::Error::SlotHeld { holder, .. })
                if holder == liveness::BEING_RECLAIMED && crate::sync::now_nanos() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// Whether the process in worker slot `slot` is alive, left cleanly, or died (from its
/// liveness record and `/proc`; a free or reclaimed slot counts as alive: nothing to wait
/// for there). Cheap enough for a wait loop's slow path.
pub fn peer_liveness(arena: &Arena, slot: u32) -> Liveness {
    liveness::liveness(arena, slot)
}

/// Whether the process reading or writing a channel runs (`pid` from the block; 0 is
/// "nobody attached").
fn running(pid: u32) -> bool {
    liveness::pid_running(pid)
}

/// What becomes of a channel the dead process produced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Produced {
    /// A live reader still uses it: fail it (PRODUCER_DIED) and orphan its segments.
    Fail,
    /// Nobody reads it any more: free its segments and close it.
    Close,
}

/// Whether a worker slot a record names (`None`: not recorded) can be the dead process's:
/// its records are matched by pid and, where they say, by slot (a process that took a
/// recycled pid meanwhile is in another slot: the dead one's is ours while we reclaim it).
fn slot_matches(slot: Option<u32>, dead: DeadProcess) -> bool {
    slot.is_none_or(|s| s == dead.slot)
}

fn reclaim_process(arena: &Arena, dead: DeadProcess, report: &mut ReclaimReport) {
    reclaim_taking(arena, dead);
    let produced = produced_channels(arena, dead, report);
    release_entries_and_gates(arena, dead, report);
    reclaim_segments(arena, dead, &produced, report);
    fail_or_close_produced(arena, dead, &produced, report);
    fail_consumed(arena, dead, report);
}

/// A segment the dead process had popped off the free stack without recording itself as
/// its owner yet (killed in between): made its own (a pool of its slot), so that
/// `reclaim_segments` frees it like the rest. Before that pass, and idempotent: a
/// reclaimer taking over finds the owner set, or the lane cleared.
fn reclaim_taking(arena: &Arena, dead: DeadProcess) {
    let stack = arena.free_stack();
    let Taken::Won { index, word } = stack.dead_taker(dead.slot) else {
        return;
    };
    let ctl = &arena.controls()[index as usize];
    // Relaxed (both): nobody else can reach a segment off the stack that no owner names
    // (the lane says the dead process took it; it never got to the swap); the free in
    // `reclaim_segments` CASes this value and publishes it with its push.
    let orphan = Owner::Pool { pool: 0, worker: dead.slot }.pack();
    let _ = ctl.owner.compare_exchange(Owner::Free.pack(), orphan, Ordering::Relaxed, Ordering::Relaxed);
    stack.clear_lane(dead.slot, word);
}

/// The channels a dead process produced: (channel, state, what to do with it).
type ProducedChannels = Vec<(u32, u32, Produced)>;

/// Which channels `dead` produced, and whether a live reader still uses each (decided
/// once, before any segment or state changes, so the passes after agree). Blocks it held
/// while scanning for a run are handed back here.
fn produced_channels(arena: &Arena, dead: DeadProcess, report: &mut ReclaimReport) -> ProducedChannels {
    let pid = dead.pid;
    let channels = arena.channels();
    let mut produced: Vec<(u32, u32, Produced)> = Vec::new();
    for (c, b) in channels.iter().enumerate() {
        // Acquire: pairs with the Release stores of CLAIMED (`claim_channels`) and OPEN
        // (`ChannelWriter::open`), which publish the claimer's pid read next; the state is
        // re-checked by the CAS that acts on it.
        let st = b.state();
        if st == CHANNEL_PROBING_BY | pid {
            // It died scanning for a run of blocks: hand this one back (the state names the
            // prober, so a live scan's block is never taken for a dead one's).
            // Release: pairs with the Acquire CAS of the next claimer.
            if b.try_hand_over(st, CHANNEL_FREE).is_ok() {
                report.channels_closed += 1;
            }
            continue;
        }
        // Claimer and worker are ordered by the Acquire above (the claimer wrote them
        // before leaving PROBING / publishing); stable while the block is the dead
        // claimer's, which only we release.
        if b.claimer() != pid || !slot_matches(b.producer_worker(), dead) {
            continue;
        }
        if !matches!(st, CHANNEL_OPEN | CHANNEL_CLAIMED | CHANNEL_PRODUCER_FAILED | CHANNEL_CONSUMED)
            && !matches!(st, CHANNEL_CONSUMER_GONE | CHANNEL_CONSUMER_DIED)
        {
            continue; // free, closed, or already handed on by an earlier reclaimer
        }
        let live_reader = matches!(st, CHANNEL_OPEN | CHANNEL_PRODUCER_FAILED | CHANNEL_CONSUMED)
            && reader_alive(arena, b)
            // A hint.
            && b.consumer_pid() != pid;
        produced.push((c as u32, st, if live_reader { Produced::Fail } else { Produced::Close }));
    }
    produced
}

/// Its directory entries and gate blocks first: a consumer that looked an entry up before
/// is refused when it attaches (see the gate's `attach_consumer`), not handed a block that
/// is closed below and claimed again.
fn release_entries_and_gates(arena: &Arena, dead: DeadProcess, report: &mut ReclaimReport) {
    let pid = dead.pid;
    for e in arena.partitions() {
        // Acquire: pairs with the Release store of REGISTERED in `publish` (the producer's
        // pid read next was written before it); the CAS below decides.
        let st = e.state.load(Ordering::Acquire);
        // Relaxed: ordered by the Acquire above.
        let theirs = st == PARTITION_CLAIMED_BY | pid
            || ((PARTITION_REGISTERED..=PARTITION_FAILED).contains(&st)
                && st != PARTITION_RELEASED
                && e.producer_pid.load(Ordering::Relaxed) == pid
                && slot_matches(e.producer_worker.load(Ordering::Relaxed).checked_sub(1), dead));
        if theirs {
            // AcqRel: Release pairs with the Acquire of lookups and of the next claimer.
            if e.state.compare_exchange(st, PARTITION_RELEASED, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                report.partitions_released += 1;
            }
        }
    }
    for g in arena.gates() {
        // Release: pairs with the Acquire CAS of the next claimer. The state names the
        // claimer (see `claim_gate`), so only a dead claimer's block matches.
        if g.state.compare_exchange(GATE_OWNED_BY | pid, GATE_FREE, Ordering::Release, Ordering::Relaxed).is_ok() {
            report.gates_released += 1;
        }
    }
}

/// First, its segments: freed, or orphaned to the live reader that still holds them.
fn reclaim_segments(arena: &Arena, dead: DeadProcess, produced: &ProducedChannels, report: &mut ReclaimReport) {
    let pid = dead.pid;
    let channels = arena.channels();
    let any_live_reader = produced.iter().any(|p| p.2 == Produced::Fail);
    for (i, ctl) in arena.controls().iter().enumerate() {
        // Relaxed: a segment's holder changes only when it leaves the free stack; a stale
        // value is re-checked by the owner CAS below.
        let held = ctl.holder_pid.load(Ordering::Relaxed) == pid;
        // Relaxed: the dead holder's last stores are complete; the CASes below decide.
        let owner = ctl.owner.load(Ordering::Relaxed);
        let live = match Owner::unpack(owner) {
            // A pool or writer of the dead process's worker slot: its own (the slot is
            // ours, being reclaimed, so no live process holds it now), whoever the holder
            // says: a process killed between taking a segment and naming itself holder
            // left the previous holder's pid there (seen in the kill soak).
            Owner::Pool { worker, .. } | Owner::Writer { worker, .. } if worker == dead.slot => false,
            _ if !held => continue,
            Owner::Pool { .. } | Owner::Writer { .. } => continue, // a recycled pid's
            Owner::InFlight { channel, .. } if !produced.iter().any(|p| p.0 == channel) => {
                // On a channel that is not the dead process's (a recycled pid's), or that
                // an earlier reclaimer already handed on.
                match channels.get(channel as usize) {
                    // As in the channel pass above.
                    Some(b) if b.claimer() == pid && slot_matches(b.producer_worker(), dead) => false,
                    _ => continue,
                }
            }
            Owner::InFlight { channel, fanout } => {
                if fanout > 1 {
                    any_live_reader
                } else {
                    produced.iter().any(|p| p.0 == channel && p.2 == Produced::Fail)
                }
            }
            Owner::Free | Owner::Invalid(_) => continue,
        };
        if live {
            match orphan_segment(arena, i as u32, owner) {
                Orphaned::Freed => report.segments_freed += 1,
                Orphaned::ReaderFrees => report.segments_orphaned += 1,
                Orphaned::Already => {}
            }
        } else if free_segment_if(arena, i as u32, owner) {
            report.segments_freed += 1;
        }
    }
}

/// Second, the channels it produced: failed towards a live reader, else closed.
fn fail_or_close_produced(arena: &Arena, dead: DeadProcess, produced: &ProducedChannels, report: &mut ReclaimReport) {
    let pid = dead.pid;
    let channels = arena.channels();
    for &(c, st, what) in produced {
        let b = &channels[c as usize];
        match what {
            Produced::Fail => {
                // Published by the AcqRel CAS below. A producer that failed the channel
                // before it died: its reader reports that failure, not the death.
                if st == CHANNEL_PRODUCER_FAILED {
                    b.record_dead_peer_after_failure(pid);
                } else {
                    b.record_dead_peer(pid);
                }
                // AcqRel: Release publishes the orphan flags and the pid to the reader
                // (its Acquire load in `poll_data`); Acquire pairs with its close.
                match b.try_transition_or_acquire(st, CHANNEL_PRODUCER_DIED) {
                    Ok(_) => {
                        report.channels_failed += 1;
                        wake_consumer(arena, c);
                    }
                    Err(CHANNEL_CONSUMER_GONE) => {
                        // The reader left meanwhile (after letting go of every lease).
                        close_block(arena, c, CHANNEL_CONSUMER_GONE, pid, report);
                    }
                    Err(_) => {}
                }
            }
            Produced::Close => close_block(arena, c, st, pid, report),
        }
    }
}

/// Third, the channels it consumed: failed towards their live producers, settled when
/// both ends are gone.
fn fail_consumed(arena: &Arena, dead: DeadProcess, report: &mut ReclaimReport) {
    let pid = dead.pid;
    let channels = arena.channels();
    for (c, b) in channels.iter().enumerate() {
        // Hints, acted on by CAS.
        if b.consumer_pid() != pid || !slot_matches(b.consumer_worker(), dead) || b.claimer() == pid {
            continue;
        }
        // Relaxed: the CAS below decides.
        let st = b.peek_state();
        match st {
            CHANNEL_OPEN | CHANNEL_CONSUMED | CHANNEL_PRODUCER_FAILED => {
                // Published by the AcqRel CAS below.
                b.record_dead_peer(pid);
                // AcqRel: Release publishes the pid to the producer (its Acquire load in
                // `consumer_is_dead`); Acquire pairs with its state changes.
                if b.try_transition(st, CHANNEL_CONSUMER_DIED).is_ok() {
                    report.channels_failed += 1;
                    wake_producer(arena, c as u32);
                }
            }
            CHANNEL_PRODUCER_DIED | CHANNEL_ORPHANED => settle(arena, c as u32, st, report),
            _ => {}
        }
    }
}

/// Frees what the dead producer `pid` still has in flight on channel `c` (nobody reads it:
/// its reader left, died or never came) and closes the block, taking it from state `from`.
fn close_block(arena: &Arena, c: u32, from: u32, pid: u32, report: &mut ReclaimReport) {
    let b = &arena.channels()[c as usize];
    // Acquire on success: after the reader's last use (its Release when it left). Release:
    // the block goes to the next claimer after our frees (its Acquire CAS).
    if b.try_transition(from, CHANNEL_SETTLING).is_err() {
        return;
    }
    report.segments_freed += free_in_flight(arena, c, pid);
    // Release: pairs with the Acquire CAS of the next claimer.
    b.publish_state(CHANNEL_CLOSED);
    report.channels_closed += 1;
    // SeqCst fence: pairs with this same fence of whoever closes another of `pid`'s
    // channels at the same time: of two settlers, at least one sees the other's CLOSED
    // in the scan below, so the last channel's settler frees the shared leftovers.
    fence(Ordering::SeqCst);
    if !has_unsettled_channel(arena, pid) {
        report.segments_freed += free_shared_leftovers(arena, pid);
    }
}

/// Whether producer `pid` (reclaimed, or being reclaimed) still has a channel block that a
/// reader may use: any block it claimed that is not closed or free again. A block claimed
/// again meanwhile names its new claimer (written before its CLAIMED state is published,
/// which the Acquire load orders first) or its prober, so it does not count.
fn has_unsettled_channel(arena: &Arena, pid: u32) -> bool {
    arena.channels().iter().any(|b| {
        // Acquire: pairs with the Release stores of CLAIMED / OPEN, which publish the
        // claimer read next (see `produced_channels`).
        let st = b.state();
        b.claimer() == pid && !matches!(st, CHANNEL_CLOSED | CHANNEL_FREE) && !crate::memory::channel_probing(st)
    })
}

/// Frees the broadcast segments dead producer `pid` left orphaned, once none of its
/// channels has a reader any more: readers that left let go of every lease first, dead
/// ones never will, and a reader whose channel the producer died before publishing the
/// segment on never had it, so nobody can release the shares still counted.
///
/// Two settlers may both get here (the fence in `close_block` only promises one), and the
/// first one's free can be followed by a new use of the segment whose owner word is the
/// same value (same channel, same fanout: the owner word has no generation). So the
/// refcount word decides, not the owner word: the CAS from the `ORPHANED | shares` value
/// read to `ORPHANED | 0` succeeds for one settler only, and never on a new use (its
/// `BufferBuilder::new` stores a count without the flag, and a second settler reads the
/// zero the first one left). A reader's release cannot race it: every reader has let go
/// by now (above), and if one still did, its `fetch_sub` changes the word and this CAS fails.
///
/// The pid keys this: [`has_unsettled_channel`] matches on the pid only, so a live process
/// that took the dead producer's pid and holds channel blocks makes the leftovers wait
/// (counted as in use) until `shmflow check --recover` on an idle arena frees them.
/// What the refcount CAS does not rule out: between its load and its CAS, the segment
/// freed by another settler, reused, its new producer killed and reclaimed with the
/// same share count still outstanding (a full generation in a settler's stall).
fn free_shared_leftovers(arena: &Arena, pid: u32) -> u32 {
    let mut n = 0;
    for (i, ctl) in arena.controls().iter().enumerate() {
        // Acquire: pairs with the AcqRel `fetch_or` in `orphan_segment` and the readers'
        // AcqRel `fetch_sub`s: the owner and holder read next are those of the use that
        // was orphaned (or newer, which the CAS below then fails on).
        let rc = ctl.refcount.load(Ordering::Acquire);
        if rc & REFCOUNT_ORPHANED == 0 || rc & REFCOUNT_MASK == 0 {
            continue;
        }
        // Relaxed (both): the ORPHANED flag (set by `pid`'s reclaimer before any of its
        // channels was handed on) and the holder tell its segments from those of a live
        // process that took its pid since; the refcount CAS below decides.
        let owner = ctl.owner.load(Ordering::Relaxed);
        if ctl.holder_pid.load(Ordering::Relaxed) != pid
            || !matches!(Owner::unpack(owner), Owner::InFlight { fanout, .. } if fanout > 1)
        {
            continue;
        }
        // AcqRel: Acquire pairs with the readers' Release decrements (their reads of the
        // payload come before the reuse); Release orders our loads above before a second
        // settler's Acquire load of the zero. One settler wins.
        if ctl.refcount.compare_exchange(rc, REFCOUNT_ORPHANED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            && free_segment_if(arena, i as u32, owner)
        {
            n += 1;
        }
    }
    n
}

/// Frees the one-reader segments of producer `pid` still in flight on channel `c`.
fn free_in_flight(arena: &Arena, c: u32, pid: u32) -> u32 {
    let mut n = 0;
    for (i, ctl) in arena.controls().iter().enumerate() {
        // Relaxed (both): re-checked by the owner CAS in `free_segment_if`.
        if ctl.holder_pid.load(Ordering::Relaxed) != pid {
            continue;
        }
        let owner = ctl.owner.load(Ordering::Relaxed);
        if matches!(Owner::unpack(owner), Owner::InFlight { channel, fanout: 1 } if channel == c)
            && free_segment_if(arena, i as u32, owner)
        {
            n += 1;
        }
    }
    n
}

/// Settles channel `c`, whose producer died and was reclaimed, once its reader is gone too
/// (state `from`: PRODUCER_DIED with a dead reader, or ORPHANED after the reader left).
fn settle(arena: &Arena, c: u32, from: u32, report: &mut ReclaimReport) {
    // Stable while the block is not closed.
    let producer = arena.channels()[c as usize].claimer();
    close_block(arena, c, from, producer, report);
}

/// Settles every ORPHANED channel block (a dead producer's consumer has left it), and every
/// PRODUCER_DIED block whose reader has died since without being reclaimed as its reader.
fn settle_orphaned(arena: &Arena, report: &mut ReclaimReport) {
    for (c, b) in arena.channels().iter().enumerate() {
        // Relaxed: the CAS in `close_block` decides.
        match b.peek_state() {
            CHANNEL_ORPHANED => settle(arena, c as u32, CHANNEL_ORPHANED, report),
            CHANNEL_PRODUCER_DIED if !reader_alive(arena, b) => settle(arena, c as u32, CHANNEL_PRODUCER_DIED, report),
            _ => {}
        }
    }
}

/// Whether the reader of channel block `b` runs: by its worker slot's record when it gave
/// one (pid and start time: a recycled pid is not mistaken for it), else by its pid.
fn reader_alive(arena: &Arena, b: &crate::memory::ChannelBlock) -> bool {
    // A hint written when the reader attached (as its worker slot).
    let pid = b.consumer_pid();
    if pid == 0 {
        return false;
    }
    if let Some(w) = b.consumer_worker() {
        if let Some(r) = arena.workers().get(w as usize) {
            // Relaxed: compared with the reader's pid; `liveness` Acquires the state.
            if r.pid.load(Ordering::Relaxed) != pid {
                return false; // its slot was reclaimed: it is gone
            }
            return liveness::liveness(arena, w) == Liveness::Alive;
        }
    }
    running(pid)
}

/// Settles channel `c` if its reader just left a dead producer's channel (see
/// [`ChannelReader::close`](crate::ring::ChannelReader::close)). A channel id outside the
/// arena's channel blocks is ignored (there is nothing to settle).
pub fn settle_if_orphaned(arena: &Arena, c: u32) {
    if c as usize >= arena.channels().len() {
        return;
    }
    let mut report = ReclaimReport::default();
    settle(arena, c, CHANNEL_ORPHANED, &mut report);
}

/// Wakes the reader of channel `c`: its channel wake-up and its gate's notify set.
fn wake_consumer(arena: &Arena, c: u32) {
    let b = &arena.channels()[c as usize];
    b.consumer_wake.notify_all_forced();
    // SeqCst fence: as in `ChannelWriter::fail` (either we see the gate id, or the gate's
    // first scan of the channel sees the state we stored).
    fence(Ordering::SeqCst);
    if let Some((g, index)) = b.consumer_wakeups() {
        if let Ok(set) = NotifySet::new(arena, g) {
            // A bad index only loses this wake-up.
            let _ = set.mark(index);
            set.wake().notify_all_forced();
        }
    }
}

/// Wakes the producer of channel `c`: its channel wake-up and its partition's notify set.
fn wake_producer(arena: &Arena, c: u32) {
    let b = &arena.channels()[c as usize];
    b.producer_wake.notify_all_forced();
    if let Some((set, index)) = b.producer_wakeups() {
        if let Ok(s) = NotifySet::new(arena, set) {
            let _ = s.mark(index);
            s.wake().notify_all_forced();
        }
    }
}
