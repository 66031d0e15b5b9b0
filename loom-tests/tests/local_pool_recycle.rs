//! Loom model of backpressure and recycling through a channel (DESIGN.md §4.4 and §4.5): a
//! producer whose `LocalBufferPool` is exhausted parks in `request_blocking` on the
//! channel's producer wake-up, with its `ChannelWriter` as the `RecycleSource`, while the
//! consumer's `ChannelReader` reads the segment and lets go of it, which sends a credit
//! carrying the segment's index back through the credit ring and notifies the producer.
//!
//! What is modelled, on a heap arena with 2-slot rings and 8-byte segments: a pool of at
//! most one segment (and one per channel). The consumer thread builds its `ChannelReader`
//! itself (the reader holds `Rc`s and is not `Send`), grants the initial credit of one,
//! waits (parked on the channel's consumer wake-up) for the descriptor, reads the segment
//! in place and drops its consumer, releasing it. The producer thread waits (parked,
//! `WaitPolicy::park()`) for that credit, takes the pool's only segment, writes and
//! finishes it, publishes its descriptor, then asks for another segment with
//! `request_blocking`, which only the segment coming back can satisfy. The test asserts
//! that the search reached executions where `request_blocking` parked.
//!
//! What a failure means: a deadlock report is a lost wake-up (a side sleeps although the
//! grant, the descriptor or the released segment is in its ring); a witness-cell race
//! means the producer's reuse of the segment is not ordered after the consumer's reads
//! (the refcount, the credit ring's Release/Acquire or the pool's bookkeeping let the
//! segment go too early); a failed assertion means wrong bytes, a different segment, or
//! credit and pool accounting that does not add up; a protocol-violation error means a
//! side rejected a legal peer state.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{BufferBuilder, LocalBufferPool, LocalPoolConfig};
use shmflow::ring::{ChannelReader, ChannelWriter, Descriptor};
use shmflow::sync::{WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;

const PAYLOAD: [u8; 5] = [9, 8, 7, 6, 5];

// Counts, outside the model (a plain std atomic, not loom's), the executions in which the
// producer actually parked, to prove the search reached the park phase.
#[allow(clippy::disallowed_types)]
static PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn parked_writer_gets_recycled_segment() {
    common::check("local_pool_recycle::parked_writer_gets_recycled_segment", Some(4), || {
        let arena = common::tiny_arena();
        let config = LocalPoolConfig { min: 0, max: 1, max_per_channel: 1, channels: 1 };
        let mut pool = LocalBufferPool::new(Arc::clone(&arena), 0, 0, config).expect("valid pool config");
        let mut writer = ChannelWriter::open(Arc::clone(&arena), 0).expect("channel 0 exists");

        let producer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let mut waiter = Waiter::new(WaitPolicy::park());
                // No credit yet: wait for the consumer's initial grant, as a writer without
                // credit for its channel does (parked on the same producer wake-up).
                let ready = waiter.wait(&arena.channels()[0].producer_wake, None, || {
                    writer.reclaim(&mut pool).expect("a well-formed grant");
                    (writer.credit() > 0).then_some(())
                });
                assert_eq!(ready, WaitOutcome::Ready(()));
                assert_eq!(writer.credit(), 1);
                let segment = pool.request(Some(0)).expect("pool not corrupt").expect("the pool's one segment");
                let index = segment.index();
                let mut builder = BufferBuilder::new(segment, 1);
                assert_eq!(builder.append(&PAYLOAD), PAYLOAD.len());
                builder.finish();
                writer.publish(Descriptor::Buffer(index)).expect("credit and room for the descriptor");
                drop(builder);
                assert_eq!(writer.credit(), 0);
                // Quota used up: this must park until the consumer's release comes back.
                assert!(pool.request(Some(0)).expect("pool not corrupt").is_none(), "the quota is one segment");

                let parks_before = waiter.parks;
                let mut again = pool
                    .request_blocking(Some(0), &mut writer, &mut waiter, None)
                    .expect("the recycled segment, not an error");
                if waiter.parks > parks_before {
                    // Relaxed: statistic outside the model.
                    PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                assert_eq!(again.index(), index, "the pool's only segment came back");
                // Reuse: write the whole segment. Loom's witness cells check that the
                // consumer's reads happen-before these writes.
                again.as_mut_slice().fill(0xEE);
                assert_eq!(writer.credit(), 1, "the release returned the credit");
                assert_eq!(writer.in_flight(), 0);
                assert_eq!(pool.outstanding(), 1);
                assert_eq!(pool.outstanding_for(0), 1);
                drop(again);
            })
        };

        let consumer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let reader_arena = Arc::clone(&arena);
                let mut reader = ChannelReader::open(arena, 0).expect("channel 0 exists");
                // The initial (exclusive) credit: one segment in flight at a time.
                reader.grant(1).expect("room in the credit ring");
                // Wait (parked) for the descriptor, on the wake-up the writer notifies when the
                // reader has no gate.
                let mut waiter = Waiter::new(WaitPolicy::park());
                let wake = &reader_arena.channels()[0].consumer_wake;
                let index = match waiter.wait(wake, None, || reader.poll().expect("a valid descriptor")) {
                    WaitOutcome::Ready(Descriptor::Buffer(i)) => i,
                    other => panic!("unexpected {other:?}"),
                };
                // The writer finished the segment before publishing it: one poll takes it all.
                let mut consumer = reader.consumer(index);
                let view = consumer.poll().expect("a valid writer position").expect("published bytes");
                assert!(consumer.is_finished(), "finished before it was published");
                let got = view.to_vec();
                drop(view);
                assert_eq!(got, PAYLOAD, "the consumer read what the producer wrote");
                // The last (only) reader lets go: Credit::Release(Some(index)) goes back
                // and the producer is notified.
                drop(consumer);
                assert!(reader.poll().expect("no violation").is_none());
            })
        };

        producer.join().unwrap();
        consumer.join().unwrap();
    });
    // Relaxed: the search is over.
    assert!(PARKED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution reached the park phase");
}
