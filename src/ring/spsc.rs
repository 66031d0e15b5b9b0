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

use crate::error::{Error, Result};
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

fn violation(place: &dyn Fn() -> String, detail: String) -> Error {
    Error::ProtocolViolation { place: place(), detail }
}

impl RingProducer {
    /// Takes the producer side of `ring`, continuing from its current tail.
    pub fn attach(ring: &Ring<'_>) -> Self {
        // Relaxed (both): before any exchange on this ring; the first refresh validates.
        let tail = ring.header.tail.load(Ordering::Relaxed);
        let head = ring.header.head.load(Ordering::Relaxed);
        // A head ahead of the tail or more than a ring behind it was not written by an
        // honest consumer: clamp so `tail - cached_head <= capacity` holds from here on (the
        // ring looks full, and the first push's refresh reports the bad head).
        Self { tail, cached_head: head.min(tail).max(tail.saturating_sub(ring.capacity())) }
    }

    /// Pushes `value`; `Ok(false)` when the ring is full.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the consumer's head breaks the invariant.
    #[inline]
    pub fn push(&mut self, ring: &Ring<'_>, value: u64, place: &dyn Fn() -> String) -> Result<bool> {
        let cap = ring.capacity();
        if self.tail - self.cached_head >= cap {
            // Acquire: pairs with the Release store of head in `RingConsumer::pop`: the
            // consumer's read of a slot happens-before we overwrite it.
            let head = ring.header.head.load(Ordering::Acquire);
            if head < self.cached_head || head > self.tail {
                return Err(violation(place, format!("ring head {head} outside {}..={}", self.cached_head, self.tail)));
            }
            self.cached_head = head;
            if self.tail - head >= cap {
                return Ok(false);
            }
        }
        let Some(next) = self.tail.checked_add(1) else {
            return Err(violation(place, format!("ring tail {} cannot advance", self.tail)));
        };
        // Relaxed: published by the Release store of tail below.
        ring.slots[(self.tail & (cap - 1)) as usize].store(value, Ordering::Relaxed);
        self.tail = next;
        // Release: pairs with the Acquire load of tail in `RingConsumer::pop`.
        ring.header.tail.store(self.tail, Ordering::Release);
        Ok(true)
    }

    /// Pushes `values` together (one publication); `Ok(false)` when they do not all fit.
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn push_all(&mut self, ring: &Ring<'_>, values: &[u64], place: &dyn Fn() -> String) -> Result<bool> {
        let cap = ring.capacity();
        let n = values.len() as u64;
        let Some(end) = self.tail.checked_add(n) else {
            return Err(violation(place, format!("ring tail {} cannot advance by {n}", self.tail)));
        };
        if self.tail - self.cached_head + n > cap {
            // Acquire: as in `push`.
            let head = ring.header.head.load(Ordering::Acquire);
            if head < self.cached_head || head > self.tail {
                return Err(violation(place, format!("ring head {head} outside {}..={}", self.cached_head, self.tail)));
            }
            self.cached_head = head;
            if self.tail - head + n > cap {
                return Ok(false);
            }
        }
        for (i, v) in values.iter().enumerate() {
            // Relaxed: published by the Release store of tail below.
            ring.slots[((self.tail + i as u64) & (cap - 1)) as usize].store(*v, Ordering::Relaxed);
        }
        self.tail = end;
        // Release: pairs with the Acquire load of tail in `RingConsumer::pop`.
        ring.header.tail.store(self.tail, Ordering::Release);
        Ok(true)
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
    /// [`Error::ProtocolViolation`] if the producer's tail breaks the invariant.
    #[inline]
    pub fn pop(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<Option<u64>> {
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
    pub fn available(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<u64> {
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
    pub fn has_next(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<bool> {
        Ok(self.head != self.cached_tail || self.refresh(ring, place)?)
    }

    fn refresh(&mut self, ring: &Ring<'_>, place: &dyn Fn() -> String) -> Result<bool> {
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
