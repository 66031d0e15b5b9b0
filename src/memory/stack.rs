//! A lock-free stack of segment indices (Treiber) with a tag against ABA: the arena-wide
//! free list of the NetworkBufferPool (DESIGN.md §4.1).
//!
//! ```text
//!  head: u64 = [ tag : 32 | index + 1 : 32 ]     index + 1 == 0 means empty
//!  link: SegmentControl::next_free = index + 1 of the next segment (0 = end)
//! ```
//!
//! Every successful CAS on `head` bumps the tag, so a head value that was popped and pushed
//! back between another process's load and CAS (ABA) no longer compares equal. The tag wraps
//! after 2^32 operations; a process would have to stall in the middle of one pop for that
//! long for ABA to return.
//!
//! Indices read from the arena are validated: a link or head out of range (a faulty peer)
//! is a [`Violation`] (an [`Error::ProtocolViolation`](crate::Error::ProtocolViolation) at the
//! API), never an out-of-bounds read.

use super::blocks::SegmentControl;
use crate::error::Violation;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The head of a [`SegmentStack`]. `#[repr(C)]`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct StackHead {
    /// `[tag:32 | index+1:32]`; `index + 1` in `0..=segment_count`.
    head: AtomicU64,
    /// Approximate number of segments on the stack (for metrics only).
    len: AtomicU32,
}

impl StackHead {
    /// An empty stack.
    pub fn new() -> Self {
        Self { head: AtomicU64::new(0), len: AtomicU32::new(0) }
    }

    /// Approximate length: exact when nothing is in flight.
    pub fn len(&self) -> u32 {
        // Relaxed: a statistic, read without ordering needs.
        self.len.load(Ordering::Relaxed)
    }

    /// The raw head word `[tag | index + 1]` (for observers).
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
        self.head.load(Ordering::Acquire) as u32 == 0
    }
}

/// A view of a stack head and the control blocks that hold its links.
#[derive(Clone, Copy)]
pub struct SegmentStack<'a> {
    head: &'a StackHead,
    controls: &'a [SegmentControl],
}

impl<'a> SegmentStack<'a> {
    /// A stack over `controls` (whose `next_free` fields are the links).
    pub fn new(head: &'a StackHead, controls: &'a [SegmentControl]) -> Self {
        Self { head, controls }
    }

    /// Pushes segment `index`, which the caller owns and nobody else can reach.
    pub fn push(&self, index: u32) {
        debug_assert!((index as usize) < self.controls.len());
        let link = &self.controls[index as usize].next_free;
        // Relaxed: the first load only seeds the CAS loop; the CAS checks it.
        let mut cur = self.head.head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below, which orders this store before it.
            link.store(cur as u32, Ordering::Relaxed);
            let next = (((cur >> 32) + 1) << 32) | u64::from(index + 1);
            // Release: pairs with the Acquire load/CAS in `pop`, making the link (and the
            // caller's last writes to the segment) visible to whoever pops it.
            match self.head.head.compare_exchange_weak(cur, next, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        // Relaxed: statistic.
        self.head.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Pops a segment index, `Ok(None)` when empty.
    ///
    /// # Errors
    /// [`Violation`] if the head or a link holds an index out of range.
    pub fn pop(&self) -> Result<Option<u32>, Violation> {
        // Acquire: pairs with the Release CAS in `push`, so the link we read below is the
        // one written before that push.
        let mut cur = self.head.head.load(Ordering::Acquire);
        loop {
            let top = cur as u32;
            if top == 0 {
                return Ok(None);
            }
            let idx = top - 1;
            let Some(ctl) = self.controls.get(idx as usize) else {
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
                    return Err(self.violation("free-stack link", next));
                }
                cur = again;
                continue;
            }
            let new = (((cur >> 32) + 1) << 32) | u64::from(next);
            // Acquire on success: pairs with the Release CAS of the push that put `idx`
            // there (the segment's last writes happen-before our use). Acquire on failure:
            // as the initial load.
            match self.head.head.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // Relaxed: statistic.
                    self.head.len.fetch_sub(1, Ordering::Relaxed);
                    return Ok(Some(idx));
                }
                Err(actual) => cur = actual,
            }
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
        let s = SegmentStack::new(&head, &ctl);
        assert!(head.is_empty());
        assert_eq!(s.pop().unwrap(), None);
        for i in [0, 3, 1] {
            s.push(i);
        }
        assert_eq!(head.len(), 3);
        assert_eq!(head.raw_head(), (3 << 32) | 2, "tag 3 after three pushes, top is segment 1");
        assert_eq!(ctl[1].next_free.load(Ordering::Relaxed), 4, "the link names segment 3 as index + 1");
        assert_eq!(ctl[0].next_free.load(Ordering::Relaxed), 0, "the bottom links to nothing");
        let popped: Vec<u32> = std::iter::from_fn(|| s.pop().unwrap()).collect();
        assert_eq!(popped, [1, 3, 0]);
        assert_eq!(head.raw_head() >> 32, 6, "pops bump the tag too");
        assert!(head.is_empty());
        assert_eq!(head.len(), 0);
    }

    #[test]
    fn the_last_segment_index_round_trips() {
        let head = StackHead::new();
        let ctl = controls(3);
        let s = SegmentStack::new(&head, &ctl);
        s.push(2);
        assert_eq!(s.pop().unwrap(), Some(2));
    }

    #[test]
    fn a_head_out_of_range_is_a_violation_not_a_panic() {
        let head = StackHead::new();
        let ctl = controls(2);
        let s = SegmentStack::new(&head, &ctl);
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
        let s = SegmentStack::new(&head, &ctl);
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
        let s = SegmentStack::new(&head, &ctl);
        s.push(1);
        head.reset();
        assert!(head.is_empty());
        assert_eq!(head.len(), 0);
        assert_eq!(s.pop().unwrap(), None);
    }
}
