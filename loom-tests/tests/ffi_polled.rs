//! Loom model of the Flink transport's "the task polls" (`ffi/src/polled.rs`): while the
//! consumer's task polls a channel's data ring itself, the producer publishes a data
//! buffer without marking the consumer's notify set; the task stops polling (the last of
//! its zero-copy buffers came back) by clearing the word, a fence, and one more poll.
//!
//! The shipped file is compiled here by path (as `ffi_banked_credit.rs` does); the ring is
//! the channel block's real data ring (`shmflow::ring`), whose push publishes with a
//! Release store of the tail and whose `available` loads it with Acquire.
//!
//! What is checked, in every interleaving: a message published while the task was
//! stopping is either marked for the dispatcher or found by the task's last poll (the lost
//! delivery the fence pair rules out: without it the buffer would sit in the ring with
//! nobody woken and nobody polling).
//!
//! Weakening checked by editing the shipped file and rerunning: removing the fence in
//! `must_mark` (or in `stop`) lets the producer read the word still set while the task's
//! poll misses the message: the model panics with "published, not marked and not polled".
#![cfg(loom)]

mod common;

#[path = "../../ffi/src/polled.rs"]
mod polled;

use loom::thread;
use shmflow::memory::{Arena, ChannelBlock, RingKind};
use shmflow::ring::{Ring, RingConsumer, RingProducer};
use std::sync::Arc;

fn block(arena: &Arena) -> &ChannelBlock {
    &arena.channels()[0]
}

fn data_ring(arena: &Arena) -> Ring<'_> {
    Ring::new(&block(arena).data, arena.ring_slots(0, RingKind::Data))
}

fn place() -> String {
    "channel 0".to_string()
}

/// The producer's side as `ChannelCtx::send` does it: publish one data buffer, then ask
/// whether the consumer must be marked. Joins to that answer.
fn spawn_producer(arena: &Arc<Arena>) -> thread::JoinHandle<bool> {
    let arena = arena.clone();
    thread::spawn(move || {
        let ring = data_ring(&arena);
        let mut p = RingProducer::attach(&ring);
        p.push_all(&ring, &[7], &place).unwrap();
        polled::must_mark(block(&arena))
    })
}

#[test]
fn a_buffer_published_while_the_task_stops_polling_is_marked_or_polled() {
    common::check("ffi_polled::a_buffer_published_while_the_task_stops_polling_is_marked_or_polled", Some(3), || {
        let arena = common::tiny_arena();
        block(&arena).reset();
        polled::start(block(&arena));
        let consumer = RingConsumer::attach(&data_ring(&arena));
        let task = {
            let arena = arena.clone();
            thread::spawn(move || {
                let mut consumer = consumer;
                polled::stop(block(&arena));
                consumer.available(&data_ring(&arena), &place).unwrap()
            })
        };
        let producer = spawn_producer(&arena);
        let polled_it = task.join().unwrap() == 1;
        let marked = producer.join().unwrap();
        assert!(marked || polled_it, "published, not marked and not polled");
    });
}

#[test]
fn a_task_that_polls_throughout_leaves_the_buffer_unmarked_only_while_it_polls() {
    common::check(
        "ffi_polled::a_task_that_polls_throughout_leaves_the_buffer_unmarked_only_while_it_polls",
        Some(3),
        || {
            let arena = common::tiny_arena();
            block(&arena).reset();
            let producer = spawn_producer(&arena);
            // The task starts polling (a zero-copy buffer handed out) and stops again.
            polled::start(block(&arena));
            let mut consumer = RingConsumer::attach(&data_ring(&arena));
            polled::stop(block(&arena));
            let polled_it = consumer.available(&data_ring(&arena), &place).unwrap() == 1;
            let marked = producer.join().unwrap();
            assert!(marked || polled_it, "published, not marked and not polled");
        },
    );
}
