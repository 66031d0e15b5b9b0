//! Loom model of one segment's writer/reader protocol (DESIGN.md §4.2): `BufferBuilder`
//! appends, commits and finishes by storing `position | FINISHED` (Release), while one or
//! (broadcast) two `BufferConsumer`s poll the position (Acquire) and read the payload in
//! place; the readers' `Lease` drops count the segment's refcount down, and the last one
//! is told it may recycle the segment.
//!
//! What is modelled, on a heap arena of 8-byte segments whose payload bytes are loom
//! witness cells:
//! - one writer (append 3, commit, append 3, finish) against one polling reader;
//! - a broadcast segment (fanout 2): the writer against two readers on two threads, each
//!   with its own `ReleaseSink`, each releasing its lease when done.
//!
//! What a failure means:
//! - a witness-cell race or causality violation: a reader touched payload bytes the writer's
//!   Release store had not published to it, or the last reader's recycling write (standing
//!   for the next owner's writes) is not ordered after the other reader's reads (the
//!   refcount decrement is too weak);
//! - a wrong byte sequence: a reader saw bytes out of order, twice, or missed some;
//! - a wrong end: the reader saw FINISHED before the last byte, or never;
//! - wrong release calls: a reader released twice or never, no reader or both readers were
//!   "last", or a refcount underflow was reported.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{Buffer, BufferBuilder, BufferConsumer, NetworkBufferPool, ReleaseSink};
use shmflow::memory::{Arena, Owner};
use shmflow::sync::{EventCount, WaitOutcome, WaitPolicy, Waiter};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// What the writer writes: two appends of three bytes each, the first one committed.
const FIRST: [u8; 3] = [1, 2, 3];
const SECOND: [u8; 3] = [4, 5, 6];

/// One `release` call: `(segment, last, violation)`.
type ReleaseCall = (u32, bool, bool);

/// A `ReleaseSink` that records every call. When told it was the last reader it plays the
/// next owner of the segment and writes all of it: loom then checks that every reader's
/// reads happen-before that write.
struct RecordingSink {
    arena: Arc<Arena>,
    calls: RefCell<Vec<ReleaseCall>>,
}

impl ReleaseSink for RecordingSink {
    fn release(&self, segment: u32, last: bool, violation: bool) {
        self.calls.borrow_mut().push((segment, last, violation));
        if last && !violation {
            let size = self.arena.segment_size();
            // SAFETY: the refcount reached zero, so every reader is done with the segment
            // and it is ours to recycle; this write stands for its next owner's. If the
            // protocol failed to order the readers' reads before this point, loom reports
            // a race on the witness cells.
            unsafe { self.arena.segment_bytes_mut(segment, 0, size).fill(0xEE) };
        }
    }
}

/// Takes a segment from the network pool and starts a builder on it for `fanout` readers.
/// Runs on the model's main thread before the threads start; spawning orders the builder's
/// Relaxed reset of the control block before the readers (in the shipping code, the
/// descriptor's Release push on the data ring does).
fn start_builder(arena: &Arc<Arena>, fanout: u32) -> BufferBuilder {
    let pool = NetworkBufferPool::new(Arc::clone(arena));
    let segment = pool
        .request(Owner::Writer { pool: 0, worker: 0 }, 0)
        .expect("the free stack is not corrupt")
        .expect("a fresh arena has free segments");
    BufferBuilder::new(segment, fanout)
}

/// The writer's side: append, commit, append, finish. With `wake`, it notifies the readers
/// after each publication, as `ChannelWriter::notify_consumer` does.
fn write_all(builder: &mut BufferBuilder, wake: Option<&EventCount>) {
    assert_eq!(builder.append(&FIRST), FIRST.len());
    assert!(builder.commit());
    if let Some(ec) = wake {
        ec.notify();
    }
    assert_eq!(builder.append(&SECOND), SECOND.len());
    assert_eq!(builder.finish(), (FIRST.len() + SECOND.len()) as u32);
    if let Some(ec) = wake {
        ec.notify();
    }
}

/// What one poll of the consumer gave.
enum Step {
    View(Buffer),
    Finished,
}

