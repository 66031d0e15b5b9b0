//! The buffer timeout's flush from the flusher's own thread (Flink's OutputFlusher), for a
//! writer whose thread is away (a source waiting for the outside world between records).
//!
//! ```text
//!  writer thread (owns the builders)               flusher thread (every interval)
//!  open(slot, epoch, seg)  seg, then staged=E|0     v = staged (Acquire)
//!  write a record; stage(slot, E, pos)              busy = tag(slot, E); fence(SeqCst)
//!    staged = E|pos (Release: a plain store)        staged still E?          (Acquire)
//!  retire(slot, E) before finishing the segment:      yes: CAS position cur -> pos
//!    staged = 0; fence(SeqCst)                             (only up, never FINISHED)
//!    wait while busy == tag(slot, E)  (Acquire)     busy = 0                 (Release)
//!  finish: position = end | FINISHED                then notify the consumer
//! ```
//! Per record the writer pays one plain store into a line of its own process (the flusher
//! reads it once per interval). The handshake costs one SeqCst fence per segment.
//! It is a Dekker pair: either the flusher sees the slot retired and leaves the segment
//! alone, or the writer sees the flusher busy on it and waits before it finishes it, so
//! a position from one builder is never stored into the segment after it ended (or after
//! its reuse by the next builder). The writer's own commits and the flusher's CAS only
//! ever raise the position, to values the writer published as staged, so whichever lands
//! last is a position the writer had written all bytes below. Loom model:
//! `loom-tests/tests/flush_handoff.rs`.

use crate::memory::{Arena, FINISHED};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// One builder slot: a subpartition's open builder, or the partition's broadcast builder.
/// The writer keeps its own reference to the slot of each builder, so staging a record is
/// one load and one store ([`HandoffSlot::stage`]).
#[derive(Default)]
pub struct HandoffSlot {
    /// `epoch << 32 | position` of the open builder; 0 when none is open.
    staged: AtomicU64,
    /// The open builder's segment.
    seg: AtomicU32,
}

/// Shared between a partition's writer and its flusher thread (see the module docs).
pub struct FlushHandoff {
    slots: Box<[Arc<HandoffSlot>]>,
    /// `tag(slot, epoch)` of the builder the flusher is committing, 0 when none.
    busy: AtomicU64,
}

impl std::fmt::Debug for FlushHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlushHandoff({} slots)", self.slots.len())
    }
}

impl HandoffSlot {
    /// Writer: every byte of the builder of `epoch` below `pos` is written (see
    /// [`FlushHandoff::stage`]).
    #[inline(always)]
    pub fn stage(&self, epoch: u32, pos: u32) {
        // Release: pairs with the flusher's Acquire loads of `staged`: the bytes below
        // `pos` are visible to it, and through its Release CAS to the consumer.
        self.staged.store((u64::from(epoch) << 32) | u64::from(pos), Ordering::Release);
    }
}

fn tag(slot: usize, epoch: u32) -> u64 {
    ((slot as u64 + 1) << 32) | u64::from(epoch)
}

impl FlushHandoff {
    /// A handoff for `slots` builders.
    pub fn new(slots: usize) -> Self {
        Self { slots: (0..slots).map(|_| Arc::new(HandoffSlot::default())).collect(), busy: AtomicU64::new(0) }
    }

    /// HandoffSlot `i`, for the writer to stage through directly.
    pub fn slot(&self, i: usize) -> Arc<HandoffSlot> {
        self.slots[i].clone()
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Writer: a builder of `epoch` (never 0; a new one per builder of the slot) opened on
    /// segment `seg`.
    pub fn open(&self, slot: usize, epoch: u32, seg: u32) {
        let s = &self.slots[slot];
        // Relaxed: published by the Release store of `staged` below.
        s.seg.store(seg, Ordering::Relaxed);
        // Release: pairs with the flusher's loads of `staged`; makes `seg` visible with it.
        s.staged.store(u64::from(epoch) << 32, Ordering::Release);
    }

    /// Writer: every byte of the builder of `epoch` below `pos` is written.
    #[inline]
    pub fn stage(&self, slot: usize, epoch: u32, pos: u32) {
        self.slots[slot].stage(epoch, pos);
    }

    /// Writer: the builder of `epoch` is about to be finished; returns once the flusher
    /// can no longer store a position into its segment.
    pub fn retire(&self, slot: usize, epoch: u32) {
        // Relaxed: ordered before the `busy` load by the fence below.
        self.slots[slot].staged.store(0, Ordering::Relaxed);
        // SeqCst fence: the writer's half of the Dekker pair; pairs with the fence in
        // `flush` (between its `busy` store and its second `staged` load): either the
        // flusher sees the slot retired, or we see it busy on it.
        fence(Ordering::SeqCst);
        let mine = tag(slot, epoch);
        let mut spins = 0u32;
        // Acquire: pairs with the flusher's Release clear of `busy`, so its CAS happens
        // before our finish of the segment.
        while self.busy.load(Ordering::Acquire) == mine {
            spins += 1;
            if spins < 64 {
                crate::sync::spin_loop();
            } else {
                crate::sync::yield_now();
            }
        }
    }

    /// Flusher: commits each slot's staged position into its segment's position word (only
    /// raising it, never over FINISHED) and calls `notify(slot)` for each slot it raised.
    /// A segment index out of range (never written by our writer) is skipped.
    pub fn flush(&self, arena: &Arena, mut notify: impl FnMut(usize)) {
        for (i, s) in self.slots.iter().enumerate() {
            // Acquire: pairs with the writer's Release stores; a cheap look first.
            let v = s.staged.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let epoch = (v >> 32) as u32;
            let mine = tag(i, epoch);
            // Relaxed: ordered before the `staged` load by the fence below.
            self.busy.store(mine, Ordering::Relaxed);
            // SeqCst fence: the flusher's half of the Dekker pair with the fence in
            // `retire`.
            fence(Ordering::SeqCst);
            // Acquire: pairs with the writer's Release stores (the bytes below the staged
            // position are visible to us, and through our Release CAS to the consumer).
            let v = s.staged.load(Ordering::Acquire);
            let raised = if v != 0 && (v >> 32) as u32 == epoch {
                // Relaxed: `seg` was stored before `staged` (Release), which we read.
                let seg = s.seg.load(Ordering::Relaxed);
                arena.controls().get(seg as usize).is_some_and(|ctl| {
                    let pos = v as u32;
                    // Relaxed: only a guess for the CAS, which checks it.
                    let mut cur = ctl.position.load(Ordering::Relaxed);
                    loop {
                        if cur & FINISHED != 0 || cur >= pos {
                            break false;
                        }
                        // Release on success: pairs with the consumer's Acquire load of the
                        // position; publishes what the writer staged (visible to us by the
                        // Acquire load above, which synchronized with the writer's Release).
                        match ctl.position.compare_exchange_weak(cur, pos, Ordering::Release, Ordering::Relaxed) {
                            Ok(_) => break true,
                            Err(now) => cur = now,
                        }
                    }
                })
            } else {
                false
            };
            // Release: pairs with the writer's Acquire load in `retire`; our CAS happens
            // before the writer finishes the segment.
            self.busy.store(0, Ordering::Release);
            if raised {
                notify(i);
            }
        }
    }
}
