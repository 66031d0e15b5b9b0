//! Loom model of the Flink transport's channel handshake (`ffi/src/handshake.rs`): a
//! consumer TaskManager claims a channel block as `PROBING_BY | pid`, writes the route and
//! opens it; the producer TaskManager takes it; either end closes first, the last one frees
//! the block; a consumer that closes before the producer took the channel leaves it to the
//! producer's `take`, which frees it.
//!
//! The shipped file is compiled here by path (the ffi crate itself is a cdylib with JNI
//! entry points; this file uses only the channel block and `shmflow::sync`, so under
//! `--cfg loom` it runs on loom's atomics like every other model here).
//!
//! What is checked, in every interleaving: exactly one party frees the block (never none:
//! a block left CONSUMER_GONE would be lost for good, the bug `take`'s `Abandoned` case
//! fixed; never two: the next user's block freed under it); the producer that takes an
//! open block reads the consumer's route, not the previous user's; a consumer claiming the
//! block while its last users close gets it only after the free, and its route survives.
//!
//! Model 3 (a producer leaving while a consumer connects): the producer marks its worker
//! slot EXITED, fences, and scans for channels towards it that it never accepted (as
//! `ArenaCtx::close` does); the consumer looked at it alive, claims and opens a block,
//! fences and looks again (as `ChannelCtx::connect` does), and withdraws the channel if
//! the producer is gone. Checked: the block is freed exactly once (the leak this fixed: a
//! scan that ran before the OPEN left the block open towards a producer that never looks
//! again), and a block addressed to another generation of the producer's slot is never
//! taken.
//!
//! Weakenings checked by editing the shipped file and rerunning: the Release store of OPEN
//! made Relaxed makes the producer read the route before the consumer's writes (it sees the
//! block as not addressed to it: the first model panics); `take` without its `Abandoned`
//! case leaves a block its consumer closed first with nobody to free it (the producer
//! never sees it open or abandoned: the first model panics); `withdraw` without its
//! `mark_withdrawn` check frees a block the producer took and frees too (model 3 panics:
//! freed twice); the SeqCst fence of `still_there_after_open` made Release (session 12)
//! lets both the scan and the look miss each other (model 3 panics: the block lost).
//! Model 3 calls the shipped halves of that pair, `handshake::leave` and
//! `handshake::still_there_after_open`, with the worker state word in place of the
//! record `ArenaCtx::close` and `ChannelCtx::connect` pass them.
#![cfg(loom)]

mod common;

#[allow(dead_code)] // the model calls what the ffi's core.rs calls; `End`/`Route` fields all used there
#[path = "../../ffi/src/handshake.rs"]
mod handshake;

use handshake::{Closed, End, Route, Take, Withdrawn};
use loom::thread;
use shmflow::memory::{Arena, ChannelBlock, CHANNEL_FREE, CHANNEL_OPEN};
use shmflow::sync::{AtomicU32, Ordering};
use std::sync::Arc;

const CONSUMER_PID: u32 = 200;
const PRODUCER_PID: u32 = 100;
/// The generation of the producer's worker slot the consumers looked up.
const PRODUCER_GEN: u32 = 5;

fn route(consumer_pid: u32, consumer_slot: u32) -> Route {
    Route {
        producer_pid: PRODUCER_PID,
        consumer_pid,
        producer_slot: 0,
        consumer_slot,
        producer_generation: PRODUCER_GEN,
        consumer_generation: 1,
        consumer_set: 2 * consumer_slot,
        producer_set: 1,
        member: 0,
    }
}

fn block(arena: &Arena) -> &ChannelBlock {
    &arena.channels()[0]
}

/// Closes `end`; the last end frees the block and counts it.
fn close_end(b: &ChannelBlock, end: End, frees: &AtomicU32) {
    match handshake::close(b, end) {
        Closed::First => {}
        Closed::Last => {
            // Relaxed: a counter read after the joins.
            frees.fetch_add(1, Ordering::Relaxed);
            handshake::free(b);
        }
        Closed::Other(s) => panic!("close found state {s:#x}: nobody died in this model"),
    }
}

