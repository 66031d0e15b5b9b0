//! Loom model of the arena-wide segment free list (DESIGN.md §4.1): the tagged Treiber
//! stack `SegmentStack` that backs the NetworkBufferPool, as it ships, on a heap arena of
//! two segments.
//!
//! What is modelled:
//! - the ABA race: thread A pops while thread B pops both segments and pushes the first one
//!   back, so the head A read returns to the same index with a different next link; the tag
//!   must make A's stale CAS fail;
//! - concurrent pop/push rounds from two threads, where every segment changes hands between
//!   threads, with a write to the segment's payload after each pop;
//! - the same rounds through `NetworkBufferPool::request` and `MemorySegment`'s drop, which
//!   add the owner record of each segment's control block.
//!
//! What a failure means: a segment handed out twice (two threads hold the same index, or
//! loom reports a data race on a segment's witness cells: two holders not ordered by a
//! push/pop hand-over), a segment lost (it never comes back when everything is pushed), or
//! a hand-over whose Release push / Acquire pop does not order the previous owner's payload
//! writes before the next owner's (a witness-cell race or causality violation), or a
//! `request` that finds the segment it popped still owned (its owner record is not ordered
//! by the hand-over).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::NetworkBufferPool;
use shmflow::memory::{Arena, Owner};
use shmflow::sync::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Takes a segment off the arena's free stack and writes `tag` into its first byte.
fn take(arena: &Arena, tag: u8) -> Option<u32> {
    let index = arena.free_stack().pop().expect("the free stack is not corrupt")?;
    // SAFETY: the segment was just popped, so (if the stack is correct, which is what this
    // model checks) this thread is its only holder; byte 0 is inside the segment. Loom's
    // witness cell for the byte reports any holder this write is not ordered with.
    unsafe { arena.segment_bytes_mut(index, 0, 1)[0] = tag };
    Some(index)
}

/// Checks that segment `index` still holds `tag` (nobody else wrote it while we held it),
/// then pushes it back.
fn give_back(arena: &Arena, index: u32, tag: u8) {
    // SAFETY: this thread holds the segment (it popped it and has not pushed it yet).
    let seen = unsafe { arena.segment_bytes(index, 0, 1)[0] };
    assert_eq!(seen, tag, "segment {index} was written by someone else while this thread held it");
    arena.free_stack().push(index);
}

/// Pops everything left and checks that exactly the arena's segments come back, once each.
fn assert_all_free(arena: &Arena) {
    let mut seen = BTreeSet::new();
    while let Some(i) = arena.free_stack().pop().expect("the free stack is not corrupt") {
        assert!(seen.insert(i), "segment {i} is on the free stack twice");
    }
    let all: BTreeSet<u32> = (0..arena.segment_count()).collect();
    assert_eq!(seen, all, "segments lost from the free stack");
    assert_eq!(arena.header_atomics().free_stack.len(), 0);
    for i in seen {
        arena.free_stack().push(i);
    }
}

/// A pops once; B pops twice and pushes the first back. Whatever the interleaving, A and
/// B never hold the same segment, and all segments come back.
#[test]
fn aba_pop_against_pop_pop_push() {
    common::check("free_stack::aba_pop_against_pop_pop_push", None, || {
        let arena = common::tiny_arena();

        let a = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || take(&arena, b'A'))
        };
        let b = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let first = take(&arena, b'B');
                let second = take(&arena, b'b');
                if let Some(i) = first {
                    give_back(&arena, i, b'B');
                }
                second
            })
        };
        let held_a = a.join().unwrap();
        let held_b = b.join().unwrap();

        // Two segments and at most one held by each thread: both may hold one, never the
        // same one (a successful stale CAS in A would hand B's second segment to A too).
        if let (Some(x), Some(y)) = (held_a, held_b) {
            assert_ne!(x, y, "segment {x} handed out twice");
        }
        // One of them always succeeds: B's first pop or A's pop finds a segment on top.
        assert!(held_a.is_some() || held_b.is_some());
        if let Some(i) = held_a {
            give_back(&arena, i, b'A');
        }
        if let Some(i) = held_b {
            give_back(&arena, i, b'b');
        }
        assert_all_free(&arena);
    });
}

/// Two threads each run two take-use-give-back rounds over the two segments, so segments
/// move between threads through the stack; every hand-over must order the payload writes.
#[test]
fn concurrent_pop_push_rounds() {
    common::check("free_stack::concurrent_pop_push_rounds", Some(3), || {
        let arena = common::tiny_arena();
        let worker = |tag: u8| {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                for round in 0..2u8 {
                    let tag = tag + round;
                    // Two segments, two threads, each holding at most one: never empty.
                    let i = take(&arena, tag).expect("a segment is free for each thread");
                    give_back(&arena, i, tag);
                }
            })
        };
        let t1 = worker(b'a');
        let t2 = worker(b'x');
        t1.join().unwrap();
        t2.join().unwrap();
        assert_all_free(&arena);
    });
}

/// The same rounds through the `NetworkBufferPool`, which adds the ownership record of
/// each control block: `request` claims the segment (and reports a segment on the free
/// stack that someone still owns), dropping the `MemorySegment` marks it free and pushes
/// it. No claim may ever find the segment owned, and all segments end free.
#[test]
fn network_pool_request_and_recycle() {
    common::check("free_stack::network_pool_request_and_recycle", Some(3), || {
        let arena = common::tiny_arena();
        let worker = |pool_id: u32| {
            let pool = NetworkBufferPool::new(Arc::clone(&arena));
            thread::spawn(move || {
                for round in 0..2u8 {
                    let tag = (pool_id as u8) * 16 + round;
                    let mut segment = pool
                        .request(Owner::Pool { pool: pool_id, worker: 0 }, pool_id + 1)
                        .expect("never a segment on the free stack that someone owns")
                        .expect("a segment is free for each thread");
                    segment.as_mut_slice()[0] = tag;
                    assert_eq!(segment.as_slice()[0], tag, "written by someone else while held");
                    pool.recycle(segment);
                }
            })
        };
        let t1 = worker(1);
        let t2 = worker(2);
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(NetworkBufferPool::new(Arc::clone(&arena)).available(), 2);
        for control in arena.controls() {
            // Relaxed: every thread has been joined.
            assert_eq!(Owner::unpack(control.owner.load(Ordering::Relaxed)), Owner::Free);
        }
        assert_all_free(&arena);
    });
}
