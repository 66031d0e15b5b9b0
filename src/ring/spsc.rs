//! A single-producer / single-consumer ring of `u64` slots in the arena (Lamport's ring
//! with cached indices, DESIGN.md §4.3).
//!
//! ```text
//!  RingHeader.head  (own lines, written by the consumer)   positions only grow;
//!  RingHeader.tail  (own lines, written by the producer)   slot = position & (cap - 1)
//!  invariant: head <= tail <= head + cap
//! ```
//!
//! Each side keeps its own position privately and a cached copy of the other side's,
//! refreshed (one cross-core load) only when the ring looks full or empty. The slots are
//! atomics because the other side is another process we do not trust: a racy value is then
//! a wrong value (validated by the caller), never undefined behaviour. Positions read from
//! the peer are validated against the invariant.

use crate::error::{PushError, Violation};
use crate::memory::RingHeader;
use crate::sync::{AtomicU64, Ordering};

/// A ring: its header and slots, borrowed from the arena (or the heap under loom).
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    header: &'a RingHeader,
    slots: &'a [AtomicU64],
}

impl<'a> Ring<'a> {
    /// A ring over `header` and `slots` (`slots.len()` a power of two).
    pub fn new(header: &'a RingHeader, slots: &'a [AtomicU64]) -> Self {
        debug_assert!(slots.len().is_power_of_two());
        Self { header, slots }
    }

    /// Capacity in slots.
    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Entries in the ring now, as seen by an observer (for metrics), clamped to capacity.
    pub fn len(&self) -> u64 {
        // Relaxed (both): a statistic; clamped against torn views.
        let h = self.header.head.load(Ordering::Relaxed);
        let t = self.header.tail.load(Ordering::Relaxed);
        t.saturating_sub(h).min(self.capacity())
    }

    /// Whether the ring looks empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The producer side's private state.
#[derive(Debug, Clone)]
pub struct RingProducer {
    tail: u64,
    cached_head: u64,
}

/// The consumer side's private state.
#[derive(Debug, Clone)]
pub struct RingConsumer {
    head: u64,
    cached_tail: u64,
}

#[cold]
fn violation(place: &dyn Fn() -> String, detail: String) -> Violation {
    Violation { place: place(), detail }
}

impl RingProducer {
    /// Takes the producer side of `ring`, continuing from its current tail.
    pub fn attach(ring: &Ring<'_>) -> Self {
        // Relaxed (both): before any exchange on this ring; the first refresh validates.
        let tail = ring.header.tail.load(Ordering::Relaxed);
        let head = ring.header.head.load(Ordering::Relaxed);
        // A head ahead of the tail or more than a ring behind it was not written by an
        // honest consumer: clamp so `tail - cached_head <= capacity` holds from here on. A
        // head more than a ring behind makes the ring look full, and the first push's
        // refresh reports it; a head ahead makes it look empty to us, and the consumer's
        // refresh reports a tail behind its head (as long as the tail has not passed it).
        Self { tail, cached_head: head.min(tail).max(tail.saturating_sub(ring.capacity())) }
    }

