//! Stop-the-world recovery: once no live process uses an arena any more (every other
//! registered process exited or died), every segment that is not on the free stack can be
//! returned to it, exactly once, whatever state the dead processes left it in.
//!
//! This is what a program that reuses an arena runs after a failed job, and what
//! `shmflow check --recover` runs on a named arena. The runtime's coordinator needs none:
//! a dead peer fails its job, and the job's memfd arena goes with it. Reclaiming the
//! segments of one dead peer while the others keep running (online recovery) is not done.

use super::arena::Arena;
use super::blocks::{Owner, CHANNEL_FREE, CHANNEL_PROBING};
use super::liveness::{self, Liveness, WORKER_ALIVE};
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
/// [`Error::Invalid`] naming a live process that still uses the arena.
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
                return Err(Error::Invalid {
                    what: "recovery",
                    detail: format!("process {pid} (worker slot {slot}) is still alive and may use the arena"),
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
    let mut cur = arena.header_atomics().free_stack_head() as u32;
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
        stack.push(i);
        out.segments += 1;
    }
    // A process that died while scanning for a run of channel blocks left them PROBING;
    // nobody else will hand them back (claimed and open blocks belong to partitions, which
    // the directory accounts for).
    for b in arena.channels() {
        // Relaxed (both): quiescent arena; the next claimer's CAS (Acquire) reads it.
        if b.state.load(Ordering::Relaxed) == CHANNEL_PROBING {
            b.state.store(CHANNEL_FREE, Ordering::Relaxed);
            out.channel_blocks += 1;
        }
    }
    Ok(out)
}
