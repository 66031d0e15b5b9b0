//! `MemorySegment`: exclusive ownership of one segment of the arena.

use super::arena::Arena;
use super::blocks::Owner;
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

impl Drop for MemorySegment {
    fn drop(&mut self) {
        let ctl = &self.arena.controls()[self.index as usize];
        // Relaxed: published to the next owner by the Release CAS of the push below.
        ctl.owner.store(Owner::Free.pack(), Ordering::Relaxed);
        // Relaxed: same.
        ctl.pool.store(0, Ordering::Relaxed);
        // Relaxed: same.
        ctl.holder_pid.store(0, Ordering::Relaxed);
        self.arena.free_stack().push(self.index);
    }
}
