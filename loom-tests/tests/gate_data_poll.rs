//! Loom model of the gate's data poll (`SingleInputGate::wait_ready`, the `hot` channel):
//! while a gate waits, it polls the channel that handed out its last record in its data
//! (`RecordReader::has_input`: the segment's position word, Acquire) besides the notify set,
//! and a record found that way is read without draining the set. The producer's mark stays
//! set, so its next mark takes the "already marked" shortcut and sends no wake-up; the
//! gate drains the stale mark later. This composes two model-checked protocols (the
//! builder/consumer position, `builder_consumer.rs`, and the notify set, `notify_set.rs`);
//! this model checks the composition with the shipped pieces the gate uses.
//!
//! What is modelled, on a heap arena of 16-byte segments (two length-prefixed records fit
//! in one) whose payload bytes are loom witness cells: the producer (set up on the main
//! thread as a `ResultPartition` does at a segment's start: credit, segment, descriptor
//! published) writes record A, commits and marks (`ChannelWriter::notify_consumer`, as
//! `ResultPartition::flush` does), then record B the same way. The consumer is the gate's
//! loop by hand over a `RecordReader` on a `ChannelReader` routed to the notify set: poll
//! the channel; when empty drain the set and poll again if anything was marked; otherwise
//! wait with the shipped `Waiter` (park policy) on the set's wake-up with the gate's
//! condition: the channel's data first (`has_input`), then the set (`any`). The shipped
//! gate polls the data in spin mode, where it never parks, and in a park mode that never
//! spins (`WaitPolicy::park()`, exactly this model's waiter: the poll finds the record
//! after a wake-up without draining the set); the parking case is the stronger one: there
//! a coalesced mark would be a lost wake-up.
//!
//! What a failure means: a deadlock is a lost wake-up (the consumer found A in the data,
//! B's mark took the shortcut on A's undrained bit, and the consumer's drain and re-poll
//! missed B); a witness-cell race or a wrong record is a torn or unpublished record (the
//! data poll read payload bytes its Acquire of the position did not publish).
//!
//! Which weakenings it catches (each checked by editing the crate, preemption bound 3): the
//! Acquire load of the position in `BufferConsumer::writer_position` made Relaxed (loom:
//! causality violation on the payload's witness cells), and removing the SeqCst fence in
//! `NotifySet::mark` (deadlock: B's mark coalesced, the consumer parked). Removing the
//! fence in `NotifySet::drain` is not caught here, and is not a bug of this composition:
//! the gate re-checks the channel's data after `prepare_wait`, whose SeqCst fence then
//! pairs with `mark`'s (the `notify_set.rs` models, which read only marked members, do
//! catch it).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::BufferBuilder;
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::record::{RecordReader, Step};
use shmflow::ring::{Descriptor, NotifySet};
use shmflow::sync::{WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;

const A: [u8; 3] = [7, 8, 9];
const B: [u8; 4] = [1, 2, 3, 4];
/// The consumer's member in the gate's set (not 0, so a stale index would show).
const MEMBER: u32 = 1;
const MEMBERS: u32 = 2;

// Counts, outside the model (a plain std atomic, not loom's), the executions in which the
// consumer found a record through its data poll, to prove the search reached that path.
#[allow(clippy::disallowed_types)]
static FOUND_IN_DATA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn arena() -> Arc<Arena> {
    let cfg = ArenaConfig { segment_size: 16, ..common::tiny_config() };
    Arc::new(Arena::heap(&cfg).expect("a valid loom config"))
}

#[test]
fn data_poll_no_lost_or_torn_record() {
    common::check("gate_data_poll::data_poll_no_lost_or_torn_record", Some(3), || {
        let arena = arena();
        // Set-up (spawning orders it before both threads): the consumer attaches and
        // grants a credit, the producer takes it, starts a segment and publishes it.
        let (reader, mut writer, pool, segment) = common::gate_channel(&arena, MEMBER);
        let index = segment.index();
        let mut builder = BufferBuilder::new(segment, 1);
        writer.publish(Descriptor::Buffer(index)).expect("credit and room");

        let producer = thread::spawn(move || {
            for rec in [&A[..], &B[..]] {
                assert!(builder.try_write_framed(rec, rec.len()), "both records fit");
                assert!(builder.commit());
                writer.notify_consumer().expect("the gate's member is valid");
            }
            // Keeps the segment open (the builder's drop would finish it): the consumer
            // must find B by its commit, not by the end of the segment.
            (builder, writer, pool)
        });

        let consumer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let set = NotifySet::new(&arena, 0).expect("gate block 0 exists");
                let mut rr = RecordReader::new(reader);
                let mut waiter = Waiter::new(WaitPolicy::park());
                let mut got: Vec<Vec<u8>> = Vec::new();
                let mut in_data = false;
                while got.len() < 2 {
                    match rr.poll().expect("a legal peer") {
                        Step::Record => {
                            got.push(rr.record().to_vec());
                            continue;
                        }
                        Step::Event(d) => panic!("unexpected {d:?}"),
                        Step::Empty => {}
                    }
                    if set.drain(MEMBERS, |_| {}) > 0 {
                        continue;
                    }
                    // The gate's wait condition: the hot channel's data, then the set.
                    let woke = waiter.wait(set.wake(), None, || {
                        if rr.has_input().expect("a legal peer") {
                            return Some(true);
                        }
                        set.any(MEMBERS).then_some(false)
                    });
                    match woke {
                        WaitOutcome::Ready(data) => in_data |= data,
                        WaitOutcome::TimedOut => panic!("no deadline was set"),
                    }
                }
                assert_eq!(got, vec![A.to_vec(), B.to_vec()]);
                if in_data {
                    // Relaxed: statistic outside the model.
                    FOUND_IN_DATA.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };

        let kept = producer.join().unwrap();
        consumer.join().unwrap();
        drop(kept);
    });
    // Relaxed: the search is over.
    assert!(FOUND_IN_DATA.load(std::sync::atomic::Ordering::Relaxed) > 0, "no record was found by the data poll");
}
