//! The buffer timeout's flush from the flusher's own thread (Flink's OutputFlusher), for a
//! writer whose thread is away (a source waiting for the outside world between records,
//! or a writer blocked on back-pressure or descheduled).
//!
//! ```text
//!  writer thread (owns the builders)               flusher thread (every interval)
//!  open(slot, epoch, seg)  seg, then staged=E|0     look: v = staged[i] (Acquire) for every
//!  write a record; stage(slot, E, pos)                slot; keep those != 0 and changed
//!    staged[slot] = E|pos (Release: a plain store)    since the last flush (`FlushState`)
//!  retire(slot, E) before finishing the segment:    none: done (no fence, no store)
//!    staged[slot] = 0; fence(SeqCst)                busy = BATCH; fence(SeqCst)
//!    wait while busy is BATCH     (Acquire)         for each kept slot:
//!  finish: position = end | FINISHED                  staged still E? (Acquire)
//!                                                       yes: CAS position cur -> pos
//!                                                            (only up, never FINISHED)
//!                                                   busy = 0                  (Release)
//!                                                   then notify the raised slots' consumers
//!                                                   (one fence for the lot)
//! ```
//! Per record the writer pays one plain store into a word of its own process; the staged
//! words of all slots are contiguous (8 to a cache line), so a writer going round-robin
//! over its channels stays in one line for 8 records, and the flusher reads 8 slots per
//! line. The handshake costs the writer one SeqCst fence per segment and the flusher one
//! per flush (not one per slot); a flush whose slots are all as it left them last time (a
//! writer blocked on back-pressure commits everything itself before it waits) costs only
//! the loads of the staged words.
//! It is a Dekker pair: either the flusher sees the slot retired and leaves the segment
//! alone, or the writer sees the flusher busy and waits before it finishes the segment, so
//! a position from one builder is never stored into the segment after it ended (or after
//! its reuse by the next builder). The writer's own commits and the flusher's CAS only
//! ever raise the position, to values the writer published as staged, so whichever lands
//! last is a position the writer had written all bytes below. Loom model:
//! `loom-tests/tests/flush_handoff.rs`.

use crate::memory::{Arena, FINISHED};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// `busy` while a flush commits: every slot at once.
const BATCH: u64 = u64::MAX;

/// Shared between a partition's writer and its flusher thread (see the module docs).
/// Slot `i` is one builder: a subpartition's open builder, or the partition's broadcast
/// builder.
pub struct FlushHandoff {
    /// Per slot: `epoch << 32 | position` of the open builder; 0 when none is open.
    /// Contiguous, so staging walks few lines.
    staged: Box<[AtomicU64]>,
    /// Per slot: the open builder's segment.
    segs: Box<[AtomicU32]>,
    /// [`BATCH`] while the flusher commits, 0 otherwise.
    busy: AtomicU64,
}

impl std::fmt::Debug for FlushHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlushHandoff({} slots)", self.staged.len())
    }
}

/// What one flusher remembers between its flushes (process-local, owned by the flusher
/// thread): the staged word of each slot it last found committed, so an unchanged slot
/// costs one load, and scratch lists reused from flush to flush.
#[derive(Debug, Default)]
pub struct FlushState {
    /// Per slot: the staged word last found committed (0: none).
    done: Vec<u64>,
    /// Slots this flush looks at after the fence, with the word the first look saw.
    due: Vec<(u32, u64)>,
    /// Slots this flush raised (their consumers are to be woken).
    raised: Vec<u32>,
}

impl FlushState {
    /// The slots the last [`FlushHandoff::flush_with`] raised, ascending.
    pub fn raised(&self) -> &[u32] {
        &self.raised
    }
}

