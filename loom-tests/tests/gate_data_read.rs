//! Loom model of the network stack's read path in the data (a gate in spin mode,
//! `RecordReader::set_data_reads`): a length-prefixed record whose prefix starts 4-aligned
//! is published by that prefix word, which the writer stores last with Release
//! (`BufferBuilder::put_prefix`), after its payload and after storing "nothing yet"
//! (`frame::UNWRITTEN`) in the word behind it (`clear_word`); the reader polls the word at
//! its read position (`BufferConsumer::record_written_at_read`, then `record_at_read` with
//! Acquire) and reads the record in place, possibly before the writer committed it. The
//! writer's position, its commits and the notify set stay as they were for everything
//! else; this model checks the composition with the shipped pieces the gate uses.
//!
//! What is modelled, on a heap arena of 16-byte segments (two 4-byte records, 8 bytes
//! framed each, fit in one) whose payload bytes are loom witness cells: the segment was used
//! before, so its word at offset 8 holds a stale prefix (0: an empty record) when the writer
//! starts. The producer (set up on the main thread as a `ResultPartition` does at a
//! segment's start: credit, segment, descriptor published) writes record A with no commit
//! and no mark (a record the commit has not reached yet, as under a buffer timeout), then
//! record B, commits and marks (`ChannelWriter::notify_consumer`, as
//! `ResultPartition::flush` does). The consumer is the gate's loop by hand over a
//! `RecordReader` with data reads on, on a `ChannelReader` routed to the notify set: poll
//! the channel; when empty drain the set and poll again if anything was marked; otherwise
//! wait with the shipped `Waiter` (park policy) on the set's wake-up with the condition of
//! the gate's `wait_ready`: the next prefix word (`data_input`), or the position when the
//! word cannot tell (`has_input`), then the set (`any`). The gate's hot spin before that
//! wait (`SingleInputGate::next_hot`) polls the same word through `data_input` (a Relaxed
//! load in `BufferConsumer::record_written_at_read`: a hint that reads nothing) and, once
//! it says written or cannot tell, decides with `RecordReader::poll_known`. What makes
//! reading the record safe is neither those loads nor the condition's but the Acquire load
//! of the word in `BufferConsumer::record_at_read`, which `poll_known` reaches through
//! `poll_data` exactly as the model's `RecordReader::poll` does (`poll_current`: the bytes
//! already known published first, then `poll_data`). So the model runs the shipped read
//! whichever Relaxed load saw the word turn. The shipped gate reads the data only in spin
//! mode, where it never parks; the model parks as well (the stronger case).
//!
//! What a failure means: a deadlock is a lost wake-up; a witness-cell race or a wrong
//! record is a torn or unpublished record (the data read took payload bytes its Acquire of
//! the prefix did not publish), or a stale word taken for a record (the stale empty record
//! at offset 8 read after A).
//!
//! Which weakenings it catches (each checked by editing the crate, preemption bound 3): the
//! Acquire load of the prefix word in `BufferConsumer::record_at_read` made Relaxed, and the
//! Release store in `BufferBuilder::put_prefix` made Relaxed (loom: causality violation on
//! the payload's witness cells); removing the store of `UNWRITTEN` behind a record in
//! `put_framed` (the stale empty record is read after A: wrong records).
//!
//! The second model, `run_read_no_torn_or_stale_record`, is the producer's batch path
//! (`ResultPartition::emit_batch`): A and B written as one run (`BufferBuilder::start_run`,
//! `FramedRun::try_push`, the run's drop), B's prefix stored Relaxed before A's, which is
//! stored last with Release; stale words (an empty record's prefix) at offsets 8 (B's) and
//! 16 (behind the run). The run is then committed and marked (a flush), so a parked reader
//! is woken. The reader must read A then B, and then nothing (the word behind the run
//! cleared). Weakenings it catches (each checked by editing the crate, bound 3): the run's
//! first prefix stored Relaxed (`FramedRun::drop` through `put_prefix`: causality
//! violation on B's witness cells); the clear behind the run removed (the stale empty
//! record at 16 read after B).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::BufferBuilder;
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::record::{RecordReader, Step};
use shmflow::ring::{Descriptor, NotifySet};
use shmflow::sync::{Ordering, WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;

const A: [u8; 4] = [7, 8, 9, 10];
const B: [u8; 4] = [1, 2, 3, 4];
/// The consumer's member in the gate's set (not 0, so a stale index would show).
const MEMBER: u32 = 1;
const MEMBERS: u32 = 2;

// Counts, outside the model (a plain std atomic, not loom's), the executions in which the
// consumer found a record through the prefix word while it waited, to prove the search
// reached that path.
#[allow(clippy::disallowed_types)]
static FOUND_IN_DATA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn arena() -> Arc<Arena> {
    let cfg = ArenaConfig { segment_size: 16, ..common::tiny_config() };
    Arc::new(Arena::heap(&cfg).expect("a valid loom config"))
}

#[test]
fn data_read_no_lost_torn_or_stale_record() {
    common::check("gate_data_read::data_read_no_lost_torn_or_stale_record", Some(3), || {
        let arena = arena();
        // Set-up (spawning orders it before both threads): the consumer attaches and
        // grants a credit, the producer takes it, starts a segment and publishes it.
        let (reader, mut writer, pool, segment) = common::gate_channel(&arena, MEMBER);
        let index = segment.index();
        // What an earlier use of the segment left at offset 8: the prefix of an empty record.
        // Relaxed: set-up, ordered by the spawns.
        arena.segment_word(index, 8).store(0, Ordering::Relaxed);
        let mut builder = BufferBuilder::new(segment, 1);
        writer.publish(Descriptor::Buffer(index)).expect("credit and room");

        let producer = thread::spawn(move || {
            // A: written, neither committed nor marked.
            assert!(builder.try_write_framed(&A[..], A.len()), "A fits with room to spare");
            // B: the last record of the segment (`write_framed`, the slow path's writer:
            // `try_write_framed` keeps room to spare), then committed and marked.
            assert!(builder.write_framed(B.len(), |out| out.copy_from_slice(&B)), "B fits");
            assert!(builder.commit());
            writer.notify_consumer().expect("the gate's member is valid");
            // Keeps the segment open (the builder's drop would finish it): the consumer
            // must find B by its prefix or its commit, not by the end of the segment.
            (builder, writer, pool)
        });

        let consumer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let set = NotifySet::new(&arena, 0).expect("gate block 0 exists");
                let mut rr = RecordReader::new(reader);
                rr.set_data_reads(true);
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
                    // The gate's wait condition in spin mode: the next prefix word (or the
                    // position where it cannot tell), then the set.
                    let woke = waiter.wait(set.wake(), None, || {
                        let data = match rr.data_input() {
                            Some(written) => written,
                            None => rr.has_input().expect("a legal peer"),
                        };
                        if data {
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
    assert!(FOUND_IN_DATA.load(std::sync::atomic::Ordering::Relaxed) > 0, "no record was found by its prefix word");
}

/// A heap arena of 32-byte segments: a run of two 4-byte records (8 bytes framed each) and
/// the word behind it.
fn run_arena() -> Arc<Arena> {
    let cfg = ArenaConfig { segment_size: 32, ..common::tiny_config() };
    Arc::new(Arena::heap(&cfg).expect("a valid loom config"))
}

#[test]
fn run_read_no_torn_or_stale_record() {
    common::check("gate_data_read::run_read_no_torn_or_stale_record", Some(3), || {
        let arena = run_arena();
        let (reader, mut writer, pool, segment) = common::gate_channel(&arena, MEMBER);
        let index = segment.index();
        // What an earlier use of the segment left: empty records' prefixes at B's offset
        // and behind the run. Relaxed: set-up, ordered by the spawns.
        arena.segment_word(index, 8).store(0, Ordering::Relaxed);
        arena.segment_word(index, 16).store(0, Ordering::Relaxed);
        let mut builder = BufferBuilder::new(segment, 1);
        writer.publish(Descriptor::Buffer(index)).expect("credit and room");

        let producer = thread::spawn(move || {
            {
                let mut run = builder.start_run(&A[..], A.len()).expect("A fits with room to spare");
                assert!(run.try_push(&B[..], B.len()), "B fits with room to spare");
                assert_eq!(run.finish(), (2, 16));
            }
            // A flush: commit and mark, so a parked reader wakes.
            assert!(builder.commit());
            writer.notify_consumer().expect("the gate's member is valid");
            (builder, writer, pool)
        });

        let consumer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let set = NotifySet::new(&arena, 0).expect("gate block 0 exists");
                let mut rr = RecordReader::new(reader);
                rr.set_data_reads(true);
                let mut waiter = Waiter::new(WaitPolicy::park());
                let mut got: Vec<Vec<u8>> = Vec::new();
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
                    let woke = waiter.wait(set.wake(), None, || {
                        let data = match rr.data_input() {
                            Some(written) => written,
                            None => rr.has_input().expect("a legal peer"),
                        };
                        if data {
                            return Some(true);
                        }
                        set.any(MEMBERS).then_some(false)
                    });
                    if let WaitOutcome::TimedOut = woke {
                        panic!("no deadline was set");
                    }
                }
                assert_eq!(got, vec![A.to_vec(), B.to_vec()]);
                // Nothing behind the run (the stale word at 16 was cleared before A's
                // prefix published the run).
                assert_eq!(rr.poll().expect("a legal peer"), Step::Empty, "a stale word read as a record");
            })
        };

        let kept = producer.join().unwrap();
        consumer.join().unwrap();
        drop(kept);
    });
}
