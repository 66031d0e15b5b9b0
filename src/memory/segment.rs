//! `MemorySegment`: exclusive ownership of one segment of the arena.

use super::arena::Arena;
use super::blocks::Owner;
use super::liveness::WORKER_ALIVE;
use super::stack::TakeStop;
use crate::sync::Ordering;
use std::sync::Arc;

/// One segment (a fixed-size slice of the arena's data region, named by its index) held
/// exclusively by this handle. Dropping it returns the segment to the arena-wide free
/// stack; hand it to a [`BufferBuilder`](crate::buffer::BufferBuilder) or a pool instead to
/// keep it.
pub struct MemorySegment {
    arena: Arc<Arena>,
    index: u32,
}

impl std::fmt::Debug for MemorySegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemorySegment({})", self.index)
    }
}

impl MemorySegment {
    /// Wraps segment `index`.
    ///
    /// # Safety
    /// The caller must own segment `index` exclusively (it came off a free stack or back
    /// through a recycle), and `index < arena.segment_count()`.
    pub unsafe fn from_index(arena: Arc<Arena>, index: u32) -> Self {
        debug_assert!(index < arena.segment_count());
        Self { arena, index }
    }

    /// The segment's index in the arena.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.arena.segment_size() as usize
    }

    /// Always false: segments have a fixed, non-zero size.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: this handle owns the segment exclusively (constructor contract) and the
        // range is the whole segment.
        unsafe { self.arena.segment_bytes_mut(self.index, 0, self.arena.segment_size()) }
    }

    /// The bytes, for reading.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`; `&self` prevents concurrent mutation through us.
        unsafe { self.arena.segment_bytes(self.index, 0, self.arena.segment_size()) }
    }

    /// Gives up the handle without recycling; the caller takes over ownership of the index.
    pub fn into_index(self) -> u32 {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again; we move the Arc out exactly once.
        let _arena = unsafe { std::ptr::read(&me.arena) };
        me.index
    }
}

impl MemorySegment {
    /// Drops the segment (back to the free stack), stopping where `stop` says: a model of
    /// this process dying there (loom models and tests).
    #[doc(hidden)]
    pub fn recycle_until(self, stop: TakeStop) {
        let arena = self.arena.clone();
        give_back(&arena, self.into_index(), stop);
    }
}

impl Drop for MemorySegment {
    fn drop(&mut self) {
        give_back(&self.arena, self.index, TakeStop::Never);
    }
}

/// Marks segment `index` free and pushes it, through this process's lane when its owner
/// names this process's worker slot (a SIGKILL in between leaves it to the slot's
/// reclaimer, see `stack`).
pub(crate) fn give_back(arena: &Arena, index: u32, stop: TakeStop) {
    let ctl = &arena.controls()[index as usize];
    let release = || {
        // Relaxed (all three): published to the next owner by the Release CAS of the push.
        ctl.owner.store(Owner::Free.pack(), Ordering::Relaxed);
        ctl.pool.store(0, Ordering::Relaxed);
        ctl.holder_pid.store(0, Ordering::Relaxed);
    };
    // Relaxed: our own segment's owner word, last written by this process.
    let owner = Owner::unpack(ctl.owner.load(Ordering::Relaxed));
    match own_lane(arena, owner, std::process::id()) {
        Some(slot) => arena.free_stack().push_releasing(slot, index, stop, release),
        None => {
            release();
            arena.free_stack().push(index);
        }
    }
}

/// The worker slot `owner` names (a pool's or a writer's), when this process (`me`) is
/// registered in it and still ALIVE there: the free-stack lane its pops and pushes go
/// through (another process's lane is never written). Once this process marked its slot
/// EXITED, `liveness::register` may hand the slot to a newcomer while this process still
/// runs, so it stops using the lane (its pops and pushes go without one, as before lanes).
/// A give-back racing with its own process's `mark_exited` can still write the lane after
/// the newcomer took it: leaving a slot is meant to come after its segments went back.
pub(crate) fn own_lane(arena: &Arena, owner: Owner, me: u32) -> Option<u32> {
    let (Owner::Pool { worker, .. } | Owner::Writer { worker, .. }) = owner else {
        return None;
    };
    let r = arena.workers().get(worker as usize)?;
    // Relaxed (both): our own registration, written by this process before (a newcomer
    // changes them only after we marked the slot EXITED).
    let alive = r.state.load(Ordering::Relaxed) == WORKER_ALIVE;
    (alive && r.pid.load(Ordering::Relaxed) == me).then_some(worker)
}
