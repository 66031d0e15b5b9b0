//! Loom model of the single-producer/single-consumer ring (DESIGN.md §4.3): Lamport's ring
//! with cached indices, `RingProducer::push` / `RingConsumer::pop` over a `Ring` borrowed
//! from the arena, exactly as the data and credit rings of a channel use it.
//!
//! What is modelled: a 2-slot ring (the channel's data ring in a heap arena with
//! `ring_capacity: 2`); the producer pushes four values, retrying while the ring is full,
//! and the consumer pops until it has four, retrying while it is empty. Four values through
//! two slots wrap around twice, and the ring is found full by the producer and empty by
//! the consumer in some interleavings (the test asserts that the search reached both).
//!
//! What a failure means: a value lost, duplicated or reordered (the consumer read a slot
//! before the producer's Release store of `tail` published it, or the producer overwrote a
//! slot the consumer had not read yet because the consumer's `head` store or the
//! producer's cached-head refresh is wrong), or a spurious protocol violation (a side's
//! validation of the other's index rejected a legal value).
//!
//! A second model does the same with `push_all` batches (one value, a pair that wraps
//! around the end of the slots, one value) against a consumer that looks with `available`
//! and `peek_at` before popping: the batch must become visible all at once, never before
//! it fits, and a peeked value must be the one popped next.
//!
//! A limit of loom to keep in mind: it never lets a load read from a store that comes later
//! in program order of another thread (no load buffering), so weakening the consumer's
//! Release store of `head` to Relaxed goes unnoticed here; the producer's Release store of
//! `tail` and both Acquire loads are checked.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::memory::{Arena, RingKind};
use shmflow::ring::{Ring, RingConsumer, RingProducer};
use shmflow::PushError;
use std::sync::Arc;

// Counters outside the model (plain std atomics, not loom's): how often the search saw the
// ring full at the producer and empty at the consumer, to prove both states were explored.
#[allow(clippy::disallowed_types)]
static FULL_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[allow(clippy::disallowed_types)]
static EMPTY_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const VALUES: u64 = 4;

/// Distinct, non-zero values (a zeroed slot never passes for one).
fn value(i: u64) -> u64 {
    0xA0 + i
}

fn data_ring(arena: &Arena) -> Ring<'_> {
    Ring::new(&arena.channels()[0].data, arena.ring_slots(0, RingKind::Data))
}

/// Whether a push went through (false: the ring was full); a violation fails the model.
fn pushed(r: Result<(), PushError>) -> bool {
    match r {
        Ok(()) => true,
        Err(PushError::Full) => false,
        Err(e) => panic!("the consumer's head is valid: {e}"),
    }
}

fn place() -> String {
    "loom data ring".into()
}

#[test]
fn push_pop_wrap_around_full_and_empty() {
    common::check("spsc_ring::push_pop_wrap_around_full_and_empty", Some(3), || {
        let arena = common::tiny_arena();
        assert_eq!(data_ring(&arena).capacity(), 2);
        // Both sides attach before the exchange starts, as a channel's two ends do at open.
        let mut producer = RingProducer::attach(&data_ring(&arena));
        let mut consumer = RingConsumer::attach(&data_ring(&arena));

        let p = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let ring = data_ring(&arena);
                for i in 0..VALUES {
                    while !pushed(producer.push(&ring, value(i), &place)) {
                        // Relaxed: statistic outside the model.
                        FULL_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        thread::yield_now();
                    }
                }
            })
        };
        let c = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let ring = data_ring(&arena);
                let mut got = Vec::new();
                while got.len() < VALUES as usize {
                    match consumer.pop(&ring, &place).expect("the producer's tail is valid") {
                        Some(v) => got.push(v),
                        None => {
                            // Relaxed: statistic outside the model.
                            EMPTY_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            thread::yield_now();
                        }
                    }
                }
                assert!(consumer.pop(&ring, &place).unwrap().is_none(), "more values than were pushed");
                got
            })
        };
        p.join().unwrap();
        let got = c.join().unwrap();
        assert_eq!(got, (0..VALUES).map(value).collect::<Vec<_>>(), "values lost, duplicated or reordered");
        assert!(data_ring(&arena).is_empty());
    });
    // Relaxed (both): the search is over.
    assert!(FULL_SEEN.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution found the ring full");
    assert!(EMPTY_SEEN.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution found the ring empty");
}

/// The batch path the channel uses for descriptors: `push_all` publishes several values
/// with one Release store of `tail`, and only when all of them fit. The producer pushes
/// one value, then a pair (which needs the ring empty and wraps around the end of the
/// slots), then one more; the consumer checks with `available` / `peek_at` before each pop
/// that the value it is about to take is the one it then pops.
#[test]
fn push_all_batches_wrap_around() {
    common::check("spsc_ring::push_all_batches_wrap_around", Some(3), || {
        let arena = common::tiny_arena();
        let mut producer = RingProducer::attach(&data_ring(&arena));
        let mut consumer = RingConsumer::attach(&data_ring(&arena));

        let p = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let ring = data_ring(&arena);
                let batches: [&[u64]; 3] = [&[value(0)], &[value(1), value(2)], &[value(3)]];
                for batch in batches {
                    while !pushed(producer.push_all(&ring, batch, &place)) {
                        thread::yield_now();
                    }
                }
            })
        };
        let c = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let ring = data_ring(&arena);
                let mut got = Vec::new();
                while got.len() < VALUES as usize {
                    let ready = consumer.available(&ring, &place).expect("the producer's tail is valid");
                    assert!(ready <= ring.capacity());
                    if ready == 0 {
                        thread::yield_now();
                        continue;
                    }
                    let peeked = consumer.peek_at(&ring, 0);
                    let v = consumer.pop(&ring, &place).expect("the producer's tail is valid");
                    assert!(v.is_some() && v == peeked, "peeked {peeked:?}, popped {v:?}");
                    got.extend(v);
                }
                got
            })
        };
        p.join().unwrap();
        let got = c.join().unwrap();
        assert_eq!(got, (0..VALUES).map(value).collect::<Vec<_>>(), "values lost, duplicated or reordered");
    });
}
