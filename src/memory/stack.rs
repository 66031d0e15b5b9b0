//! A lock-free stack of segment indices (Treiber) with a tag against ABA: the arena-wide
//! free list of the NetworkBufferPool (DESIGN.md §4.1).
//!
//! ```text
//!  head: u64 = [ tag : 26 | lane : 13 | index + 1 : 25 ]   index + 1 == 0 means empty
//!  link: SegmentControl::next_free = index + 1 of the next segment (0 = end)
//!  lane: WorkerRecord::taking of the worker slot lane - 1 (0 = an operation without a lane)
//!        = [ WON : 1 | PUSH : 1 | 0 : 11 | tag : 26 | index + 1 : 25 ]   0 = idle
//! ```
//!
//! Every successful CAS on `head` bumps the tag, so a head value that was popped and pushed
//! back between another process's load and CAS (ABA) no longer compares equal. The tag wraps
//! after 2^26 operations; a process would have to stall in the middle of one pop for that
//! long for ABA to return.
//!
//! Taking a segment and recording who took it are two words, so a process killed between
//! the pop and its owner swap would leave the segment free but off the stack, found by
//! nobody. A pop with a *lane* (its worker slot's `taking` word) closes that window:
//!
//! ```text
//!  taker:   taking = ATTEMPT(i, tag)     CAS head [tag | * | i+1] -> [tag+1 | lane | next]
//!           taking = WON(i, tag)         (the caller swaps the owner, then taking = 0)
//!  anyone, before replacing a head that names a lane (push or pop), and a reclaimer:
//!           if that lane's taking is ATTEMPT(_, head.tag - 1): CAS it to WON     (helping)
//!  reclaimer of a dead slot, after helping: WON(i) -> i is its (free, off the stack),
//!           ATTEMPT -> its CAS never succeeded (the head names the last pop's lane until
//!           someone helped it), nothing taken
//! ```
//!
//! A pop that succeeded is WON before the head moves on, so the reclaimer of a dead taker
//! reads WON exactly when the segment left the stack for it, and never mistakes a segment
//! still on the stack (or popped by someone else) for one it took: no loss, no double push.
//!
//! Giving a segment back has the mirror window (marked free, then pushed), closed the same
//! way: the lane says PUSH|ATTEMPT(i, tag) before the owner word is marked free and before
//! the CAS, the CAS names the lane, helpers mark it WON. A dead process's PUSH|ATTEMPT is a
//! segment off the stack (its reclaimer frees it), a PUSH|WON one on it (nothing to do).
//!
//! Every write of a lane is a read-modify-write (`swap`), not a store: with the helpers'
//! CASes they then fall in one total order, and the loom model of a holder killed after
//! its push found plain Relaxed stores leaving a helper's stale WON last.
//!
//! Not covered: the length counter beside the head is updated after each CAS, so a kill
//! in between leaves it one off (a statistic; `shmflow check` reports the mismatch).
//! One pop at a time per lane: a process's threads share its worker slot, so they take a
//! process-local lock per lane (a lane word written by two pops at once could name a
//! segment back on the stack).
//!
//! Indices read from the arena are validated: a link or head out of range (a faulty peer)
//! is a [`Violation`] (an [`Error::ProtocolViolation`](crate::Error::ProtocolViolation) at the
//! API), never an out-of-bounds read; a lane out of range is not helped.

use super::blocks::{SegmentControl, WorkerRecord};
use crate::error::Violation;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Bits of `index + 1` in the head word and in a lane word.
const INDEX_BITS: u32 = 25;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Bits of the lane (worker slot + 1) in the head word.
const LANE_BITS: u32 = 13;
const LANE_MASK: u64 = ((1 << LANE_BITS) - 1) << INDEX_BITS;
/// Where the tag starts in the head word (the top 26 bits).
const TAG_SHIFT: u32 = INDEX_BITS + LANE_BITS;
/// Mask of a tag (26 bits).
const TAG_MASK: u64 = (1 << (64 - TAG_SHIFT)) - 1;
/// A lane word's flag: the operation it names succeeded.
const WON: u64 = 1 << 63;
/// A lane word's flag: the operation is a push (giving a segment back), not a pop.
const PUSH: u64 = 1 << 62;

