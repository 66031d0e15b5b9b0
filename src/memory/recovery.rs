//! Stop-the-world recovery: once no live process uses an arena any more (every other
//! registered process exited or died), every segment that is not on the free stack can be
//! returned to it, exactly once, whatever state the dead processes left it in.
//!
//! This is what `shmflow check --recover` runs on a named arena. Reclaiming one dead
//! process while the others keep running is `partition::reclaim`; the two segment
//! hand-overs it is built from live here, next to the free stack they end on:
//!
//! ```text
//!  free_segment_if(i, owner)   CAS owner: owner -> Free, then push        (one winner)
//!  orphan_segment(i, owner)    refcount.fetch_or(ORPHANED)
//!                                count was 0  -> the reclaimer frees it
//!                                count was >0 -> the reader whose release takes the count
//!                                                to 0 frees it (`Lease` drop)
//! ```

use super::arena::Arena;
use super::blocks::{channel_probing, Owner, CHANNEL_FREE, REFCOUNT_MASK, REFCOUNT_ORPHANED};
use super::liveness::{self, Liveness, WORKER_ALIVE};
use super::segment::{give_back, own_lane};
use super::stack::TakeStop;
use crate::error::{Error, Result};
use crate::sync::Ordering;

/// What [`reclaim_quiescent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Segments that were not on the free stack and were pushed back.
    pub segments: u32,
    /// Worker records found dead and marked so.
    pub dead_workers: u32,
    /// Channel blocks a dead process held mid-scan for a run (PROBING), handed back.
    pub channel_blocks: u32,
}

/// Returns every segment not on the free stack to it, after checking that no other live
/// process is registered in the arena. The caller must not hold segments itself (no live
/// partition, gate or pool of its own on this arena).
///
/// # Errors
/// [`Error::SlotHeld`] naming a live process that may still use the arena.
pub fn reclaim_quiescent(arena: &Arena) -> Result<Recovered> {
    let me = std::process::id();
    let mut out = Recovered::default();
    for (slot, r) in arena.workers().iter().enumerate() {
        // Acquire: pairs with the Release store in `liveness::register`.
        if r.state.load(Ordering::Acquire) != WORKER_ALIVE {
            continue;
        }
        // Relaxed: ordered by the Acquire above.
        let pid = r.pid.load(Ordering::Relaxed);
        if pid == me {
            continue;
        }
        match liveness::liveness(arena, slot as u32) {
            Liveness::Alive => {
                return Err(Error::SlotHeld {
                    slot: slot as u32,
                    pid,
                    holder: "a live process that may still use the arena",
                })
            }
            Liveness::Dead { .. } => {
                if liveness::declare_dead(arena, slot as u32) {
                    out.dead_workers += 1;
                }
            }
            Liveness::Exited => {}
        }
    }
    // Which segments are on the free stack now (a bounded walk; the stack is quiescent).
    let n = arena.segment_count();
    let mut free = vec![false; n as usize];
    let mut cur = super::stack::head_top(arena.header_atomics().free_stack_head());
    let mut steps = 0;
    while cur != 0 && steps <= n {
        let i = cur - 1;
        if i >= n || free[i as usize] {
            break; // a corrupt link or a cycle: rebuild below from what we saw
        }
        free[i as usize] = true;
        // Relaxed: quiescent arena, no concurrent writer.
        cur = arena.controls()[i as usize].next_free.load(Ordering::Relaxed);
        steps += 1;
    }
    let walked = free.iter().filter(|f| **f).count() as u32;
    let intact = cur == 0 && walked == arena.header_atomics().free_stack.len();
    if !intact {
        // The stack itself is damaged: rebuild it from scratch with every segment.
        arena.header_atomics().free_stack.reset();
        free.iter_mut().for_each(|f| *f = false);
    }
    let stack = arena.free_stack();
    for i in (0..n).rev() {
        if free[i as usize] {
            continue;
        }
        let c = &arena.controls()[i as usize];
        // Relaxed (all): quiescent arena; published by the push's Release CAS.
        c.owner.store(Owner::Free.pack(), Ordering::Relaxed);
        c.refcount.store(0, Ordering::Relaxed);
        c.pool.store(0, Ordering::Relaxed);
        c.holder_pid.store(0, Ordering::Relaxed);
        stack.push(i);
        out.segments += 1;
    }
    // The free-stack lanes of dead takers: every segment is accounted for above.
    for r in arena.workers() {
        // Relaxed: quiescent arena.
        r.taking.store(0, Ordering::Relaxed);
    }
    // A process that died while scanning for a run of channel blocks left them PROBING;
    // nobody else will hand them back (claimed and open blocks belong to partitions, which
    // the directory accounts for).
    for b in arena.channels() {
        // Relaxed (both): quiescent arena; the next claimer's CAS (Acquire) reads it.
        if channel_probing(b.peek_state()) {
            b.set_state_unshared(CHANNEL_FREE);
            out.channel_blocks += 1;
        }
    }
    Ok(out)
}

