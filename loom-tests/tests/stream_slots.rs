//! Loom model of slot-framed records (the record stream's format; `BufferBuilder::
//! write_slotted`, `BufferConsumer::slot_record`, `finished_at`): the writer fills a
//! record's payload, clears the next record's slot and publishes the record by storing its
//! slot (Release); the reader polls the slot at its read position (Acquire), reads the
//! payload in place and moves on, and learns that the segment ended from the position
//! marker's FINISHED bit.
//!
//! What is modelled, on a heap arena of 16-byte segments (payload bytes are loom witness
//! cells, slots are loom atomics): the segment was used before, so its second slot holds a
//! stale "valid" word from that use; the writer clears the first slot (as `StreamWriter`
//! does before it hands the segment over), then on its own thread writes two records of 4
//! bytes ([1, 2, 3, 4] and [5, 6, 7, 8], each taking 8 bytes) and finishes the segment,
//! while a reader thread polls.
//!
//! What a failure means: a witness-cell race means the reader touched payload bytes the
//! slot's Release had not published to it; a wrong record means it read a stale slot (the
//! writer's clear of the next slot was not ordered before the record that announces it) or
//! bytes out of order; a wrong end means it took FINISHED for the end while a record was
//! still unread, or read past it.
//!
//! Weakenings checked by editing a scratch copy: a Relaxed slot store in `write_slotted`
//! makes loom report the payload race; dropping the clear of the next slot makes the reader
//! take the stale word for a record and read its bytes while the writer fills them (loom
//! reports that race too).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{BufferBuilder, BufferConsumer, NetworkBufferPool, ReleaseSink};
use shmflow::memory::{Arena, ArenaConfig, Owner};
use shmflow::record::frame::{slot_framed_len, SLOT_VALID};
use shmflow::sync::Ordering;
use std::rc::Rc;
use std::sync::Arc;

const RECORDS: [[u8; 4]; 2] = [[1, 2, 3, 4], [5, 6, 7, 8]];

struct NoSink;

impl ReleaseSink for NoSink {
    fn release(&self, _: u32, _: bool, _: bool) {}
}

#[test]
fn slotted_records_in_order_then_end() {
    common::check("stream_slots::slotted_records_in_order_then_end", Some(3), || {
        let cfg = ArenaConfig { segment_size: 16, ..common::tiny_config() };
        let arena = Arc::new(Arena::heap(&cfg).expect("a valid loom config"));
        let pool = NetworkBufferPool::new(Arc::clone(&arena));
        let segment = pool
            .request(Owner::Writer { pool: 0, worker: 0 }, 0)
            .expect("the free stack is not corrupt")
            .expect("a fresh arena has free segments");
        let builder = BufferBuilder::new(segment, 1);
        let index = builder.index();
        // A previous use left "valid" words in both slots; the handover (the thread spawn
        // here, the descriptor's Release push in the shipping code) publishes the clear.
        for at in [0, 8] {
            // Relaxed: the previous use; ordered by the spawn below.
            arena.segment_word(index, at).store(SLOT_VALID | 4, Ordering::Relaxed);
        }
        builder.clear_first_slot();

        let writer = thread::spawn(move || {
            let mut builder = builder;
            for r in RECORDS {
                assert!(builder.write_slotted(r.len(), |dst| dst.copy_from_slice(&r)), "the record fits");
            }
            assert_eq!(builder.finish() as usize, RECORDS.len() * slot_framed_len(4));
        });

        let reader = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let mut consumer = BufferConsumer::new(arena, index, Rc::new(NoSink), 0);
                let mut got = Vec::new();
                loop {
                    if let Some(p) = consumer.slot_record().expect("the writer's slots are valid") {
                        got.push(<[u8; 4]>::try_from(p).expect("a 4-byte record"));
                        assert_eq!(got[..], RECORDS[..got.len()], "records out of order or stale");
                        consumer.consume(slot_framed_len(4) as u32);
                        continue;
                    }
                    match consumer.finished_at().expect("a valid position") {
                        Some(end) if end == consumer.read_position() => break,
                        // Finished after a record we had not seen: its slot is visible now.
                        Some(end) => {
                            assert!(end > consumer.read_position(), "ended below what was read");
                            continue;
                        }
                        None => thread::yield_now(),
                    }
                }
                assert_eq!(got, RECORDS, "the segment ended early");
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
    });
}