const _: () = assert!(super::layout::MAX_WORKERS < (1 << LANE_BITS) && (1u64 << 24) < INDEX_MASK);

/// The `index + 1` a head word names at its top (0: empty).
pub fn head_top(head: u64) -> u32 {
    (head & INDEX_MASK) as u32
}

fn head_tag(head: u64) -> u64 {
    head >> TAG_SHIFT
}

fn head_lane(head: u64) -> u64 {
    (head & LANE_MASK) >> INDEX_BITS
}

/// The head after `cur`: tag bumped (wrapping), `lane` (slot + 1, or 0) and `top` (index + 1).
fn next_head(cur: u64, lane: u64, top: u64) -> u64 {
    (((head_tag(cur) + 1) & TAG_MASK) << TAG_SHIFT) | (lane << INDEX_BITS) | top
}

/// A lane word: a pop of `index` from a head with tag `tag`, not yet known to have won.
fn attempt(index: u32, tag: u64) -> u64 {
    (tag << INDEX_BITS) | u64::from(index + 1)
}

/// What a dead taker's lane says once the head was helped (see [`SegmentStack::dead_taker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Nothing taken (idle, or a pop whose CAS never succeeded; the word is cleared).
    Nothing,
    /// Segment `index` is off the stack and was the dead process's: it popped it and may
    /// have died before recording itself as its owner, or it was giving it back and died
    /// before its push (after marking it free, or before). `word` is the lane word to
    /// clear with [`SegmentStack::clear_lane`].
    Won {
        /// The segment.
        index: u32,
        /// The lane word read.
        word: u64,
    },
}

/// Where a pop stops early: a model of its taker dying there (loom models and tests);
/// the shipped paths pass [`TakeStop::Never`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeStop {
    /// Runs to the end.
    Never,
    /// After writing the lane's ATTEMPT, before the CAS.
    AfterAttempt,
    /// After the CAS that took the segment, before the lane says WON.
    AfterPop,
    /// After the lane says WON (the caller's owner swap comes next).
    AfterWon,
    /// After the caller's owner swap, before it clears the lane.
    AfterOwner,
    /// Giving a segment back: after marking it free, before the push's CAS.
    BeforePush,
    /// Giving a segment back: after the push's CAS, before the lane is cleared.
    AfterPush,
}

/// The head of a [`SegmentStack`]. `#[repr(C)]`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct StackHead {
    /// `[tag:26 | lane:13 | index+1:25]`; `index + 1` in `0..=segment_count`.
    head: AtomicU64,
    /// Approximate number of segments on the stack (for metrics only).
    len: AtomicU32,
}

impl StackHead {
    /// An empty stack.
    pub fn new() -> Self {
        Self { head: AtomicU64::new(0), len: AtomicU32::new(0) }
    }

    /// Approximate length: exact when nothing is in flight and no process was killed
    /// between a push's or pop's CAS and its count. The count is updated after the CAS, so
    /// it can dip below zero: a pop's decrement landing before a concurrent push's
    /// increment (for a moment), or a kill after a push's CAS (for good, until
    /// [`reset`](Self::reset)). A wrapped count reads as 0, never as about `u32::MAX`.
    /// (Decrementing with saturation instead would leave the first case one high for good.)
    pub fn len(&self) -> u32 {
        // Relaxed: a statistic, read without ordering needs.
        let n = self.len.load(Ordering::Relaxed);
        // Below zero by a few (the segment count fits in 25 bits, far below this).
        if n > u32::MAX / 2 {
            0
        } else {
            n
        }
    }

    /// The raw head word `[tag | lane | index + 1]` (for observers; [`head_top`] reads it).
    pub fn raw_head(&self) -> u64 {
        // Relaxed: an observer's look.
        self.head.load(Ordering::Relaxed)
    }

    /// Empties the stack (recovery of a quiescent arena only: nobody else may use it).
    pub fn reset(&self) {
        // Relaxed (both): the arena is quiescent; the pushes that follow publish.
        self.head.store(0, Ordering::Relaxed);
        self.len.store(0, Ordering::Relaxed);
    }

    /// Whether the stack looks empty.
    pub fn is_empty(&self) -> bool {
        // Acquire: pairs with the Release CAS in `push`, like `pop`'s load.
        head_top(self.head.load(Ordering::Acquire)) == 0
    }
}