/// The producer's dispatcher: takes the channel once it is published (a notification may
/// come before it is), serves it and closes its end, or frees an abandoned block.
fn producer(b: &ChannelBlock, frees: &AtomicU32, expect_consumer: u32) {
    for _ in 0..100 {
        match handshake::take(b, 0, PRODUCER_GEN, PRODUCER_PID, 4) {
            Take::Open { consumer_slot, .. } => {
                assert_eq!(consumer_slot, expect_consumer, "the producer read a stale route");
                close_end(b, End::Producer, frees);
                return;
            }
            Take::Abandoned => {
                // Relaxed: a counter read after the joins.
                frees.fetch_add(1, Ordering::Relaxed);
                handshake::free(b);
                return;
            }
            Take::NotOurs => panic!("the block is addressed to the producer's slot"),
            Take::NotOpen(_) => thread::yield_now(),
        }
    }
    panic!("the producer never saw the channel open or abandoned");
}

#[test]
fn either_end_closes_first_and_the_block_is_freed_once() {
    common::check("ffi_channel_handshake::either_end_closes_first_and_the_block_is_freed_once", Some(3), || {
        let arena = common::tiny_arena();
        let frees = Arc::new(AtomicU32::new(0));
        let consumer = {
            let (arena, frees) = (arena.clone(), frees.clone());
            thread::spawn(move || {
                let b = block(&arena);
                assert!(handshake::claim(b, CONSUMER_PID), "the block is free");
                handshake::open(b, &route(CONSUMER_PID, 2));
                close_end(b, End::Consumer, &frees);
            })
        };
        let prod = {
            let (arena, frees) = (arena.clone(), frees.clone());
            thread::spawn(move || producer(block(&arena), &frees, 2))
        };
        consumer.join().unwrap();
        prod.join().unwrap();
        // Relaxed (both): after the joins.
        assert_eq!(frees.load(Ordering::Relaxed), 1, "block freed once");
        assert_eq!(block(&arena).peek_state(), CHANNEL_FREE, "the block is free again");
    });
}

#[test]
fn a_claim_during_the_close_gets_the_block_only_after_the_free() {
    common::check(
        "ffi_channel_handshake::a_claim_during_the_close_gets_the_block_only_after_the_free",
        Some(2),
        || {
            let arena = common::tiny_arena();
            let frees = Arc::new(AtomicU32::new(0));
            // An open, taken channel (set up before the threads).
            let b0 = block(&arena);
            assert!(handshake::claim(b0, CONSUMER_PID));
            handshake::open(b0, &route(CONSUMER_PID, 2));
            assert_eq!(handshake::take(b0, 0, PRODUCER_GEN + 1, PRODUCER_PID, 4), Take::NotOurs, "another generation");
            assert_eq!(
                handshake::take(b0, 0, PRODUCER_GEN, PRODUCER_PID, 4),
                Take::Open { consumer_slot: 2, consumer_generation: 1 }
            );
            let ends: Vec<_> = [End::Consumer, End::Producer]
                .into_iter()
                .map(|end| {
                    let (arena, frees) = (arena.clone(), frees.clone());
                    thread::spawn(move || close_end(block(&arena), end, &frees))
                })
                .collect();
            let next = {
                let arena = arena.clone();
                thread::spawn(move || {
                    let b = block(&arena);
                    for _ in 0..100 {
                        if handshake::claim(b, CONSUMER_PID + 1) {
                            handshake::open(b, &route(CONSUMER_PID + 1, 3));
                            return;
                        }
                        thread::yield_now();
                    }
                    panic!("the block never came free");
                })
            };
            for e in ends {
                e.join().unwrap();
            }
            next.join().unwrap();
            let b = block(&arena);
            // Relaxed (all): after the joins.
            assert_eq!(frees.load(Ordering::Relaxed), 1, "block freed once");
            assert_eq!(b.peek_state(), CHANNEL_OPEN, "the next channel is open");
            assert_eq!(b.consumer_pid(), CONSUMER_PID + 1, "the next consumer's route survived");
            assert_eq!(b.consumer_worker(), Some(3), "the next consumer's route survived (slot 3)");
        },
    );
}

