//! Loom model of the Flink transport's banked credit (`ffi/src/banked.rs`): the consumer
//! adds credit to its channel block's bank and wakes the producer only when the producer
//! said it waits for credit; the producer takes the bank when its own credit is used up
//! and, finding it empty, raises the flag and looks once more.
//!
//! The shipped file is compiled here by path (as `ffi_channel_handshake.rs` does; it uses
//! only the channel block and `shmflow::sync`, so under `--cfg loom` it runs on loom's
//! atomics).
//!
//! What is checked, in every interleaving: no credit is lost or counted twice (what the
//! producer took plus what is left in the bank is what was banked), and a producer whose
//! take came back empty is woken by a bank that happened after it (the lost wake-up the
//! fence pair rules out: without it the producer would sleep with credit in the bank).
//!
//! Weakening checked by editing the shipped file and rerunning: removing the fence in
//! `take` (or in `bank`) lets the producer miss the credit while the consumer misses the
//! flag: the first model panics with "the producer found no credit and was not woken".
#![cfg(loom)]

mod common;

#[path = "../../ffi/src/banked.rs"]
mod banked;

use loom::thread;
use shmflow::memory::ChannelBlock;
use shmflow::sync::Ordering;

fn block(arena: &shmflow::memory::Arena) -> &ChannelBlock {
    &arena.channels()[0]
}

#[test]
fn a_producer_that_found_no_credit_is_woken_by_the_next_bank() {
    common::check("ffi_banked_credit::a_producer_that_found_no_credit_is_woken_by_the_next_bank", Some(3), || {
        let arena = common::tiny_arena();
        block(&arena).reset();
        let consumer = {
            let arena = arena.clone();
            thread::spawn(move || banked::bank(block(&arena), 2))
        };
        let producer = {
            let arena = arena.clone();
            thread::spawn(move || banked::take(block(&arena)))
        };
        let woke = consumer.join().unwrap();
        let took = producer.join().unwrap();
        // Relaxed: after the joins.
        let left = block(&arena).floating_credit().load(Ordering::Relaxed);
        assert_eq!(u64::from(took) + left, 2, "credit lost or counted twice");
        assert!(took > 0 || woke, "the producer found no credit and was not woken");
        if woke && took == 0 {
            // The wake-up's take finds the credit.
            assert_eq!(banked::take(block(&arena)), 2);
        }
    });
}

#[test]
fn credit_banked_while_the_producer_takes_twice_is_taken_once() {
    common::check("ffi_banked_credit::credit_banked_while_the_producer_takes_twice_is_taken_once", Some(3), || {
        let arena = common::tiny_arena();
        block(&arena).reset();
        let consumer = {
            let arena = arena.clone();
            thread::spawn(move || {
                let a = banked::bank(block(&arena), 1);
                let b = banked::bank(block(&arena), 1);
                a || b
            })
        };
        let producer = {
            let arena = arena.clone();
            thread::spawn(move || {
                let first = banked::take(block(&arena));
                let second = banked::take(block(&arena));
                (first, second)
            })
        };
        let woke = consumer.join().unwrap();
        let (first, second) = producer.join().unwrap();
        // Relaxed: after the joins.
        let left = block(&arena).floating_credit().load(Ordering::Relaxed);
        assert_eq!(u64::from(first + second) + left, 2, "credit lost or counted twice");
        assert!(second > 0 || left == 0 || woke, "the producer found no credit and was not woken");
    });
}