/// A view of a stack head, the control blocks that hold its links, and the worker records
/// whose `taking` words are its lanes.
#[derive(Clone, Copy)]
pub struct SegmentStack<'a> {
    head: &'a StackHead,
    controls: &'a [SegmentControl],
    lanes: &'a [WorkerRecord],
}

/// The process-local lock of a lane: one pop at a time per worker slot in this process.
#[cfg(not(loom))]
fn lane_lock(slot: u32) -> std::sync::MutexGuard<'static, ()> {
    static LOCKS: [std::sync::Mutex<()>; 16] = [const { std::sync::Mutex::new(()) }; 16];
    // A poisoned lock guards nothing that a panic could have left half done.
    LOCKS[slot as usize % LOCKS.len()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Under loom each model thread plays a process with a lane of its own: nothing to lock.
#[cfg(loom)]
struct NoLaneLock;

/// Under loom each model thread plays a process with a lane of its own.
#[cfg(loom)]
fn lane_lock(_slot: u32) -> NoLaneLock {
    NoLaneLock
}

impl<'a> SegmentStack<'a> {
    /// A stack over `controls` (whose `next_free` fields are the links) whose pops may
    /// record themselves in the `taking` words of `lanes`.
    pub fn new(head: &'a StackHead, controls: &'a [SegmentControl], lanes: &'a [WorkerRecord]) -> Self {
        Self { head, controls, lanes }
    }

    /// Pushes segment `index`, which the caller owns and nobody else can reach. Without a
    /// lane: a process killed after marking the segment free and before this push loses
    /// it until a stop-the-world recovery; [`push_releasing`](Self::push_releasing) does
    /// not.
    pub fn push(&self, index: u32) {
        self.push_in(index, None, TakeStop::Never);
    }

    /// Gives segment `index` back for worker slot `slot` (the caller's own, registered):
    /// the lane names the segment before `release` runs (the caller marks it free there)
    /// and until the push is known, so the reclaimer of a process killed anywhere in
    /// between finds it ([`dead_taker`](Self::dead_taker)). `stop` is [`TakeStop::Never`]
    /// but in models.
    #[doc(hidden)]
    pub fn push_releasing(&self, slot: u32, index: u32, stop: TakeStop, release: impl FnOnce()) {
        let Some(lane) = self.lanes.get(slot as usize) else {
            release();
            self.push(index);
            return;
        };
        let _one_op_per_lane = lane_lock(slot);
        // Relaxed: a tag to write beside the index; `push_in` reloads the head (Acquire).
        let cur = self.head.head.load(Ordering::Relaxed);
        // Relaxed: read by a reclaimer only after this process died; helpers act on it
        // only once a head written by our push names our lane (`push_in` rewrites it then).
        // The tag is the current head's, so no head that names this lane already (our
        // last pop's, tag + 1) makes a helper take it for a push that happened.
        let _ = lane.taking.swap(PUSH | attempt(index, head_tag(cur)), Ordering::Relaxed);
        release();
        if stop == TakeStop::BeforePush || !self.push_in(index, Some((slot, &lane.taking)), stop) {
            return;
        }
        // Relaxed: as the clear in `pop_taking`.
        let _ = lane.taking.swap(0, Ordering::Relaxed);
    }

    /// Pushes `index`, naming `lane` in the new head when given; false when `stop` ended it.
    fn push_in(&self, index: u32, lane: Option<(u32, &AtomicU64)>, stop: TakeStop) -> bool {
        debug_assert!((index as usize) < self.controls.len());
        let link = &self.controls[index as usize].next_free;
        // Acquire: as in `pop` (`help` reads the lane of the pop that wrote this head).
        let mut cur = self.head.head.load(Ordering::Acquire);
        loop {
            self.help(cur);
            // Relaxed: published by the Release CAS below, which orders this store before it.
            link.store(head_top(cur), Ordering::Relaxed);
            let lane_field = match lane {
                Some((slot, word)) => {
                    // Relaxed: published by the Release CAS below (as in `pop_in`).
                    let _ = word.swap(PUSH | attempt(index, head_tag(cur)), Ordering::Relaxed);
                    u64::from(slot) + 1
                }
                None => 0,
            };
            let next = next_head(cur, lane_field, u64::from(index + 1));
            // Release: pairs with the Acquire load/CAS in `pop`, making the link (and the
            // caller's last writes to the segment, and the help above) visible to whoever
            // reads this head. Acquire on failure: as the first load.
            match self.head.head.compare_exchange_weak(cur, next, Ordering::Release, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        // Relaxed: statistic.
        self.head.len.fetch_add(1, Ordering::Relaxed);
        stop != TakeStop::AfterPush
    }

    /// Pops a segment index, `Ok(None)` when empty. Without a lane: a taker killed before
    /// it records itself as the segment's owner leaves it off the stack until a
    /// stop-the-world recovery; [`pop_taking`](Self::pop_taking) does not.
    ///
    /// # Errors
    /// [`Violation`] if the head or a link holds an index out of range.
    pub fn pop(&self) -> Result<Option<u32>, Violation> {
        self.pop_in(None, TakeStop::Never)
    }

    /// Pops a segment index for worker slot `slot` (the caller's own, registered), recording
    /// the pop in the slot's lane so that the reclaimer of a taker killed before its owner
    /// swap finds the segment ([`dead_taker`](Self::dead_taker)). `f` runs with the popped
    /// index while the lane still names it (the caller's owner swap); the lane is cleared
    /// after it. `Ok(None)` when empty; `stop` is [`TakeStop::Never`] but in models.
    ///
    /// # Errors
    /// [`Violation`] if the head or a link holds an index out of range.
    #[doc(hidden)]
    pub fn pop_taking<R>(&self, slot: u32, stop: TakeStop, f: impl FnOnce(u32) -> R) -> Result<Option<R>, Violation> {
        let Some(lane) = self.lanes.get(slot as usize) else {
            return Ok(self.pop()?.map(f));
        };
        let _one_pop_per_lane = lane_lock(slot);
        // `None` also when the model's taker stopped inside (its lane stays as it was).
        let Some(index) = self.pop_in(Some((slot, &lane.taking)), stop)? else {
            return Ok(None);
        };
        let r = f(index);
        if stop == TakeStop::AfterOwner {
            return Ok(None);
        }
        // Relaxed: the owner swap in `f` is what a reclaimer acts on; it reads this word
        // only after this process died, or helps it with a CAS that expects an ATTEMPT.
        let _ = lane.taking.swap(0, Ordering::Relaxed);
        Ok(Some(r))
    }

    fn pop_in(&self, lane: Option<(u32, &AtomicU64)>, stop: TakeStop) -> Result<Option<u32>, Violation> {
        // Acquire: pairs with the Release CAS in `push` (and the AcqRel one here), so the
        // link we read below is the one written before that push, and the lane `help`
        // reads is the one written before the pop that wrote this head.
        let mut cur = self.head.head.load(Ordering::Acquire);
        loop {
            let top = head_top(cur);
            if top == 0 {
                self.idle(lane);
                return Ok(None);
            }
            let idx = top - 1;
            let Some(ctl) = self.controls.get(idx as usize) else {
                self.idle(lane);
                return Err(self.violation("free-stack head", top));
            };
            // Relaxed: ordered by the Acquire load of `cur`; if the segment was popped and
            // re-pushed meanwhile, the tag makes the CAS below fail and we retry.
            let next = ctl.next_free.load(Ordering::Relaxed);
            if next as usize > self.controls.len() {
                // Possibly a stale read racing with a re-push; only an error if the head
                // did not move.
                // Acquire: as above.
                let again = self.head.head.load(Ordering::Acquire);
                if again == cur {
                    self.idle(lane);
                    return Err(self.violation("free-stack link", next));
                }
                cur = again;
                continue;
            }
            self.help(cur);
            let lane_field = match lane {
                Some((slot, word)) => {
                    // Relaxed: published by the Release half of the CAS below (helpers
                    // read it after an Acquire of the head that CAS wrote).
                    let _ = word.swap(attempt(idx, head_tag(cur)), Ordering::Relaxed);
                    if stop == TakeStop::AfterAttempt {
                        return Ok(None);
                    }
                    u64::from(slot) + 1
                }
                None => 0,
            };
            let new = next_head(cur, lane_field, u64::from(next));
            // AcqRel on success: Acquire pairs with the Release CAS of the push that put
            // `idx` there (the segment's last writes happen-before our use); Release
            // publishes our lane's ATTEMPT and the help above to whoever reads this head
            // next. Acquire on failure: as the initial load.
            match self.head.head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // Relaxed: statistic.
                    self.head.len.fetch_sub(1, Ordering::Relaxed);
                    if let Some((_, word)) = lane {
                        if stop == TakeStop::AfterPop {
                            return Ok(None);
                        }
                        // Relaxed: helpers may CAS the same value in; a reclaimer reads it
                        // only after this process died.
                        let _ = word.swap(attempt(idx, head_tag(cur)) | WON, Ordering::Relaxed);
                        if stop == TakeStop::AfterWon {
                            return Ok(None);
                        }
                    }
                    return Ok(Some(idx));
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Clears a lane whose pop took nothing.
    fn idle(&self, lane: Option<(u32, &AtomicU64)>) {
        if let Some((_, word)) = lane {
            // Relaxed: as the clear in `pop_taking`.
            let _ = word.swap(0, Ordering::Relaxed);
        }
    }

    /// Makes the pop that wrote head `cur` (if it names a lane) known to its lane as WON,
    /// before anyone replaces that head: a taker killed right after its CAS is then found.
    fn help(&self, cur: u64) {
        let lane = head_lane(cur);
        if lane == 0 {
            return;
        }
        let Some(r) = self.lanes.get(lane as usize - 1) else {
            return; // a corrupt head: nothing to help, the stack itself is checked elsewhere
        };
        let popped_at = head_tag(cur).wrapping_sub(1) & TAG_MASK;
        // Relaxed: ordered after the taker's ATTEMPT by the caller's Acquire of `cur`
        // (the taker's CAS released it).
        let w = r.taking.load(Ordering::Relaxed);
        if w != 0 && w & WON == 0 && (w >> INDEX_BITS) & TAG_MASK == popped_at {
            // Relaxed (both): published by the caller's Release CAS of the head that
            // follows (a reclaimer Acquires the head before it reads the lane). Failure:
            // the taker said WON itself, or moved on.
            let _ = r.taking.compare_exchange(w, w | WON, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// What worker slot `slot`'s lane says its process (dead: the caller reclaims it) held
    /// off the stack: helps the current head first, so an operation that succeeded reads
    /// WON. A pop's ATTEMPT (its CAS never succeeded and never will) and a push that won
    /// are cleared: nothing of theirs is off the stack.
    pub fn dead_taker(&self, slot: u32) -> Taken {
        let Some(r) = self.lanes.get(slot as usize) else {
            return Taken::Nothing;
        };
        // Acquire: pairs with the Release (AcqRel) CASes of the head: the help of whoever
        // replaced a head naming this lane is ordered before our look at the lane below.
        let cur = self.head.head.load(Ordering::Acquire);
        self.help(cur);
        // Relaxed: ordered by the Acquire above (and our own help).
        let w = r.taking.load(Ordering::Relaxed);
        // A pop that won, or a push that did not (the segment is off the stack either way).
        if (w & WON != 0) != (w & PUSH != 0) {
            let top = (w & INDEX_MASK) as u32;
            if top >= 1 && (top as usize) <= self.controls.len() {
                return Taken::Won { index: top - 1, word: w };
            }
        }
        if w != 0 {
            self.clear_lane(slot, w);
        }
        Taken::Nothing
    }

    /// Clears lane `slot` if it still holds `word` (a reclaimer done with it).
    pub fn clear_lane(&self, slot: u32, word: u64) {
        if let Some(r) = self.lanes.get(slot as usize) {
            // Relaxed: the lane of a dead process; a reclaimer taking over re-reads it.
            let _ = r.taking.compare_exchange(word, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    #[cold]
    fn violation(&self, what: &str, value: u32) -> Violation {
        Violation {
            place: "network buffer pool".into(),
            detail: format!("{what} holds {value}, outside 0..={}", self.controls.len()),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn controls(n: usize) -> Vec<SegmentControl> {
        (0..n).map(|_| SegmentControl::default()).collect()
    }

    #[test]
    fn pops_in_reverse_push_order_and_every_operation_bumps_the_tag() {
        let head = StackHead::new();
        let ctl = controls(4);
        let s = SegmentStack::new(&head, &ctl, &[]);
        assert!(head.is_empty());
        assert_eq!(s.pop().unwrap(), None);
        for i in [0, 3, 1] {
            s.push(i);
        }
        assert_eq!(head.len(), 3);
        assert_eq!(head.raw_head(), (3 << 38) | 2, "tag 3 after three pushes, top is segment 1");
        assert_eq!(ctl[1].next_free.load(Ordering::Relaxed), 4, "the link names segment 3 as index + 1");
        assert_eq!(ctl[0].next_free.load(Ordering::Relaxed), 0, "the bottom links to nothing");
        let popped: Vec<u32> = std::iter::from_fn(|| s.pop().unwrap()).collect();
        assert_eq!(popped, [1, 3, 0]);
        assert_eq!(head.raw_head() >> 38, 6, "pops bump the tag too");
        assert!(head.is_empty());
        assert_eq!(head.len(), 0);
    }

    #[test]
    fn a_count_left_one_low_by_a_kill_reads_zero_not_wrapped() {
        let head = StackHead::new();
        let ctl = controls(2);
        let s = SegmentStack::new(&head, &ctl, &[]);
        s.push(1);
        // Relaxed: a model of a process killed after its push's CAS, before the count.
        head.len.store(0, Ordering::Relaxed);
        assert_eq!(s.pop().unwrap(), Some(1));
        assert_eq!(head.len(), 0, "the count wrapped below zero");
        s.push(1);
        assert_eq!(head.len(), 0, "one low for good, as documented");
        s.push(0);
        assert_eq!(head.len(), 1);
    }

    #[test]
    fn the_last_segment_index_round_trips() {
        let head = StackHead::new();
        let ctl = controls(3);
        let s = SegmentStack::new(&head, &ctl, &[]);
        s.push(2);
        assert_eq!(s.pop().unwrap(), Some(2));
    }

    #[test]
    fn a_head_out_of_range_is_a_violation_not_a_panic() {
        let head = StackHead::new();
        let ctl = controls(2);
        let s = SegmentStack::new(&head, &ctl, &[]);
        // index + 1 == 3 names segment 2 of 2.
        head.head.store((7 << 32) | 3, Ordering::Relaxed);
        let v = s.pop().unwrap_err();
        assert_eq!(v.place, "network buffer pool");
        assert_eq!(v.detail, "free-stack head holds 3, outside 0..=2");
        head.head.store(u64::from(u32::MAX), Ordering::Relaxed);
        assert!(s.pop().is_err());
    }

    #[test]
    fn a_link_out_of_range_is_a_violation_and_the_stack_is_left_as_it_was() {
        let head = StackHead::new();
        let ctl = controls(2);
        let s = SegmentStack::new(&head, &ctl, &[]);
        s.push(0);
        s.push(1);
        let before = head.raw_head();
        ctl[1].next_free.store(9, Ordering::Relaxed);
        let v = s.pop().unwrap_err();
        assert_eq!(v.detail, "free-stack link holds 9, outside 0..=2");
        assert_eq!(head.raw_head(), before, "nothing was taken");
        // Repaired, it pops again.
        ctl[1].next_free.store(1, Ordering::Relaxed);
        assert_eq!(s.pop().unwrap(), Some(1));
        assert_eq!(s.pop().unwrap(), Some(0));
    }

    #[test]
    fn reset_empties_it() {
        let head = StackHead::new();
        let ctl = controls(2);
        let s = SegmentStack::new(&head, &ctl, &[]);
        s.push(1);
        head.reset();
        assert!(head.is_empty());
        assert_eq!(head.len(), 0);
        assert_eq!(s.pop().unwrap(), None);
    }

    fn lanes(n: usize) -> Vec<WorkerRecord> {
        (0..n).map(|_| WorkerRecord::default()).collect()
    }

    fn lane(w: &[WorkerRecord], slot: usize) -> u64 {
        // Relaxed: single-threaded test.
        w[slot].taking.load(Ordering::Relaxed)
    }

    #[test]
    fn a_pop_through_a_lane_names_itself_in_the_head_and_clears_its_lane() {
        let (head, ctl, w) = (StackHead::new(), controls(2), lanes(3));
        let s = SegmentStack::new(&head, &ctl, &w);
        s.push(0);
        s.push(1);
        let got = s.pop_taking(2, TakeStop::Never, |i| i).unwrap();
        assert_eq!(got, Some(1));
        assert_eq!(head_lane(head.raw_head()), 3, "the head names lane 2 (+1)");
        assert_eq!(lane(&w, 2), 0, "cleared after the owner swap");
        assert_eq!(s.dead_taker(2), Taken::Nothing);
        // Empty: nothing taken, the lane stays idle.
        assert_eq!(s.pop_taking(2, TakeStop::Never, |i| i).unwrap(), Some(0));
        assert_eq!(s.pop_taking(2, TakeStop::Never, |i| i).unwrap(), None);
        assert_eq!(lane(&w, 2), 0);
    }

    #[test]
    fn a_taker_that_stops_after_its_pop_is_found_and_one_before_it_is_not() {
        for stop in [TakeStop::AfterPop, TakeStop::AfterWon, TakeStop::AfterOwner] {
            let (head, ctl, w) = (StackHead::new(), controls(2), lanes(2));
            let s = SegmentStack::new(&head, &ctl, &w);
            s.push(0);
            s.push(1);
            assert_eq!(s.pop_taking(1, stop, |i| i).unwrap(), None, "{stop:?}: the taker died");
            assert!(matches!(s.dead_taker(1), Taken::Won { index: 1, .. }), "{stop:?}");
            // Someone else's push helps first: still WON, never segment 0 (on the stack).
            s.push(1);
            assert_eq!(s.pop().unwrap(), Some(1));
            let Taken::Won { index: 1, word } = s.dead_taker(1) else { panic!("{stop:?}: lost") };
            s.clear_lane(1, word);
            assert_eq!(s.dead_taker(1), Taken::Nothing);
        }
        let (head, ctl, w) = (StackHead::new(), controls(2), lanes(2));
        let s = SegmentStack::new(&head, &ctl, &w);
        s.push(0);
        assert_eq!(s.pop_taking(1, TakeStop::AfterAttempt, |i| i).unwrap(), None);
        assert_ne!(lane(&w, 1), 0, "the attempt is written");
        assert_eq!(s.dead_taker(1), Taken::Nothing, "its CAS never happened: segment 0 is still on the stack");
        assert_eq!(lane(&w, 1), 0, "and the attempt is cleared");
        assert_eq!(s.pop().unwrap(), Some(0));
    }

    #[test]
    fn a_head_naming_a_lane_out_of_range_is_not_helped_and_still_pops() {
        let (head, ctl, w) = (StackHead::new(), controls(2), lanes(1));
        let s = SegmentStack::new(&head, &ctl, &w);
        s.push(1);
        // A peer's scribble: lane 4095 (+1), top segment 1.
        head.head.store((9 << TAG_SHIFT) | (4096 << INDEX_BITS) | 2, Ordering::Relaxed);
        assert_eq!(s.pop().unwrap(), Some(1));
        assert_eq!(s.dead_taker(7), Taken::Nothing, "a slot out of range");
    }

    #[test]
    fn the_tag_wraps_without_touching_the_lane_or_the_index() {
        let top = (1 << 24) as u64;
        let cur = (TAG_MASK << TAG_SHIFT) | (5 << INDEX_BITS) | top;
        let next = next_head(cur, 9, top);
        assert_eq!((head_tag(next), head_lane(next), u64::from(head_top(next))), (0, 9, top));
    }

    #[test]
    fn a_holder_that_stops_giving_back_is_found_before_its_push_and_not_after() {
        for (stop, off) in [(TakeStop::BeforePush, true), (TakeStop::AfterPush, false)] {
            let (head, ctl, w) = (StackHead::new(), controls(2), lanes(1));
            let s = SegmentStack::new(&head, &ctl, &w);
            s.push(0);
            s.push(1);
            let i = s.pop_taking(0, TakeStop::Never, |i| i).unwrap().unwrap();
            s.push_releasing(0, i, stop, || {});
            assert_ne!(lane(&w, 0) & PUSH, 0, "{stop:?}: the lane names the push: {:#x}", lane(&w, 0));
            let found = matches!(s.dead_taker(0), Taken::Won { index, .. } if index == i);
            assert_eq!(found, off, "{stop:?}");
        }
    }
}