/// The producer's worker record's state word in model 3.
fn worker(arena: &Arena) -> &AtomicU32 {
    &arena.workers()[0].state
}

/// Worker-slot states of the producer in model 3 (its record's state word).
const ALIVE: u32 = 1;
const EXITED: u32 = 2;

#[test]
fn a_channel_opened_while_its_producer_leaves_is_freed_once() {
    common::check("ffi_channel_handshake::a_channel_opened_while_its_producer_leaves_is_freed_once", Some(3), || {
        let arena = common::tiny_arena();
        let frees = Arc::new(AtomicU32::new(0));
        let claimed = Arc::new(AtomicU32::new(0));
        // Relaxed: set up before the threads.
        worker(&arena).store(ALIVE, Ordering::Relaxed);
        let consumer = {
            let (arena, frees, claimed) = (arena.clone(), frees.clone(), claimed.clone());
            thread::spawn(move || {
                let b = block(&arena);
                // Acquire (both looks): pairs with the producer's Release store of EXITED.
                if worker(&arena).load(Ordering::Acquire) != ALIVE {
                    return; // `connect` refuses before it claims
                }
                assert!(handshake::claim(b, CONSUMER_PID), "the block is free");
                // Relaxed: a flag read after the joins.
                claimed.store(1, Ordering::Relaxed);
                handshake::open(b, &route(CONSUMER_PID, 2));
                // The shipped fence and look of `connect`; Acquire pairs with the
                // producer's Release store of EXITED.
                if handshake::still_there_after_open(|| worker(&arena).load(Ordering::Acquire) == ALIVE) {
                    // Connected: the producer's scan sees the channel and fails it; our
                    // close (the task's, later) is then the last.
                    close_end(b, End::Consumer, &frees);
                    return;
                }
                match handshake::withdraw(b, CONSUMER_PID) {
                    Withdrawn::Free => {
                        // Relaxed: a counter read after the joins.
                        frees.fetch_add(1, Ordering::Relaxed);
                        handshake::free(b);
                    }
                    Withdrawn::ProducerFrees => {}
                    Withdrawn::Other(s) => panic!("withdraw found state {s:#x}: nobody died in this model"),
                }
            })
        };
        let producer = {
            let (arena, frees) = (arena.clone(), frees.clone());
            thread::spawn(move || {
                // The shipped mark and fence of `ArenaCtx::close`; Release as
                // `liveness::mark_exited`.
                handshake::leave(|| worker(&arena).store(EXITED, Ordering::Release));
                // The scan of `refuse_unaccepted`, on the one block.
                let b = block(&arena);
                match handshake::take(b, 0, PRODUCER_GEN, PRODUCER_PID, 4) {
                    Take::Open { .. } => match handshake::close(b, End::Producer) {
                        Closed::First => {}
                        Closed::Last => {
                            // Relaxed: a counter read after the joins.
                            frees.fetch_add(1, Ordering::Relaxed);
                            handshake::free(b);
                        }
                        Closed::Other(s) => panic!("close found state {s:#x}"),
                    },
                    Take::Abandoned => {
                        // Relaxed: a counter read after the joins.
                        frees.fetch_add(1, Ordering::Relaxed);
                        handshake::free(b);
                    }
                    Take::NotOurs => panic!("the block is addressed to the producer's slot and generation"),
                    Take::NotOpen(_) => {}
                }
            })
        };
        consumer.join().unwrap();
        producer.join().unwrap();
        // Relaxed (all): after the joins.
        let want = claimed.load(Ordering::Relaxed);
        assert_eq!(frees.load(Ordering::Relaxed), want, "block freed once if it was claimed (never twice, never lost)");
        assert_eq!(block(&arena).peek_state(), CHANNEL_FREE, "the block is free again");
    });
}