/// Returns segment `index` to the free stack if its owner word still reads `owner`: the CAS
/// on the owner word makes exactly one of several would-be freers (a reclaimer, the last
/// reader of an orphaned segment, a settling pass) push it. Returns whether this call did.
pub fn free_segment_if(arena: &Arena, index: u32, owner: u64) -> bool {
    let Some(c) = arena.controls().get(index as usize) else {
        return false;
    };
    if owner == Owner::Free.pack() {
        return false;
    }
    // AcqRel: Acquire pairs with the readers' Release decrements of the refcount (their
    // reads of the payload come before the segment's reuse); one CAS wins.
    if c.owner.compare_exchange(owner, Owner::Free.pack(), Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    // Relaxed (all): the segment is ours alone now; the push's Release CAS publishes them.
    c.refcount.store(0, Ordering::Relaxed);
    c.pool.store(0, Ordering::Relaxed);
    c.holder_pid.store(0, Ordering::Relaxed);
    arena.free_stack().push(index);
    true
}

/// [`free_segment_if`] for a segment this process gives back for its registered worker
/// slot `slot` (a TaskManager of the Flink transport): the owner CAS, still the one that
/// decides between would-be freers, makes it a pool segment of `slot`, and it goes back
/// through the slot's free-stack lane (see `stack`). A SIGKILL anywhere in here leaves it
/// to the slot's online reclaimer: before the lane names it, the owner word names the dead
/// slot; after, the lane does. Falls back to [`free_segment_if`] when `slot` is not this
/// process's. Returns whether this call freed it.
pub fn free_own_segment_if(arena: &Arena, index: u32, owner: u64, slot: u32) -> bool {
    free_own_segment_until(arena, index, owner, slot, TakeStop::Never)
}

/// [`free_own_segment_if`], stopping where `stop` says (a model of its caller dying there:
/// [`TakeStop::AfterOwner`] right after the owner CAS, [`TakeStop::BeforePush`] and
/// [`TakeStop::AfterPush`] as in the give-back). Returns whether the owner CAS won.
#[doc(hidden)]
pub fn free_own_segment_until(arena: &Arena, index: u32, owner: u64, slot: u32, stop: TakeStop) -> bool {
    let mine = Owner::Pool { pool: 0, worker: slot };
    if own_lane(arena, mine, std::process::id()).is_none() {
        return free_segment_if(arena, index, owner);
    }
    let Some(c) = arena.controls().get(index as usize) else {
        return false;
    };
    if owner == Owner::Free.pack() || owner == mine.pack() {
        return false;
    }
    // AcqRel: as in `free_segment_if` (the readers' Release decrements; one CAS wins).
    if c.owner.compare_exchange(owner, mine.pack(), Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    // Relaxed (both): the segment is ours alone now; the push's Release CAS publishes them.
    c.refcount.store(0, Ordering::Relaxed);
    c.holder_pid.store(std::process::id(), Ordering::Relaxed);
    if stop != TakeStop::AfterOwner {
        give_back(arena, index, stop);
    }
    true
}

/// What [`orphan_segment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphaned {
    /// No reader held it any more: this call freed it.
    Freed,
    /// Readers still hold it: the last one frees it.
    ReaderFrees,
    /// It was orphaned before (a reclamation taken over), or freed by someone else.
    Already,
}

/// Marks segment `index` (owner word `owner`, whose pool is gone) orphaned: the hand-over
/// between a reclaimer and the live readers of a dead producer's segment. The `fetch_or`
/// and the readers' `fetch_sub` on the same word are ordered one way or the other: if the
/// count was already zero the last reader released it the old way (towards the dead
/// pool) and this call frees it; otherwise the flag is seen by the reader that takes the
/// count to zero, which frees it (see `Lease`'s drop).
pub fn orphan_segment(arena: &Arena, index: u32, owner: u64) -> Orphaned {
    let Some(c) = arena.controls().get(index as usize) else {
        return Orphaned::Already;
    };
    // AcqRel: pairs with the readers' AcqRel `fetch_sub` in `Lease::drop`: whichever comes
    // second sees the other's effect, so exactly one of us sees "orphaned and zero".
    let prev = c.refcount.fetch_or(REFCOUNT_ORPHANED, Ordering::AcqRel);
    if prev & REFCOUNT_ORPHANED != 0 {
        return Orphaned::Already;
    }
    if prev & REFCOUNT_MASK == 0 {
        return if free_segment_if(arena, index, owner) { Orphaned::Freed } else { Orphaned::Already };
    }
    Orphaned::ReaderFrees
}