impl FlushHandoff {
    /// A handoff for `slots` builders.
    pub fn new(slots: usize) -> Self {
        Self {
            staged: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            segs: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            busy: AtomicU64::new(0),
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.staged.len()
    }

    /// Writer: a builder of `epoch` (never 0; a new one per builder of the slot) opened on
    /// segment `seg`.
    pub fn open(&self, slot: usize, epoch: u32, seg: u32) {
        // Relaxed: published by the Release store of `staged` below.
        self.segs[slot].store(seg, Ordering::Relaxed);
        // Release: pairs with the flusher's loads of `staged`; makes `seg` visible with it.
        self.staged[slot].store(u64::from(epoch) << 32, Ordering::Release);
    }

    /// Writer: every byte of the builder of `epoch` below `pos` is written.
    #[inline(always)]
    pub fn stage(&self, slot: usize, epoch: u32, pos: u32) {
        // Release: pairs with the flusher's Acquire loads of `staged`: the bytes below
        // `pos` are visible to it, and through its Release CAS to the consumer.
        self.staged[slot].store((u64::from(epoch) << 32) | u64::from(pos), Ordering::Release);
    }

    /// [`stage`](Self::stage) without the slot's bounds look (the per-record path).
    ///
    /// # Safety
    /// `slot < self.slots()`.
    #[inline(always)]
    pub unsafe fn stage_unchecked(&self, slot: usize, epoch: u32, pos: u32) {
        debug_assert!(slot < self.staged.len());
        // SAFETY: in bounds (the caller's contract).
        let w = unsafe { self.staged.get_unchecked(slot) };
        // Release: as in `stage`; pairs with the flusher's Acquire loads of `staged`.
        w.store((u64::from(epoch) << 32) | u64::from(pos), Ordering::Release);
    }

    /// Writer: the builder of `epoch` is about to be finished; returns once the flusher
    /// can no longer store a position into its segment.
    pub fn retire(&self, slot: usize, epoch: u32) {
        debug_assert!(epoch != 0);
        // Relaxed: ordered before the `busy` load by the fence below.
        self.staged[slot].store(0, Ordering::Relaxed);
        // SeqCst fence: the writer's half of the Dekker pair; pairs with the fence in
        // `flush_with` (between its `busy` store and its second `staged` loads): either the
        // flusher sees the slot retired, or we see it busy.
        fence(Ordering::SeqCst);
        let mut spins = 0u32;
        // Acquire: pairs with the flusher's Release clear of `busy`, so its CAS happens
        // before our finish of the segment. Bounded: a flush commits at most every slot
        // once and then clears `busy`.
        while self.busy.load(Ordering::Acquire) == BATCH {
            spins += 1;
            if spins < 64 {
                crate::sync::spin_loop();
            } else {
                crate::sync::yield_now();
            }
        }
    }

    /// Flusher: [`flush_with`](Self::flush_with) with no memory of an earlier flush,
    /// calling `notify(slot)` for each slot it raised.
    pub fn flush(&self, arena: &Arena, mut notify: impl FnMut(usize)) {
        let mut state = FlushState::default();
        self.flush_with(arena, &mut state);
        for &i in state.raised() {
            notify(i as usize);
        }
    }

    /// Flusher: commits each slot's staged position into its segment's position word (only
    /// raising it, never over FINISHED), leaving the slots it raised in
    /// [`FlushState::raised`]: their consumers are to be woken, after one
    /// `fence(SeqCst)` for the lot (see `ring::notify_channel_fenced`). A slot whose staged
    /// word is what `state` last found committed is skipped without a fence; a segment
    /// index out of range (never written by our writer) is skipped too.
    pub fn flush_with(&self, arena: &Arena, state: &mut FlushState) {
        state.raised.clear();
        state.due.clear();
        state.done.resize(self.staged.len(), 0);
        for (i, w) in self.staged.iter().enumerate() {
            // Acquire: pairs with the writer's Release stores; a cheap first look.
            let v = w.load(Ordering::Acquire);
            if v != 0 && v != state.done[i] {
                state.due.push((i as u32, v));
            }
        }
        if state.due.is_empty() {
            return;
        }
        // Relaxed: ordered before the `staged` loads below by the fence.
        self.busy.store(BATCH, Ordering::Relaxed);
        // SeqCst fence: the flusher's half of the Dekker pair with the fence in `retire`.
        fence(Ordering::SeqCst);
        let controls = arena.controls();
        for &(i, first) in &state.due {
            let i = i as usize;
            // Acquire: pairs with the writer's Release stores (the bytes below the staged
            // position are visible to us, and through our Release CAS to the consumer).
            let v = self.staged[i].load(Ordering::Acquire);
            // The builder the first look saw, still open (a newer position of it is fine).
            if v == 0 || v >> 32 != first >> 32 {
                continue;
            }
            // Relaxed: `seg` was stored before `staged` (Release), which we read.
            let seg = self.segs[i].load(Ordering::Relaxed);
            let Some(ctl) = controls.get(seg as usize) else { continue };
            let pos = v as u32;
            // Relaxed: only a guess for the CAS, which checks it.
            let mut cur = ctl.position.load(Ordering::Relaxed);
            // Bounded: each failure sees the word changed by the writer's own commits,
            // which only raise it (or finish it); an honest writer commits a bounded
            // number of times while we look, and FINISHED or a position >= ours ends it.
            let mut tries = 0u32;
            let raised = loop {
                if cur & FINISHED != 0 || cur >= pos || tries == 1 << 16 {
                    break false;
                }
                tries += 1;
                // Release on success: pairs with the consumer's Acquire load of the
                // position; publishes what the writer staged (visible to us by the Acquire
                // load above, which synchronized with the writer's Release).
                match ctl.position.compare_exchange_weak(cur, pos, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => break true,
                    Err(now) => cur = now,
                }
            };
            state.done[i] = v;
            if raised {
                state.raised.push(i as u32);
            }
        }
        // Release: pairs with the writer's Acquire load in `retire`; our CASes happen
        // before the writer finishes a segment it retired meanwhile.
        self.busy.store(0, Ordering::Release);
    }
}