/// The reader's side: polls segment `index` until it is finished, checking after every
/// poll that what arrived so far is a prefix of what the writer writes, and that the end
/// comes exactly after the last byte. Between empty polls it yields (`wake == None`) or
/// parks on `wake` with the shipping `Waiter` (`WaitPolicy::park()`). Returns the release
/// calls its sink saw.
fn read_all(arena: &Arc<Arena>, index: u32, wake: Option<&EventCount>) -> Vec<ReleaseCall> {
    let expected: Vec<u8> = FIRST.iter().chain(&SECOND).copied().collect();
    let sink = Rc::new(RecordingSink { arena: Arc::clone(arena), calls: RefCell::new(Vec::new()) });
    let mut consumer = BufferConsumer::new(Arc::clone(arena), index, sink.clone(), 0);
    let mut waiter = Waiter::new(WaitPolicy::park());
    let mut got = Vec::new();
    // The first view stays alive past the consumer, to check that a view alone keeps the
    // lease (and so the segment) held.
    let mut first_view: Option<Buffer> = None;
    let poll = |consumer: &mut BufferConsumer| match consumer.poll().expect("the writer's position is valid") {
        Some(view) => Some(Step::View(view)),
        None if consumer.is_finished() => Some(Step::Finished),
        None => None,
    };
    loop {
        let step = match wake {
            None => match poll(&mut consumer) {
                Some(step) => step,
                None => {
                    thread::yield_now();
                    continue;
                }
            },
            Some(ec) => match waiter.wait(ec, None, || poll(&mut consumer)) {
                WaitOutcome::Ready(step) => step,
                WaitOutcome::TimedOut => unreachable!("an untimed wait does not time out"),
            },
        };
        match step {
            Step::View(view) => {
                got.extend_from_slice(&view);
                assert_eq!(got[..], expected[..got.len()], "bytes out of order");
                first_view.get_or_insert(view);
            }
            Step::Finished => break,
        }
        if consumer.is_finished() {
            break;
        }
    }
    assert_eq!(got, expected, "FINISHED seen before the last byte");
    assert_eq!(consumer.read_position() as usize, expected.len());
    assert!(consumer.poll().unwrap().is_none(), "a finished consumer yields nothing more");
    drop(consumer);
    let first_view = first_view.expect("the segment had bytes");
    assert!(sink.calls.borrow().is_empty(), "released while a view was still alive");
    assert_eq!(&first_view[..], &expected[..first_view.len()], "a live view changed");
    drop(first_view);
    let calls = sink.calls.borrow().clone();
    calls
}

/// One writer, one reader: the reader sees exactly the bytes written, in order, finished
/// exactly at the end, and releases once as the last (only) reader.
#[test]
fn single_reader() {
    common::check("builder_consumer::single_reader", None, || {
        let arena = common::tiny_arena();
        let mut builder = start_builder(&arena, 1);
        let index = builder.index();

        let writer = thread::spawn(move || {
            write_all(&mut builder, None);
            drop(builder); // finish() again from Drop: idempotent, no second store.
        });
        let reader = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || read_all(&arena, index, None))
        };
        writer.join().unwrap();
        let calls = reader.join().unwrap();
        assert_eq!(calls, vec![(index, true, false)]);
        // Relaxed: every thread has been joined.
        assert_eq!(arena.controls()[index as usize].refcount.load(shmflow::sync::Ordering::Relaxed), 0);
    });
}

/// Broadcast: one segment, fanout 2, a reader on each of two threads while the model's
/// main thread writes. The readers park on the channel's consumer wake-up between polls
/// (two readers spinning on `yield_now` would let loom schedule them against each other
/// forever), and the writer notifies after each publication. Each reader releases exactly
/// once, exactly one of them is the last, and the last one's recycling write is ordered
/// after both readers' reads.
#[test]
fn broadcast_two_readers_one_last() {
    common::check("builder_consumer::broadcast_two_readers_one_last", Some(3), || {
        let arena = common::tiny_arena();
        let mut builder = start_builder(&arena, 2);
        let index = builder.index();

        let readers: Vec<_> = (0..2)
            .map(|_| {
                let arena = Arc::clone(&arena);
                thread::spawn(move || read_all(&arena, index, Some(&arena.channels()[0].consumer_wake)))
            })
            .collect();
        write_all(&mut builder, Some(&arena.channels()[0].consumer_wake));
        drop(builder);

        let calls: Vec<ReleaseCall> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
        assert_eq!(calls.len(), 2, "each reader releases exactly once: {calls:?}");
        assert!(calls.iter().all(|&(s, _, violation)| s == index && !violation), "{calls:?}");
        assert_eq!(calls.iter().filter(|&&(_, last, _)| last).count(), 1, "exactly one last reader: {calls:?}");
        // Relaxed: every thread has been joined.
        assert_eq!(arena.controls()[index as usize].refcount.load(shmflow::sync::Ordering::Relaxed), 0);
    });
}
