//! The arena-wide pool of segments (Flink's NetworkBufferPool), shared by every process.

use crate::error::{Error, Result};
use crate::memory::{Arena, MemorySegment, Owner, TakeStop};
use crate::sync::Ordering;
use std::sync::Arc;

/// The arena-wide free list of segments: a lock-free, ABA-safe stack in the arena header
/// that any attached process may pop from and push to.
#[derive(Debug, Clone)]
pub struct NetworkBufferPool {
    arena: Arc<Arena>,
}

impl NetworkBufferPool {
    /// The pool of `arena`.
    pub fn new(arena: Arc<Arena>) -> Self {
        Self { arena }
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Total segments in the arena.
    pub fn total(&self) -> u32 {
        self.arena.segment_count()
    }

    /// Segments on the free stack now (exact when nothing is in flight).
    pub fn available(&self) -> u32 {
        self.arena.header_atomics().free_stack.len()
    }

    /// Takes a segment, recording `owner` in its control block; `Ok(None)` when empty.
    ///
    /// When `owner` names a worker slot registered by this process (a pool's or a
    /// writer's), the pop goes through that slot's lane on the free stack, so a SIGKILL
    /// anywhere in here leaves the segment to the slot's reclaimer
    /// ([`SegmentStack::dead_taker`](crate::memory::SegmentStack::dead_taker)).
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the free stack is corrupt (an index out of range, or
    /// a segment on it that its control block says is owned by someone).
    pub fn request(&self, owner: Owner, pool_id: u32) -> Result<Option<MemorySegment>> {
        self.request_until(owner, pool_id, TakeStop::Never)
    }

    /// [`request`](Self::request), stopping where `stop` says (a model of its caller dying
    /// there; `Ok(None)` then).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    #[doc(hidden)]
    pub fn request_until(&self, owner: Owner, pool_id: u32, stop: TakeStop) -> Result<Option<MemorySegment>> {
        let me = std::process::id();
        let stack = self.arena.free_stack();
        let taken = match crate::memory::own_lane(&self.arena, owner, me) {
            Some(slot) => stack.pop_taking(slot, stop, |idx| self.claim(idx, owner, pool_id, me))?,
            None => stack.pop()?.map(|idx| self.claim(idx, owner, pool_id, me)),
        };
        let Some(idx) = taken.transpose()? else {
            return Ok(None);
        };
        // SAFETY: popped from the free stack and claimed, so exclusively ours; index
        // validated by pop.
        Ok(Some(unsafe { MemorySegment::from_index(self.arena.clone(), idx) }))
    }

    /// Records `owner` in the control block of segment `idx`, just popped.
    fn claim(&self, idx: u32, owner: Owner, pool_id: u32, me: u32) -> Result<u32> {
        let ctl = &self.arena.controls()[idx as usize];
        // Relaxed: the Acquire of the pop ordered us after the last owner's release; the
        // new owner is published with the segment's next hand-over.
        let prev = ctl.owner.swap(owner.pack(), Ordering::Relaxed);
        if prev != Owner::Free.pack() {
            // Someone else claims it: do not hand it out twice. It stays with whoever
            // claims it; the arena check (`shmflow check`) will report it.
            return Err(Error::ProtocolViolation {
                place: "network buffer pool".into(),
                detail: format!("segment {idx} was on the free stack but owned by {:?}", Owner::unpack(prev)),
            });
        }
        // Relaxed: bookkeeping read by tools; ordered with the next hand-over like `owner`.
        ctl.pool.store(pool_id, Ordering::Relaxed);
        // Relaxed: as above.
        ctl.seq.fetch_add(1, Ordering::Relaxed);
        // Relaxed: who holds it, for the reclamation of a dead holder; ordered for the
        // reclaimer by its death (a dead process's stores are all done).
        ctl.holder_pid.store(me, Ordering::Relaxed);
        Ok(idx)
    }

    /// Returns a segment to the free stack.
    pub fn recycle(&self, segment: MemorySegment) {
        drop(segment);
    }
}