    /// Pushes `value`.
    ///
    /// # Errors
    /// [`PushError::Full`] when the ring has no room (nothing is pushed);
    /// [`PushError::Violation`] if the consumer's head breaks the invariant.
    #[inline]
    pub fn push(&mut self, ring: &Ring<'_>, value: u64, place: &dyn Fn() -> String) -> Result<(), PushError> {
        let cap = ring.capacity();
        if self.tail - self.cached_head >= cap {
            // Acquire: pairs with the Release store of head in `RingConsumer::pop`: the
            // consumer's read of a slot happens-before we overwrite it.
            let head = ring.header.head.load(Ordering::Acquire);
            if head < self.cached_head || head > self.tail {
                return Err(
                    violation(place, format!("ring head {head} outside {}..={}", self.cached_head, self.tail)).into()
                );
            }
            self.cached_head = head;
            if self.tail - head >= cap {
                return Err(PushError::Full);
            }
        }
        let Some(next) = self.tail.checked_add(1) else {
            return Err(violation(place, format!("ring tail {} cannot advance", self.tail)).into());
        };
        // Relaxed: published by the Release store of tail below.
        ring.slots[(self.tail & (cap - 1)) as usize].store(value, Ordering::Relaxed);
        self.tail = next;
        // Release: pairs with the Acquire load of tail in `RingConsumer::pop`.
        ring.header.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Pushes `values` together (one publication).
    ///
    /// # Errors
    /// [`PushError::Full`] when they do not all fit (nothing is pushed); else as
    /// [`push`](Self::push).
    pub fn push_all(&mut self, ring: &Ring<'_>, values: &[u64], place: &dyn Fn() -> String) -> Result<(), PushError> {
        let cap = ring.capacity();
        let n = values.len() as u64;
        let Some(end) = self.tail.checked_add(n) else {
            return Err(violation(place, format!("ring tail {} cannot advance by {n}", self.tail)).into());
        };
        if self.tail - self.cached_head + n > cap {
            // Acquire: as in `push`.
            let head = ring.header.head.load(Ordering::Acquire);
            if head < self.cached_head || head > self.tail {
                return Err(
                    violation(place, format!("ring head {head} outside {}..={}", self.cached_head, self.tail)).into()
                );
            }
            self.cached_head = head;
            if self.tail - head + n > cap {
                return Err(PushError::Full);
            }
        }
        for (i, v) in values.iter().enumerate() {
            // Relaxed: published by the Release store of tail below.
            ring.slots[((self.tail + i as u64) & (cap - 1)) as usize].store(*v, Ordering::Relaxed);
        }
        self.tail = end;
        // Release: pairs with the Acquire load of tail in `RingConsumer::pop`.
        ring.header.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Free slots now (refreshes the consumer's head: one cross-core load, so this is for
    /// slow paths such as events).
    pub fn free(&mut self, ring: &Ring<'_>) -> u64 {
        // Acquire: as in `push`; a bad value is ignored here and caught by the next push.
        let head = ring.header.head.load(Ordering::Acquire);
        if head >= self.cached_head && head <= self.tail {
            self.cached_head = head;
        }
        ring.capacity() - (self.tail - self.cached_head)
    }

    /// Entries pushed and (as far as we know) not consumed.
    pub fn pending(&self) -> u64 {
        self.tail - self.cached_head
    }
}

impl RingConsumer {
    /// Takes the consumer side of `ring`, continuing from its current head.
    pub fn attach(ring: &Ring<'_>) -> Self {
        // Relaxed: before any exchange; the first refresh validates.
        let head = ring.header.head.load(Ordering::Relaxed);
        Self { head, cached_tail: head }
    }

    /// Pops a value; `Ok(None)` when empty.
    ///
    /// # Errors
    /// [`Violation`] if the producer's tail breaks the invariant.
    #[inline]
    pub fn pop(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<Option<u64>, Violation> {
        if self.head == self.cached_tail && !self.refresh(ring, place)? {
            return Ok(None);
        }
        let cap = ring.capacity();
        // Relaxed: ordered after the producer's slot store by the Acquire load of tail in
        // `refresh`.
        let v = ring.slots[(self.head & (cap - 1)) as usize].load(Ordering::Relaxed);
        self.head += 1;
        // Release: pairs with the Acquire load of head in `RingProducer::push`; our read
        // of the slot happens-before the producer reuses it.
        ring.header.head.store(self.head, Ordering::Release);
        Ok(Some(v))
    }

    /// Entries ready to pop (refreshing the cached tail).
    ///
    /// # Errors
    /// As [`pop`](Self::pop).
    pub fn available(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<u64, Violation> {
        self.refresh(ring, place)?;
        Ok(self.cached_tail - self.head)
    }

    /// The `i`-th entry after the head, without consuming (for reporting what a priority
    /// event overtook). `i` must be below [`available`](Self::available).
    pub fn peek_at(&self, ring: &Ring<'_>, i: u64) -> Option<u64> {
        if self.head + i >= self.cached_tail {
            return None;
        }
        // Relaxed: ordered by the Acquire load of tail in `available`.
        Some(ring.slots[((self.head + i) & (ring.capacity() - 1)) as usize].load(Ordering::Relaxed))
    }

    /// Whether an entry is ready (refreshing the cached tail if needed).
    ///
    /// # Errors
    /// As [`pop`](Self::pop).
    #[inline]
    pub fn has_next(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<bool, Violation> {
        Ok(self.head != self.cached_tail || self.refresh(ring, place)?)
    }

    fn refresh(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<bool, Violation> {
        // Acquire: pairs with the Release store of tail in `RingProducer::push`.
        let tail = ring.header.tail.load(Ordering::Acquire);
        if tail < self.cached_tail || tail - self.head > ring.capacity() {
            return Err(violation(
                place,
                format!(
                    "ring tail {tail} outside {}..={}",
                    self.cached_tail,
                    self.head.saturating_add(ring.capacity())
                ),
            ));
        }
        self.cached_tail = tail;
        Ok(tail != self.head)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn place() -> String {
        "test ring".into()
    }

    /// A heap ring of `cap` slots.
    fn parts(cap: usize) -> (RingHeader, Vec<AtomicU64>) {
        (RingHeader::default(), (0..cap).map(|_| AtomicU64::new(0)).collect())
    }

    #[test]
    fn a_full_ring_says_full_and_pushes_nothing_until_a_pop_makes_room() {
        let (h, slots) = parts(4);
        let ring = Ring::new(&h, &slots);
        let mut p = RingProducer::attach(&ring);
        let mut c = RingConsumer::attach(&ring);
        for v in 10..14 {
            p.push(&ring, v, &place).unwrap();
        }
        assert!(matches!(p.push(&ring, 99, &place), Err(PushError::Full)));
        assert!(matches!(p.push_all(&ring, &[99], &place), Err(PushError::Full)));
        assert_eq!(ring.len(), 4);
        assert_eq!(c.pop(&ring, &place).unwrap(), Some(10));
        p.push(&ring, 14, &place).unwrap();
        let got: Vec<u64> = (0..4).map(|_| c.pop(&ring, &place).unwrap().unwrap()).collect();
        assert_eq!(got, [11, 12, 13, 14], "the refused 99 never went in");
        assert_eq!(c.pop(&ring, &place).unwrap(), None);
    }

    #[test]
    fn push_all_is_all_or_nothing() {
        let (h, slots) = parts(4);
        let ring = Ring::new(&h, &slots);
        let mut p = RingProducer::attach(&ring);
        let mut c = RingConsumer::attach(&ring);
        p.push_all(&ring, &[1, 2, 3], &place).unwrap();
        assert!(matches!(p.push_all(&ring, &[4, 5], &place), Err(PushError::Full)));
        assert_eq!(c.available(&ring, &place).unwrap(), 3, "nothing of the refused batch is visible");
        assert_eq!(c.peek_at(&ring, 2), Some(3));
        assert_eq!(c.peek_at(&ring, 3), None);
        assert!(matches!(p.push_all(&ring, &[1, 2, 3, 4, 5], &place), Err(PushError::Full)));
        p.push_all(&ring, &[4], &place).unwrap();
        assert_eq!(p.free(&ring), 0);
    }

    #[test]
    fn positions_wrap_around_the_slots_many_times() {
        let (h, slots) = parts(2);
        let ring = Ring::new(&h, &slots);
        let mut p = RingProducer::attach(&ring);
        let mut c = RingConsumer::attach(&ring);
        for v in 0..1000u64 {
            p.push(&ring, v, &place).unwrap();
            assert_eq!(c.pop(&ring, &place).unwrap(), Some(v));
        }
        assert_eq!(h.tail.load(Ordering::Relaxed), 1000);
        assert_eq!(h.head.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn a_head_from_a_rogue_consumer_is_a_violation_not_a_panic() {
        let (h, slots) = parts(2);
        let ring = Ring::new(&h, &slots);
        let mut p = RingProducer::attach(&ring);
        p.push(&ring, 1, &place).unwrap();
        p.push(&ring, 2, &place).unwrap();
        // Ahead of the tail: the producer refreshes it only when the ring looks full.
        h.head.store(u64::MAX, Ordering::Relaxed);
        match p.push(&ring, 3, &place) {
            Err(PushError::Violation(v)) => {
                assert_eq!(v.place, "test ring");
                assert!(v.detail.contains("ring head 18446744073709551615 outside 0..=2"), "{v}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
        // A producer attaching to such a header clamps the head to its tail instead of
        // trusting it, and reports the head at its first refresh.
        let mut q = RingProducer::attach(&ring);
        assert_eq!(q.pending(), 0);
        q.push_all(&ring, &[3, 4], &place).unwrap();
        assert!(matches!(q.push_all(&ring, &[5], &place), Err(PushError::Violation(_))));
    }

    #[test]
    fn a_tail_from_a_rogue_producer_is_a_violation_not_a_panic() {
        let (h, slots) = parts(4);
        let ring = Ring::new(&h, &slots);
        let mut c = RingConsumer::attach(&ring);
        // More than a ring ahead of the head.
        h.tail.store(5, Ordering::Relaxed);
        let v = c.pop(&ring, &place).unwrap_err();
        assert!(v.detail.contains("ring tail 5 outside 0..=4"), "{v}");
        assert!(c.has_next(&ring, &place).is_err());
        // Going back is as bad.
        h.tail.store(2, Ordering::Relaxed);
        assert_eq!(c.pop(&ring, &place).unwrap(), Some(0));
        h.tail.store(0, Ordering::Relaxed);
        assert!(c.available(&ring, &place).is_err());
        // The violation becomes the crate's ProtocolViolation at the API.
        let e: crate::Error = c.available(&ring, &place).unwrap_err().into();
        assert!(matches!(e, crate::Error::ProtocolViolation { .. }), "{e}");
    }

    #[test]
    fn a_tail_at_the_end_of_the_position_space_cannot_advance() {
        let (h, slots) = parts(2);
        h.tail.store(u64::MAX, Ordering::Relaxed);
        h.head.store(u64::MAX, Ordering::Relaxed);
        let ring = Ring::new(&h, &slots);
        let mut p = RingProducer::attach(&ring);
        assert!(matches!(p.push(&ring, 1, &place), Err(PushError::Violation(_))));
        assert!(matches!(p.push_all(&ring, &[1], &place), Err(PushError::Violation(_))));
        assert_eq!(h.tail.load(Ordering::Relaxed), u64::MAX, "nothing was published");
    }
}
